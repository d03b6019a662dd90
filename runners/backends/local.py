"""Job processes on this host, each in its own process session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .base import Backend, LaunchSpec, ProcessHandle

# Exit code used when a process vanished without leaving its exit file (e.g. SIGKILL of the group).
KILLED = -9


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


class LocalBackend(Backend):
    name = "local"

    def launch(self, spec: LaunchSpec) -> ProcessHandle:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec.exit_path.unlink(missing_ok=True)
        with open(spec.log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runners.launch",
                    "--exit-file",
                    str(spec.exit_path),
                    "--",
                    *spec.argv,
                ],
                cwd=spec.cwd,
                env=spec.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives tunebot; cancel signals the whole group
            )
        return ProcessHandle(
            pid=proc.pid, proc_start=process_start_time(proc.pid), exit_path=spec.exit_path, native=proc
        )

    def poll(self, handle: ProcessHandle) -> int | None:
        if handle.native is not None:
            code = handle.native.poll()
            if code is None:
                return None
            recorded = read_exit_file(handle.exit_path)
            return recorded if recorded is not None else code
        if _alive(handle.pid, handle.proc_start):
            return None
        recorded = read_exit_file(handle.exit_path)
        return recorded if recorded is not None else KILLED

    def signal(self, handle: ProcessHandle, *, force: bool = False) -> None:
        sig = signal.SIGKILL if force else signal.SIGTERM
        try:
            os.killpg(handle.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Gone, or (a reused pid) no longer ours to signal: either way nothing of the job to stop.
            pass

    def reattach(self, pid: int, proc_start: float | None, exit_path: Path) -> ProcessHandle | None:
        if pid and _alive(pid, proc_start):
            return ProcessHandle(pid=pid, proc_start=proc_start, exit_path=exit_path)
        return None
