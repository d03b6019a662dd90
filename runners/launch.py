"""Runs one job's command and records how it ended, so a restarted tunebot can tell.

`python -m runners.launch --exit-file F -- llamafactory-cli train config.yaml`: the wrapper sits
in the job's own process session with the command; a cancel signals the whole group, the
wrapper waits for the command and writes its exit status to F (atomically). If tunebot is down
when the job ends, F is what it reads when it comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def _write_exit(path: str, code: int, received: list[int]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"exit_code": code, "signals": received, "finished_at": time.time()}, fh)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[0] != "--exit-file" or argv[2] != "--":
        print("usage: python -m runners.launch --exit-file FILE -- COMMAND ...", file=sys.stderr)
        return 2
    exit_file, command = argv[1], argv[3:]
    received: list[int] = []

    def note(signum, _frame):
        # The whole process group got the signal; the command decides how to stop.
        received.append(signum)

    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    try:
        proc = subprocess.Popen(command)
    except OSError as exc:
        print(f"tunebot: cannot start {command[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        _write_exit(exit_file, 127, received)
        return 127
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:  # pragma: no cover - wait() retries on EINTR itself
            continue
    _write_exit(exit_file, code, received)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
