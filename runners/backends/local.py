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


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except OSError:
        return None
    # Field 22 counts from after the command name, which may contain spaces.
    rest = stat.rsplit(")", 1)[-1].split()
    try:
        return float(rest[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, proc_start: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        pass
    return proc_start is None or process_start_time(pid) == proc_start


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
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(handle.pid, sig)

    def reattach(self, pid: int, proc_start: float | None, exit_path: Path) -> ProcessHandle | None:
        if pid and _alive(pid, proc_start):
            return ProcessHandle(pid=pid, proc_start=proc_start, exit_path=exit_path)
        return None
