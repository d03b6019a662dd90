"""Recording how a job's process ended: its outputs and metrics, or the reason it failed in words,
or that it was cancelled or stopped; then its result event and the upload of its artifacts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import events
from ..backends import Backend
from ..backends.joblog import read_log
from ..errors import UserError
from ..events import EventKind
from ..job import ACTIVE_STATES, Job, JobState, now
from ..kinds import MissingOutput, kind_of
from ..store import Store
from .estimates import Estimates
from .follow import JobFollower
from .running import Running
from .uploads import UPLOAD_PENDING, Uploads

log = logging.getLogger("runners.worker")


class Finisher:
    def __init__(self, store: Store, backend: Backend, *, follow: JobFollower, estimates: Estimates,
                 uploads: Uploads):
        self.store = store
        self.backend = backend
        self.follow = follow
        self.estimates = estimates
        self.uploads = uploads

    def fail_before_start(self, job: Job, error: str, advice: str | None = None) -> None:
        self.store.release_slots(job.id)
        self.store.transition(
            job.id, ACTIVE_STATES, JobState.FAILED.value, finished_at=now(), error=error, advice=advice
        )

    def finish(self, job: Job, code: int, run: Running | None, *, finished_at: float | None = None) -> None:
        from ..llamafactory.failures import explain_failure

        self.store.release_slots(job.id)
        values: dict[str, Any] = {"finished_at": finished_at or now(), "exit_code": code}
        stop_reason = run.stop_reason if run else None
        kind = kind_of(job.kind)
        if kind.serving is not None:  # served until stopped: it stopped, or it failed
            state, more = kind.serving.ended(job, stop_reason, lambda: explain_failure(read_log(job), code))
            self.store.transition(job.id, ACTIVE_STATES, state, **{**values, **more})
            return
        # A database error anywhere below makes the loop call this again for the same run: the
        # steps done already (the final plot, the state change) are not done twice.
        if kind.follows_trainer_log and not (run is not None and run.final_plot_done):
            self.follow.plot(job, run, final=True)
            if run is not None:
                run.final_plot_done = True
            job = self.store.get(job.id)
        if job.cancel_requested:
            values["error"] = f"Cancelled by {job.cancelled_by or 'request'}."
            if kind.resumable:
                values["advice"] = f"`resume {job.id}` continues from the last checkpoint."
            self.store.transition(job.id, ACTIVE_STATES, JobState.CANCELLED.value, **values)
            return
        if code == 0 and run is not None and run.succeeded_with is not None:
            values = run.succeeded_with  # recorded on an earlier try; its result event is what is left
        elif code == 0:
            try:
                values.update(kind.collect(job, self.outputs(job)))
                self._add_stored(job, values)
                if self.uploads.storage is not None:  # cleared when the upload ends; a later runner retries
                    values["artifacts"][UPLOAD_PENDING] = True
                if kind.estimated:
                    self._measure(job, run, values)
            except (MissingOutput, UserError) as exc:
                values.update(error=str(exc), advice="see `logs` for what LLaMA-Factory printed")
                self.store.transition(job.id, ACTIVE_STATES, JobState.FAILED.value, **values)
                return
            if not self.store.transition(job.id, ACTIVE_STATES, JobState.SUCCEEDED.value, **values):
                return  # settled already (by another runner, or while this one was away)
            if run is not None:
                run.succeeded_with = values
        if code == 0:
            self.store.add_event(
                job.id,
                EventKind.RESULT,
                events.result(job.kind, values.get("metrics", {}), values.get("artifacts", {})),
            )
            if self.uploads.storage is not None:
                self.uploads.start(job.id)
            return
        failure = explain_failure(read_log(job), code)
        values.update(error=failure.reason, advice=failure.advice, log_tail=failure.tail)
        lost = self.backend.lost(job.handle) if job.handle else None
        if lost:  # the job could not say how it ended (its node was lost): the backend's words
            values.update(error=lost, advice=None)
        if kind.resumable and (self.outputs(job) / "output").is_dir():
            from ..llamafactory.recipes import last_checkpoint

            if last_checkpoint(self.outputs(job) / "output") is not None:
                values["advice"] = ((failure.advice + " ") if failure.advice else "") + (
                    f"`resume {job.id}` continues from the last checkpoint."
                )
        self.store.transition(job.id, ACTIVE_STATES, JobState.FAILED.value, **values)

    def _measure(self, job: Job, run: Running | None, values: dict[str, Any]) -> None:
        """A finished train job's true figures into `values` (and this runner's calibration table,
        once per job: a finish retried after a database error does not count it twice). The last
        live tokens/s gives way to the measured one, or to none (a short compiled run's live figure
        counted its compiling), wherever progress is shown. A measurement that fails costs the job
        its figures, never its success."""
        if run is not None and run.measured is not None:
            values["metrics"], values["progress"] = dict(run.measured[0]), dict(run.measured[1])
            return
        try:
            self.estimates.measure(job, values["metrics"])
        except Exception:
            log.exception("measuring job #%s failed", job.id)
            return
        progress = dict(job.progress or {})
        progress.pop("tokens_per_s", None)
        if values["metrics"].get("tokens_per_s") is not None:
            progress["tokens_per_s"] = values["metrics"]["tokens_per_s"]
        values["progress"] = progress
        if run is not None:
            run.measured = (dict(values["metrics"]), dict(progress))

    def outputs(self, job: Job) -> Path:
        """The folder holding what the job wrote, as its backend hands it over (a local run: its
        job folder)."""
        return self.backend.outputs(job.handle or {}, Path(job.work_dir))

    def _add_stored(self, job: Job, values: dict[str, Any]) -> None:
        """What the job put in the artifact store itself (a cluster node uploads its outputs; this
        host keeps only their small files): those records are the artifacts' real copies."""
        stored = self.backend.stored(job.handle) if job.handle else {}
        if not stored:
            return
        found = values.setdefault("artifacts", {})
        found["remote"] = {**(found.get("remote") or {}), **stored}
        if "model" in stored:
            values.setdefault("metrics", {})["size_bytes"] = stored["model"]["size"]
