"""Job processes on this host, each in its own process session.

Its handle: {"backend": "local", "pid", "proc_start" (clock ticks since boot, to tell a reused pid
apart), "exit_file" (where runners.launch records the exit code)}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .base import Backend, Handle, LaunchSpec

# Exit code used when a process vanished without leaving its exit file (e.g. SIGKILL of the group).
KILLED = -9
NAME = "local"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    fields = _stat_fields(pid)
    try:
        return float(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _alive(pid: int, proc_start: float | None) -> bool:
    """The process `pid` exists, is not a zombie, and is the one that started at `proc_start`."""
    fields = _stat_fields(pid)
    if fields is None:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel (a PermissionError means it exists)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    if fields[0] == "Z":
        return False
    try:
        return proc_start is None or float(fields[19]) == proc_start
    except (IndexError, ValueError):
        return True


def read_exit_file(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def legacy_handle(pid: int, proc_start: float | None, work_dir: str) -> Handle:
    """The handle of a process an engine before schema version 4 started (it kept pid columns)."""
    exit_file = str(Path(work_dir) / "exit.json")
    return {"backend": NAME, "pid": int(pid), "proc_start": proc_start, "exit_file": exit_file}


def _pid(handle: Handle) -> int:
    return int(handle.get("pid") or 0)


class LocalBackend(Backend):
    name = NAME

    def __init__(self, slots: list[str] | None = None):
        self._slots = list(slots or [])
        # Children of this process, by pid: their exit codes come from Popen (no zombie left).
        self._children: dict[int, subprocess.Popen] = {}

    def capacity(self) -> list[str]:
        return list(self._slots)

    def start(self, spec: LaunchSpec) -> Handle:
        exit_file = spec.cwd / "exit.json"
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        exit_file.unlink(missing_ok=True)
        with open(spec.log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runners.launch", "--exit-file", str(exit_file), "--", *spec.argv],
                cwd=spec.cwd,
                env=spec.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives tunebot; cancel signals the whole group
            )
        self._children[proc.pid] = proc
        return {
            "backend": NAME,
            "pid": proc.pid,
            "proc_start": process_start_time(proc.pid),
            "exit_file": str(exit_file),
        }

    def poll(self, handle: Handle) -> int | None:
        pid = _pid(handle)
        exit_file = Path(handle.get("exit_file") or "")
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            self._children.pop(pid, None)
            recorded = read_exit_file(exit_file)
            return recorded if recorded is not None else code
        if pid and _alive(pid, handle.get("proc_start")):
            return None
        recorded = read_exit_file(exit_file)
        return recorded if recorded is not None else KILLED

    def cancel(self, handle: Handle, *, force: bool = False) -> None:
        pid = _pid(handle)
        if not pid:
            return
        try:
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            # Gone, or (a reused pid) no longer ours to signal: either way nothing of the job to stop.
            pass

    def reattach(self, handle: Handle) -> bool:
        pid = _pid(handle)
        return bool(pid) and _alive(pid, handle.get("proc_start"))

    def outcome(self, handle: Handle) -> int | None:
        return read_exit_file(Path(handle.get("exit_file") or "")) if handle.get("exit_file") else None
