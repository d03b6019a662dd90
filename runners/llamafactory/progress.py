"""Live training progress from LLaMA-Factory's trainer_log.jsonl.

LLaMA-Factory's LogCallback appends one JSON object per logging step to `<output_dir>/trainer_log.jsonl`
from a background thread, e.g.

    {"current_steps": 10, "total_steps": 80, "loss": 1.82, "lr": 4.9e-05, "epoch": 0.38,
     "percentage": 12.5, "elapsed_time": "0:01:02", "remaining_time": "0:07:14",
     "throughput": 1893.2, "total_tokens": 117376}

Evaluation lines carry `eval_loss` (and usually no `loss`); keys whose value is None are left out.
During `do_predict` runs the same file gets bare step/percentage lines every 5 prediction steps.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

# str(datetime.timedelta): "0:01:02", "1 day, 2:03:04", "3 days, 0:00:00"
_TIMEDELTA = re.compile(r"^\s*(?:(-?\d+) days?, )?(\d+):(\d{2}):(\d{2})(?:\.\d+)?\s*$")


@dataclass
class Progress:
    step: int
    total: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    lr: float | None = None
    epoch: float | None = None
    percent: float | None = None
    elapsed_s: float | None = None
    remaining_s: float | None = None
    tokens_per_s: float | None = None
    total_tokens: int | None = None

    @property
    def is_eval(self) -> bool:
        return self.eval_loss is not None and self.loss is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def parse_duration_text(text: Any) -> float | None:
    """'0:01:02' -> 62.0, '1 day, 2:03:04' -> 93784.0; anything else -> None."""
    if not isinstance(text, str):
        return None
    match = _TIMEDELTA.match(text)
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return float(int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds))


def _number(value: Any) -> float | None:
    # bool is an int subclass; a true/false here is garbage, not 1/0. NaN stays NaN here (a
    # diverged loss); the job store writes non-finite numbers as null (runners/store.py).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _whole(value: Any) -> int | None:
    number = _number(value)
    if number is None or not math.isfinite(number):
        return None
    return int(number)


def parse_trainer_log_line(line: str) -> Progress | None:
    """One line of trainer_log.jsonl -> Progress, or None for anything that is not one. Never raises."""
    try:
        data = json.loads(line)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    step = _whole(data.get("current_steps"))
    if step is None:
        return None
    return Progress(
        step=step,
        total=_whole(data.get("total_steps")),
        loss=_number(data.get("loss")),
        eval_loss=_number(data.get("eval_loss")),
        lr=_number(data.get("lr")),
        epoch=_number(data.get("epoch")),
        percent=_number(data.get("percentage")),
        elapsed_s=parse_duration_text(data.get("elapsed_time")),
        remaining_s=parse_duration_text(data.get("remaining_time")),
        tokens_per_s=_number(data.get("throughput")),
        total_tokens=_whole(data.get("total_tokens")),
    )


def read_trainer_log(path: Path) -> list[Progress]:
    """Every parseable line of a trainer_log.jsonl; [] when the file does not exist."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    points = (parse_trainer_log_line(line) for line in raw.decode("utf-8", errors="replace").splitlines())
    return [point for point in points if point is not None]


def loss_points(points: list[Progress]) -> list[Progress]:
    """The points a loss plot draws, in step order: the latest line of each step (a resumed run
    logs again from its checkpoint), leaving out lines with no loss at all, such as the closing
    summary line LLaMA-Factory writes for the last step (it would hide that step's loss)."""
    latest = {(p.step, p.is_eval): p for p in points if p.loss is not None or p.eval_loss is not None}
    return sorted(latest.values(), key=lambda p: p.step)


class TrainerLogFollower:
    """Reads the lines appended to a trainer_log.jsonl since the last poll.

    Only complete lines are consumed: a line still being written is read on a later poll. When the
    file is replaced or truncated (a restarted run deletes and rewrites it) reading starts over,
    `restarts` goes up and `points` is cleared, so a caller drawing a plot starts a fresh one.
    """

    # Enough of the file's start to notice it was rewritten in place with different content.
    _HEAD_BYTES = 256

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.restarts = 0
        self.points: list[Progress] = []
        self._inode: int | None = None
        self._head = b""

    def _start_over(self) -> None:
        if self.offset or self.points:
            self.restarts += 1
        self.offset = 0
        self.points = []
        self._head = b""

    def poll(self) -> list[Progress]:
        try:
            handle = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            return []
        with handle:
            stat = os.fstat(handle.fileno())
            if self._inode is not None and stat.st_ino != self._inode:
                self._start_over()
            self._inode = stat.st_ino
            if stat.st_size < self.offset:
                self._start_over()
            elif self._head and handle.read(len(self._head)) != self._head:
                self._start_over()
            handle.seek(self.offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        complete = chunk[: end + 1]
        if self.offset == 0:
            self._head = complete[: self._HEAD_BYTES]
        elif len(self._head) < self._HEAD_BYTES:
            # Grow the remembered head while the file is still short, so later comparisons see more.
            self._head = (self._head + complete)[: self._HEAD_BYTES]
        self.offset += len(complete)
        new_points = [
            point
            for point in (
                parse_trainer_log_line(line)
                for line in complete.decode("utf-8", errors="replace").splitlines()
            )
            if point is not None
        ]
        self.points.extend(new_points)
        return new_points


def format_eta(seconds: float | None) -> str:
    """A short human duration: '45s', '12m 05s', '2h 03m', '1d 4h'; 'unknown' when not known."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def progress_bar(percent: float | None, width: int = 20) -> str:
    """A text bar for Slack, e.g. '▓▓▓▓▓░░░░░ 50%'. The number is floored so 99.6% never reads 100%."""
    width = max(1, int(width))
    if percent is None or not isinstance(percent, (int, float)) or not math.isfinite(percent):
        return "░" * width + " ?%"
    clamped = min(100.0, max(0.0, float(percent)))
    filled = int(clamped / 100 * width)
    return "▓" * filled + "░" * (width - filled) + f" {int(clamped)}%"
