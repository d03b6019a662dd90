"""What the runner needs to know about a job kind, declared once per kind, and the registry.

A kind says how its process is started (`argv`), the state it starts in, whether it writes a
trainer log to follow (progress events, loss plots, resume from a checkpoint), whether its time
is estimated, what a successful run leaves behind (`collect`) and, for a kind that serves a model
until stopped, how it is served (`Serving`). The worker asks the registry; it has no per-kind
`if`. Adding a kind: a module here that calls `register`, its import in `__init__.py`, and its
rendering in the bot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from ..job import Job, JobState
from ..settings import Settings


class MissingOutput(Exception):
    """A run exited 0 without what it should have written (the job fails, saying what is missing)."""


@dataclass
class Watch:
    """What the runner hands a serving kind's `watch` each tick."""

    settings: Settings
    store: Any  # runners.store.Store
    backend: Any  # runners.backends.Backend: where the process runs (a cluster publishes its address)
    chat_base: str | None = None  # the chat-page server's base URL, when one runs


class Serving(Protocol):
    """A kind whose process serves a model until it is stopped (a deployment)."""

    def launch(self, job: Job, settings: Settings) -> tuple[dict[str, str], dict[str, Any]]:
        """At launch: variables for its process's environment, and fields to record on the job
        (the port and API key it serves with)."""
        ...

    def api_base(self, job: Job, settings: Settings, backend: Any) -> str:
        """Where the runner reaches its API (`…/v1`)."""
        ...

    def watch(self, job: Job, watch: Watch) -> str | None:
        """Each tick while it runs and no stop was asked: record that it is ready; returns why it
        must stop (never ready in time, idle), or None."""
        ...

    def ended(
        self, job: Job, stop_reason: str | None, explain: Callable[[], Any]
    ) -> tuple[str, dict[str, Any]]:
        """How its end is recorded: (state, fields). `explain()` reads the log for a failure's
        reason (`runners.llamafactory.failures.Failure`)."""
        ...


@dataclass(frozen=True)
class Kind:
    name: str
    # The command line of a job of this kind, given its config file.
    argv: Callable[[Job, Path, Settings], list[str]]
    # Artifacts and metrics of a successful run, read from the folder its outputs are in (the
    # backend's `outputs`: the job folder for a local run): {"artifacts": {...}, "metrics": {...}}.
    collect: Callable[[Job, Path], dict[str, Any]]
    first_state: str = JobState.RUNNING.value
    follows_trainer_log: bool = False  # progress events and loss plots from output/trainer_log.jsonl
    resumable: bool = False  # a failed or cancelled run continues from its last checkpoint
    # Before the process starts (config written): may look at the store and return the job with
    # more in its spec, e.g. an eval deciding whether it must also score the base model.
    prepare: Callable[[Job, Path, Any], Job] | None = None
    # Its dataset's tokens are counted and its time estimated (queued, and again at launch for the
    # GPU it got) and its speed measured at the end (runners/speed/).
    estimated: bool = False
    # A model served until stopped: never "succeeded"; the runner watches it through this.
    serving: Serving | None = None


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def kind_of(name: str) -> Kind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UserError(f"tunebot does not know jobs of kind {name!r}.", field="kind") from None


def collect_nothing(job: Job, folder: Path) -> dict[str, Any]:
    return {"artifacts": dict(job.artifacts), "metrics": dict(job.metrics)}
