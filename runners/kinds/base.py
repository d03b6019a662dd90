"""What the runner needs to know about a job kind, declared once per kind, and the registry.

A kind says how its process is started (`argv`), the state it starts in, whether it writes a
trainer log to follow (progress events, loss plots, resume from a checkpoint) and what a
successful run leaves behind (`collect`). The worker asks the registry; it has no per-kind `if`
for these. Adding a kind: a module here that calls `register`, its import in `__init__.py`, and
its rendering in the bot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..hardware import Hardware
from ..job import Job, JobState
from ..settings import Settings


class MissingOutput(Exception):
    """A run exited 0 without what it should have written (the job fails, saying what is missing)."""


@dataclass(frozen=True)
class Kind:
    name: str
    # The command line of a job of this kind, given its config file.
    argv: Callable[[Job, Path, Settings], list[str]]
    # Artifacts and metrics of a successful run: {"artifacts": {...}, "metrics": {...}}.
    collect: Callable[[Job], dict[str, Any]]
    first_state: str = JobState.RUNNING.value
    follows_trainer_log: bool = False  # progress events and loss plots from output/trainer_log.jsonl
    resumable: bool = False  # a failed or cancelled run continues from its last checkpoint
    # Before the process starts (config written): may look at the store and return the job with
    # more in its spec, e.g. an eval deciding whether it must also score the base model.
    prepare: Callable[[Job, Path, Any], Job] | None = None
    # On the runner that claimed the job, before its config is written: may fit the job's
    # arguments to the hardware it got (job, work dir, runner's hardware, its slots, the store),
    # e.g. an eval's batch from the GPU's memory. Returns the job as it will run.
    fit_to_hardware: Callable[[Job, Path, Hardware, list[str], Any], Job] | None = None


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


def collect_nothing(job: Job) -> dict[str, Any]:
    return {"artifacts": dict(job.artifacts), "metrics": dict(job.metrics)}
