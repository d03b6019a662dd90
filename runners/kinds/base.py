"""A job kind, declared once per kind, and the registry.

A kind says how a person's request becomes a job (`recipe`, with what it takes and its help
words: the queue, the bot and the CLI ask the registry and name no kind), how its process is
started (`argv`), the state it starts in, whether it writes a trainer log to follow (progress
events, loss plots, resume from a checkpoint), whether its time is estimated, what a successful
run leaves behind (`collect`) and, for a kind that serves a model until stopped, how it is served
(`Serving`). The worker asks the registry; it has no per-kind `if`. Adding a kind: a module in
this package that calls `register` (found by `discover`, no import line to add), and its
rendering module in bot/render/kinds/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from ..hardware import Hardware
from ..job import Job, JobState
from ..llamafactory import recipes
from ..llamafactory.recipes import ModelSource, Recipe
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
class Request:
    """What a person asked for, in the same words on every face (Slack, the CLI, the demo)."""

    source: int | str | None = None  # the job it starts from (`eval 12`)
    model: str | None = None  # or a model folder instead of a job (`model=PATH`)
    preset: str | None = None
    pairs: dict[str, str] = field(default_factory=dict)
    yaml_text: str | None = None  # a LLaMA-Factory YAML as the whole spec


@dataclass(frozen=True)
class Intake:
    """What a recipe builder may ask of the engine while it turns a `Request` into a `Recipe`."""

    settings: Settings
    store: Any  # runners.store.Store (typed loosely: the store imports nothing of kinds)
    runner: Callable[[], Hardware]  # the hardware requests are judged against (it may ask the store)

    @property
    def has_gpu(self) -> bool:
        return self.runner().has_gpu

    def parent(self, request: Request) -> Job | None:
        return self.store.get(request.source) if request.source is not None else None

    def source(self, request: Request, kind: Kind) -> ModelSource:
        """The weights a kind that starts from a job works on: a job's, or `model=PATH`."""
        verb = kind.verb or kind.name
        if request.source is not None and request.model:
            raise UserError(f"{verb.capitalize()} takes a job or model=PATH, not both.", field="model")
        if request.source is not None:
            return recipes.source_from_job(self.store.get(request.source), verb)
        if request.model:
            return recipes.source_from_model(request.model, request.pairs.get("template"))
        raise UserError(f"What should I {verb}?", field="job",
                        fix=f"`{kind.name} 12` (a train job) or model=PATH")


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
    # On the runner that claimed the job, before its config is written: may fit the job's
    # arguments to the hardware it got (job, work dir, runner's hardware, its slots, the store),
    # e.g. an eval's batch from the GPU's memory. Returns the job as it will run.
    fit_to_hardware: Callable[[Job, Path, Hardware, list[str], Any], Job] | None = None

    # --- submitting: how a person's request becomes a job (None: nobody can ask for one) ---------
    recipe: Callable[[Request, Intake], Recipe] | None = None
    from_job: bool = False  # it starts from a finished job, or model=PATH: `eval 12`
    takes_yaml: bool = False  # a pasted LLaMA-Factory YAML may be its whole spec
    verb: str = ""  # what it does to a model, in "What should I evaluate?" (default: its name)
    usage: str = ""  # what follows its name in help: "JOB [dataset=NAME] [key=value …]"
    summary: str = ""
    example: str = ""  # what follows its name in an example: "12 dataset=eval"
    order: int = 100  # where it is listed among the kinds (help, the CLI's choices)
    # Its arguments are LLaMA-Factory's: that parser judges them before the job is queued.
    llamafactory_args: bool = True


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def submittable() -> list[Kind]:
    """The kinds a person can ask for, in their listed order."""
    return sorted((k for k in _KINDS.values() if k.recipe is not None), key=lambda k: (k.order, k.name))


def is_known(name: str) -> bool:
    """Whether this process knows jobs of kind `name` (a front end may know kinds a runner does not)."""
    return name in _KINDS


def kind_of(name: str) -> Kind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UserError(f"tunebot does not know jobs of kind {name!r}.", field="kind") from None


def collect_nothing(job: Job, folder: Path) -> dict[str, Any]:
    return {"artifacts": dict(job.artifacts), "metrics": dict(job.metrics)}
