"""Token counts, the `fast` plan and time estimates of train jobs, and their measured speed.

A queued train job gets an estimate while it waits (one count at a time, off the runner loop); at
launch it is counted and planned again for the GPU it got; when it ends, its true tokens/s and MFU
go into its metrics and refine this runner's calibration table (runners/speed/)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..events import EventKind
from ..hardware import Hardware
from ..job import Job, JobState, now
from ..kinds import kind_of
from ..llamafactory.command import command_env
from ..settings import Settings
from ..store import Store
from .follow import trainer_log_path

log = logging.getLogger("runners.worker")


class Estimates:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hardware: Hardware,
        *,
        host: str,
        slots: list[str],
        lock: threading.RLock,
    ):
        self.settings = settings
        self.store = store
        self.hardware = hardware
        self.host = host
        self.slots = slots
        self._lock = lock  # the runner loop's: claims happen under it
        self._counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunebot-count")
        self._estimating: set[int] = set()
        # Tokens per epoch of the train jobs launched here (true progress: epoch × this).
        self.tokens_per_epoch: dict[int, int] = {}

    def shutdown(self) -> None:
        self._counting.shutdown(wait=False, cancel_futures=True)

    def calibration_path(self) -> Path:
        return self.settings.calibration_dir / f"{self.host}.json"

    def _prepare(self, job: Job, slots: list[str] | None, *, apply_plan: bool):
        from ..speed.estimate import load_table
        from ..speed.trainprep import prepare

        return prepare(
            dict(job.args),
            preset=job.preset,
            spec=job.spec,
            hardware=self.hardware,
            slots=slots,
            cache_dir=self.settings.cache_dir,
            table=load_table(self.calibration_path()),
            env=command_env(job, slots or [], self.settings, has_gpu=self.hardware.has_gpu),
            apply_plan=apply_plan,
        )

    def prepare_launch(self, job: Job, slots: list[str]) -> None:
        """Count, choose the fast plan for this GPU, estimate; record it all on the job."""
        if job.attempt > 1 and job.metrics.get("tokens_per_epoch"):
            self.tokens_per_epoch[job.id] = int(job.metrics["tokens_per_epoch"])
            return  # a resumed run keeps the plan it started with
        prepared = self._prepare(job, slots, apply_plan=True)
        metrics = {**self.store.get(job.id).metrics, **prepared.info}
        self.store.update(job.id, args=prepared.args, metrics=metrics)
        if prepared.info.get("tokens_per_epoch"):
            self.tokens_per_epoch[job.id] = int(prepared.info["tokens_per_epoch"])
        if prepared.info.get("estimate"):
            self.store.add_event(job.id, EventKind.ESTIMATE, prepared.info["estimate"])

    def estimate_queued(self) -> None:
        """Queued train jobs get an estimate while they wait (the bot edits their message)."""
        for job in self.store.list_jobs(states=[JobState.QUEUED.value], newest_first=False, limit=50):
            if not _estimated(job) or job.id in self._estimating:
                continue
            if "estimate" in job.metrics or "count_error" in job.metrics or job.attempt > 1:
                continue
            if job.n_slots > len(self.slots):
                continue  # another runner's job
            self._estimating.add(job.id)
            self._counting.submit(self._estimate_one, job)

    def _estimate_one(self, job: Job) -> None:
        try:
            prepared = self._prepare(job, self.slots[: job.n_slots], apply_plan=True)
            keep = ("estimate", "dataset_tokens", "params", "gpu", "count_error")
            info = {k: v for k, v in prepared.info.items() if k in keep}
            info.setdefault("estimate", None)
            # Claims happen under this lock: a job still queued here cannot be launched (and get
            # its own figures) before this write.
            with self._lock:
                fresh = self.store.find(job.id)
                if fresh is None or fresh.state != JobState.QUEUED.value:
                    return  # it started meanwhile: the launch made its own estimate
                self.store.update(job.id, metrics={**fresh.metrics, **info})
            if info.get("estimate"):
                self.store.add_event(job.id, EventKind.ESTIMATE, info["estimate"])
        except Exception:  # a thread of the pool: an estimate is never worth a failed job
            log.exception("estimating job #%s failed", job.id)

    def measure(self, job: Job, metrics: dict[str, Any]) -> None:
        """A finished train job's true tokens seen, tokens/s and MFU (into `metrics`); its speed
        refines this runner's calibration table (runners/speed/measure.py)."""
        from ..llamafactory.progress import read_trainer_log
        from ..speed import estimate as eta
        from ..speed.measure import measure
        from ..speed.trainprep import model_config

        logged = read_trainer_log(trainer_log_path(job))
        points = [(p.elapsed_s, p.epoch) for p in logged if p.loss is not None]
        path = self.calibration_path()
        measured = measure(
            metrics,
            points=points,
            args=job.args,
            config=model_config(str(job.args.get("model_name_or_path", ""))),
            preset=job.preset,
            n_gpus=len(job.slots or []),
            wall_s=now() - job.started_at if job.started_at else None,
            first_attempt=job.attempt <= 1,
            table=eta.load_table(path),
        )
        metrics.clear()
        metrics.update(measured.metrics)
        if measured.table is not None:
            try:
                eta.save_table(path, measured.table)
            except OSError:
                log.exception("recording the speed of job #%s failed", job.id)


def _estimated(job: Job) -> bool:
    try:
        return kind_of(job.kind).estimated
    except UserError:  # a kind this runner does not know: not its job to estimate
        return False
