"""The runner's view of a place that runs job processes: this host, or a cluster.

A backend starts a job's command and answers for it through a `Handle`: a JSON-serialisable dict
that only the backend which made it reads (the local backend keeps a pid there, a cluster one its
job id). The runner stores the handle on the job (`Job.handle`) and gives it back, after a restart
too; nothing outside the backend looks inside. Slots, the store and events stay the runner's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Opaque to everyone but the backend that made it; always carries "backend": its name.
Handle = dict[str, Any]


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path  # the job's folder: its config, outputs and exit record
    log_path: Path
    # The job and the one it builds on: a backend that runs it elsewhere carries both there.
    job: Any = None
    parent: Any = None


class Backend(ABC):
    """Starts, watches and stops job processes."""

    name: str = "backend"

    @abstractmethod
    def start(self, spec: LaunchSpec) -> Handle:
        """Start the command; returns its handle (raises OSError if it cannot start)."""

    @abstractmethod
    def poll(self, handle: Handle) -> int | None:
        """The exit code once the process has ended, else None."""

    @abstractmethod
    def cancel(self, handle: Handle, *, force: bool = False) -> None:
        """Ask the process (and its children) to stop; `force`: stop it now."""

    @abstractmethod
    def reattach(self, handle: Handle) -> bool:
        """Follow again a process an earlier runner started; False if it is no longer running."""

    @abstractmethod
    def outcome(self, handle: Handle) -> int | None:
        """The exit code a process recorded when it ended while nobody watched; None if unknown."""

    @abstractmethod
    def capacity(self) -> list[str]:
        """The slots (GPU indices, or CPU slots) this backend offers, one job process each."""

    def outputs(self, handle: Handle, work_dir: Path) -> Path:
        """A local folder holding what the job wrote (a remote backend copies it here first)."""
        return work_dir

    def lost(self, handle: Handle) -> str | None:
        """Why a job ended when the job itself could not report it (a cluster lost its node): the
        backend's own reason, shown instead of one guessed from the log; None otherwise."""
        return None

    def stored(self, handle: Handle) -> dict[str, dict[str, Any]]:
        """Artifact-store records of what the job uploaded itself, by name (a cluster's jobs upload
        from their node); empty when the runner uploads after the job (the local backend)."""
        return {}

    def endpoint(self, handle: Handle, host: str, port: int) -> str:
        """The base URL the runner reaches a served model at (a cluster publishes its own)."""
        return f"http://{host}:{port}"
