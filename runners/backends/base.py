"""The runner's view of a place that runs job processes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    exit_path: Path


@dataclass
class ProcessHandle:
    pid: int
    proc_start: float | None
    exit_path: Path
    # Backend-private state (a Popen for a child of this process); absent after a re-attach.
    native: Any = field(default=None, repr=False)


class Backend(ABC):
    """Starts, watches and stops job processes. The worker owns slots and the store."""

    name: str = "backend"

    @abstractmethod
    def launch(self, spec: LaunchSpec) -> ProcessHandle: ...

    @abstractmethod
    def poll(self, handle: ProcessHandle) -> int | None:
        """The exit code once the process has ended, else None."""

    @abstractmethod
    def signal(self, handle: ProcessHandle, *, force: bool = False) -> None:
        """Ask the process (and its children) to stop: SIGTERM, or SIGKILL with force."""

    @abstractmethod
    def reattach(self, pid: int, proc_start: float | None, exit_path: Path) -> ProcessHandle | None:
        """A handle on a process started by an earlier tunebot, if it is still that process."""
