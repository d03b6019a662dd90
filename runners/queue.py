"""The front door of the engine: turn requests into validated, queued jobs; cancel, resume, undeploy.

Front ends (the CLI, Slack) call only this and read the job store's event stream. Nothing here
knows about Slack; who asked and where travels as a `Requester`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts, events, kinds
from .errors import UserError
from .events import EventKind
from .hardware import Hardware, detect, slots_for
from .job import ACTIVE_STATES, RESUMABLE_STATES, Job, JobKind, JobState, now, state_phrase
from .llamafactory import keys, recipes, safety, validation
from .llamafactory.recipes import Recipe
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)
_DEMO_LOCK = threading.Lock()


@dataclass(frozen=True)
class Requester:
    """Who asked, and where the answers go (empty for the command line)."""

    user: str = ""
    # The front end's own JSON (Slack: channel and thread), stored on the job and returned as is.
    origin: dict[str, Any] = field(default_factory=dict)
    request_key: str | None = None  # a redelivered request with the same key makes no new job


CLI = Requester()


class JobQueue:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hardware: Hardware | None = None,
        *,
        local: Hardware | None = None,
    ):
        self.settings = settings
        self.store = store
        self._fixed_hardware = hardware  # tests and single-purpose tools pin it
        self._local = local  # this process's runner's, when it was given one (else detected)

    @property
    def runner(self) -> tuple[Hardware, list[str]]:
        """The hardware and slots requests are judged against: the largest live runner's (it may be
        on another host), else this process's runner's (this machine's)."""
        if self._fixed_hardware is not None:
            hw = self._fixed_hardware
            return hw, slots_for(hw, self.settings.gpus, self.settings.cpu_slots)
        published = [r.hardware for r in self.store.live_runners() if r.hardware]
        if published:
            best = max(published, key=lambda h: (len(h.get("gpus", [])), len(h.get("slots", []))))
            return Hardware.from_dict(best), list(best.get("slots", []))
        hw = self._local or detect()
        return hw, slots_for(hw, self.settings.gpus, self.settings.cpu_slots)

    @property
    def hardware(self) -> Hardware:
        return self.runner[0]

    # --- submitting ---------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        source: int | str | None = None,
        *,
        model: str | None = None,
        preset: str | None = None,
        pairs: dict[str, str] | None = None,
        yaml_text: str | None = None,
        requester: Requester = CLI,
    ) -> Job:
        """A job of `kind`, built by that kind's declaration (runners/kinds/) from what was asked:
        a source job or model=PATH, a preset, key=value settings, a YAML."""
        declared = kinds.kind_of(kind)
        if declared.recipe is None:
            raise UserError(f"Jobs of kind {kind!r} are not asked for; tunebot starts them itself.",
                            field="kind")
        request = kinds.Request(source=source, model=model, preset=preset, pairs=dict(pairs or {}),
                                yaml_text=yaml_text)
        intake = kinds.Intake(self.settings, self.store, lambda: self.hardware)
        return self._submit(requester, declared, lambda: declared.recipe(request, intake))

    # The names callers knew before kinds were declared: each is `submit` with its kind.
    def submit_train(self, *, preset: str | None = None, pairs: dict[str, str] | None = None,
                     yaml_text: str | None = None, requester: Requester = CLI) -> Job:
        return self.submit("train", preset=preset, pairs=pairs, yaml_text=yaml_text, requester=requester)

    def submit_eval(self, source: int | str | None = None, *, model: str | None = None,
                    pairs: dict[str, str] | None = None, requester: Requester = CLI) -> Job:
        return self.submit("eval", source, model=model, pairs=pairs, requester=requester)

    def submit_export(self, source: int | str | None = None, *, model: str | None = None,
                      pairs: dict[str, str] | None = None, requester: Requester = CLI) -> Job:
        return self.submit("export", source, model=model, pairs=pairs, requester=requester)

    def submit_deploy(self, source: int | str | None = None, *, model: str | None = None,
                      pairs: dict[str, str] | None = None, requester: Requester = CLI) -> Job:
        return self.submit("deploy", source, model=model, pairs=pairs, requester=requester)

    def _submit(self, requester: Requester, kind: kinds.Kind, build: Callable[[], Recipe]) -> Job:
        """A redelivered request returns its job; otherwise build, check and queue the recipe."""
        if requester.request_key:
            existing = self.store.find_by_request(requester.request_key)
            if existing is not None:
                return existing
        return self._queue(kind, build(), requester)

    # --- the common path ----------------------------------------------------------------
    def prepare(self, recipe: Recipe, kind: kinds.Kind | None = None) -> Recipe:
        """Resolve the model and datasets and check everything; raises UserError, queues nothing."""
        kind = kind or kinds.kind_of(str(getattr(recipe.kind, "value", recipe.kind)))
        args = dict(recipe.args)
        parent = self.store.get(recipe.parent_id) if recipe.parent_id else None
        in_store = artifacts.missing_inputs(args, parent)  # fetched by the runner before it starts
        model = str(args["model_name_or_path"])
        # Set by the operator or by tunebot from a job that passed these checks: not judged again.
        trusted = {v for v in (self.settings.default_model, *(parent.args.values() if parent else ()))
                   if isinstance(v, str)}
        if model in trusted:
            trusted.add(validation.resolve_model_path(model, self.settings.models_dir))
        if model == recipes.TINY_MODEL:
            from .demo.tinymodel import ensure_tiny_model

            model = str(ensure_tiny_model(self.settings.models_dir))
        elif "model_name_or_path" not in in_store:
            model = validation.resolve_model_path(model, self.settings.models_dir)
        args["model_name_or_path"] = model
        if "adapter_name_or_path" not in in_store:
            validation.check_adapter(args.get("adapter_name_or_path"))
        # Every path the job would read or write: only the data dir and the operator's model roots.
        safety.check_arguments(
            args,
            job_dir=self.settings.jobs_dir / "0",  # where relative paths land (each job runs in its folder)
            roots=safety.allowed_roots(self.settings.data_dir, self.settings.model_roots),
            allow_publishing=self.settings.allow_publishing,
            trusted=trusted,
        )
        for key in ("dataset", "eval_dataset"):
            if key in args:
                for name in validation.dataset_names(args[key]):
                    self._require_dataset(name)
        recipe.args = args
        self._check_capacity(recipe)
        if kind.llamafactory_args and validation.llamafactory_available():
            recipe.args = validation.check_with_llamafactory(kind.name, recipe.args)
        keys.check_ranges(recipe.args, recipe.spec.get("pairs"))
        recipe.model = parent.model if parent else model  # the name people know it by
        return recipe

    def _check_capacity(self, recipe: Recipe) -> None:
        """Refuse up front what the configured backend could never run, with its real size."""
        workers = int(recipe.spec.get("workers") or 1)
        if self.settings.backend == "ray":
            from .backends.ray import check_request

            if recipe.mode == "webchat":
                raise UserError(
                    "mode=webchat is not offered on the Ray cluster (its Gradio page has no login).",
                    field="mode",
                    fix="mode=api (the chat page in front of it works as usual)",
                )

            capacity = check_request(self.settings, recipe.n_slots, workers)
            if workers > 1 and capacity.gpus:
                recipe.n_slots = workers  # a GPU a worker: the runner's slots count the cluster's GPUs
            return
        if workers > 1:
            raise UserError(
                "workers=N spreads a training over a Ray cluster's nodes; "
                "this tunebot runs jobs on its own host.",
                field="workers",
                fix="leave out workers=… (gpus=N uses this host's GPUs), or run with TUNEBOT_BACKEND=ray",
            )
        validation.check_hardware(recipe, *self.runner)

    def _require_dataset(self, name: str) -> None:
        from . import datasets

        if name in (recipes.DEMO_DATASET, recipes.DEMO_EVAL_DATASET):
            self.ensure_demo_datasets()
        datasets.get_dataset(self.settings.data_dir, name)

    def ensure_demo_datasets(self) -> None:
        """Register the embedded demo sets on first use."""
        from . import datasets
        from .demo.data import write_demo_datasets

        with _DEMO_LOCK:
            known = {d.name for d in datasets.list_datasets(self.settings.data_dir)}
            if {recipes.DEMO_DATASET, recipes.DEMO_EVAL_DATASET} <= known:
                return
            files = write_demo_datasets(self.settings.cache_dir / "demo-data")
            datasets.add_dataset(self.settings.data_dir, recipes.DEMO_DATASET, files["train"], builtin=True)
            datasets.add_dataset(
                self.settings.data_dir, recipes.DEMO_EVAL_DATASET, files["eval"], builtin=True
            )

    def _queue(self, kind: kinds.Kind, recipe: Recipe, requester: Requester) -> Job:
        recipe = self.prepare(recipe, kind)
        job = Job(
            kind=kind.name,
            state=JobState.QUEUED.value,
            preset=recipe.preset,
            spec=recipe.spec,
            args=recipe.args,
            parent_id=recipe.parent_id,
            model=recipe.model,
            dataset=recipe.dataset,
            method=recipe.method,
            mode=recipe.mode,
            n_slots=recipe.n_slots,
            user=requester.user,
            origin=dict(requester.origin),
            request_key=requester.request_key,
        )
        dataset_dir = self._dataset_dir()

        def folders(new: Job) -> dict[str, Any]:
            work_dir = self.settings.jobs_dir / str(new.id)
            return {
                "args": recipes.with_outputs(new.kind, new.args, work_dir, dataset_dir),
                "work_dir": str(work_dir),
                "log_path": str(work_dir / "job.log"),
            }

        job, created = self.store.add_job(job, complete=folders)
        if not created:
            return job
        self.store.audit(
            requester.user or "cli",
            f"submit {job.kind}",
            job.id,
            origin=requester.origin,
            preset=recipe.preset,
        )
        return self.store.get(job.id)

    def _dataset_dir(self) -> Path:
        from .datasets import dataset_dir

        return dataset_dir(self.settings.data_dir)

    # --- acting on jobs -----------------------------------------------------------------
    def cancel(self, job_ref: int | str, *, by: str = "", admin: bool = True) -> Job:
        job = self.store.get(job_ref)
        self._check_owner(job, by, admin, "cancel")
        if job.is_final:
            if job.kind == JobKind.DEPLOY.value:
                raise UserError(f"Deployment #{job.id} has already ended ({job.state}); "
                                "there is nothing to undeploy.", field="job")
            raise UserError(
                f"Job #{job.id} has already ended ({job.state}); there is nothing to cancel.", field="job"
            )
        if self.store.transition(
            job.id,
            [JobState.QUEUED.value],
            JobState.CANCELLED.value,
            finished_at=now(),
            cancelled_by=by or "cli",
            error="Cancelled while queued.",
        ):
            self.store.audit(by or "cli", "cancel", job.id, state="queued")
            return self.store.get(job.id)
        # Running: the worker that owns the process stops it (SIGTERM, then SIGKILL after a grace period).
        self.store.update(job.id, cancel_requested=True, cancelled_by=by or "cli")
        self.store.add_event(job.id, EventKind.CANCEL_REQUESTED, events.cancel_requested(by or "cli"))
        self.store.audit(by or "cli", "cancel", job.id, state=job.state)
        return self.store.get(job.id)

    def undeploy(self, job_ref: int | str, *, by: str = "", admin: bool = True) -> Job:
        job = self.store.get(job_ref)
        if job.kind != JobKind.DEPLOY.value:
            deployments = self.deployments_of(job.id, (*ACTIVE_STATES, JobState.QUEUED.value))
            if not deployments:
                raise UserError(f"Job #{job.id} has no running deployment.", field="job")
            job = deployments[0]
        return self.cancel(job.id, by=by, admin=admin)

    def deployments_of(self, job_id: int, states: tuple[str, ...]) -> list[Job]:
        """Deployments of a job: of the job itself, or of a model exported from it; newest first."""
        sources = [job_id] + [
            e.id for e in self.store.list_jobs(kinds=[JobKind.EXPORT.value], parent_id=job_id)
        ]
        found = [
            d
            for source in sources
            for d in self.store.list_jobs(kinds=[JobKind.DEPLOY.value], parent_id=source, states=states)
        ]
        return sorted(found, key=lambda d: d.id, reverse=True)

    def deployment_key(self, job_ref: int | str, *, by: str = "", admin: bool = True) -> Job:
        """The serving deployment of a job, api_key included, for its owner or an admin only
        (someone who lost the ephemeral, or deployed with --detach, asks again)."""
        job = self.store.get(job_ref)
        if job.kind != JobKind.DEPLOY.value:
            serving = self.deployments_of(job.id, (JobState.SERVING.value,))
            if not serving:
                raise UserError(f"Job #{job.id} has no serving deployment.", field="job",
                                fix=f"`deploy {job.id}`")
            job = serving[0]
        self._check_owner(job, by, admin, "see the API key of")
        if job.state != JobState.SERVING.value:
            raise UserError(f"Deployment #{job.id} {state_phrase(job.state)}: it has no key to give.",
                            field="job")
        if not job.api_key:
            raise UserError(f"Deployment #{job.id} has no API key (TUNEBOT_DEPLOY_API_KEY is off).",
                            field="job")
        self.store.audit(by or "cli", "key", job.id)
        return job

    def resume(
        self, job_ref: int | str, *, by: str = "", admin: bool = True, request_key: str | None = None
    ) -> Job:
        job = self.store.get(job_ref)
        if request_key and request_key in job.spec.get("resume_keys", []):
            return job  # a redelivered resume: the first one already did it
        self._check_owner(job, by, admin, "resume")
        if not (kinds.is_known(job.kind) and kinds.kind_of(job.kind).resumable):
            raise UserError(
                f"Only train jobs can be resumed; #{job.id} is {recipes.article(job.kind)} job.", field="job"
            )
        if job.state not in RESUMABLE_STATES:
            raise UserError(
                f"Job #{job.id} {state_phrase(job.state)}; only interrupted, failed or cancelled train jobs "
                "can be resumed.",
                field="job",
            )
        checkpoint = recipes.last_checkpoint(Path(job.work_dir) / "output")
        args = dict(job.args)
        if checkpoint is not None:
            args["resume_from_checkpoint"] = str(checkpoint)
        else:
            args.pop("resume_from_checkpoint", None)
        moved = self.store.transition(
            job.id,
            RESUMABLE_STATES,
            JobState.QUEUED.value,
            args=args,
            attempt=job.attempt + 1,
            exit_code=None,
            error=None,
            advice=None,
            log_tail=None,
            cancel_requested=False,
            cancelled_by=None,
            finished_at=None,
            handle={},
            runner_id=None,
            progress={**job.progress, "resumed_from": checkpoint.name if checkpoint else None},
            spec={**job.spec, "resume_keys": [*job.spec.get("resume_keys", []), request_key]}
            if request_key
            else job.spec,
        )
        if not moved:
            raise UserError(f"Job #{job.id} changed state meanwhile; try again.", field="job")
        name = checkpoint.name if checkpoint else None
        self.store.add_event(job.id, EventKind.RESUMED, events.resumed(name, job.attempt + 1))
        self.store.audit(by or "cli", "resume", job.id, checkpoint=checkpoint.name if checkpoint else None)
        return self.store.get(job.id)

    def _check_owner(self, job: Job, by: str, admin: bool, action: str) -> None:
        """The owner or an admin; a job started from the command line (no owner) is the admins'."""
        if admin or (job.user and job.user == by):
            return
        who = "the person who started it" if job.user else "an admin (it was started from the command line)"
        raise UserError(f"Only {who} or an admin may {action} #{job.id}.", field="job")

    # --- reading ------------------------------------------------------------------------
    def get(self, job_ref: int | str) -> Job:
        return self.store.get(job_ref)

    def jobs(self, **filters: Any) -> list[Job]:
        return self.store.list_jobs(**filters)

    def position(self, job: Job) -> int | None:
        """1-based place in the queue, for 'waiting (3rd in line)'."""
        return self.store.queue_position(job.id)
