"""A job's log: the one reader the runner and the command line share.

The backend sends the process's output to `job.log_path` on the runner's host (a cluster backend
mirrors it there); each attempt starts with a `=== tunebot:` line the runner writes before it
starts the process. Reads are bounded: a log may be gigabytes of a runaway loop."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..job import Job

ATTEMPT_MARK = "=== tunebot:"
_TAIL_MAX = 4 * 2**20  # bytes read back at most for a tail
_BLOCK = 64 * 1024


def start_attempt(path: Path, text: str) -> None:
    """Mark where an attempt's output begins (`read_log` reads from the last mark)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{ATTEMPT_MARK} {text}\n")


def read_log(job: Job, limit: int = 200_000) -> str:
    """The end of the job's log (at most `limit` bytes), this attempt only; "" when it has none."""
    try:
        with open(job.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    marker = text.rfind(ATTEMPT_MARK)
    return text[marker:] if marker >= 0 else text


def log_written(job: Job) -> tuple[float, int] | None:
    """(when the log last grew, its size in bytes); None when it has none."""
    try:
        stat = Path(job.log_path).stat()
    except (OSError, ValueError):
        return None
    return stat.st_mtime, stat.st_size


def last_lines(job: Job, n: int) -> list[str] | None:
    """The log's last `n` lines, all attempts; None when the job has no log yet. Reads blocks
    back from the end until it has them, not the whole file."""
    try:
        fh = open(job.log_path, "rb")  # noqa: SIM115 - closed below
    except (OSError, ValueError):
        return None
    with fh:
        end = fh.seek(0, os.SEEK_END)
        data, start, breaks = b"", end, 0
        # One block a pass, prepended; a line ends at \n or at a progress bar's \r. At most
        # _TAIL_MAX bytes: a log of one endless line is not read whole to find its start.
        while start > 0 and breaks <= n and end - start < _TAIL_MAX:
            step = min(_BLOCK, start)
            start -= step
            fh.seek(start)
            block = fh.read(step)
            breaks += block.count(b"\n") + block.count(b"\r")
            data = block + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:] if n > 0 else []


def follow_log(job: Job, *, done: Callable[[], bool], pause: float = 0.5) -> Iterator[str]:
    """Lines added to the log from now on, as they come (each with its newline), until `done()`
    says so at a moment nothing new is there. Nothing when the job has no log."""
    try:
        fh = open(job.log_path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except (OSError, ValueError):
        return
    with fh:
        fh.seek(0, os.SEEK_END)
        while True:
            line = fh.readline()
            if line:
                yield line
                continue
            if done():
                return
            time.sleep(pause)
