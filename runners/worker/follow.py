"""Following a running job: a progress event per trainer-log step, partial and final loss plots,
and a periodic activity event (front ends judge a stall from it without the runner's disk)."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import events
from ..backends.joblog import log_written, read_log
from ..events import EventKind
from ..job import Job, now
from ..speed.throughput import true_progress
from ..store import Store
from .running import Running

log = logging.getLogger("runners.worker")

PLOT_EVERY = 30.0  # seconds between partial loss plots of a running job
ACTIVITY_EVERY = 60.0  # seconds between activity events of a running job (front ends judge stalls by them)
ACTIVITY_TAIL_LINES = 15


def trainer_log_path(job: Job) -> Path:
    return Path(job.work_dir) / "output" / "trainer_log.jsonl"


class JobFollower:
    def __init__(self, store: Store, tokens_per_epoch: dict[int, int]):
        self.store = store
        self._tokens_per_epoch = tokens_per_epoch  # the launch's count (Estimates), before metrics have it

    def trainer_log(self, job: Job):
        from ..llamafactory.progress import TrainerLogFollower

        return TrainerLogFollower(trainer_log_path(job))

    def activity_due(self, run: Running) -> bool:
        return now() - run.last_activity_at >= ACTIVITY_EVERY

    def catch_up(self, job: Job) -> None:
        """Record the trainer_log lines written since the last progress this runner saw."""
        from ..llamafactory.progress import read_trainer_log

        seen = int(job.progress.get("step") or 0)
        points = read_trainer_log(trainer_log_path(job))
        per_epoch = job.metrics.get("tokens_per_epoch")
        resumed = job.attempt > 1
        latest = dict(job.progress)
        for point in points:
            if point.step > seen or point.eval_loss is not None and point.step >= seen:
                shown = true_progress(point.to_dict(), per_epoch, resumed=resumed)
                self.store.add_event(job.id, EventKind.PROGRESS, shown)
                seen = max(seen, point.step)
                latest.update({k: v for k, v in point.to_dict().items() if v is not None})
        latest = true_progress(latest, per_epoch, resumed=resumed)
        if latest != job.progress:
            self.store.update(job.id, progress=latest)

    def activity(self, job: Job, run: Running) -> None:
        """Say the job is still followed, when its log last grew and how it ends: front ends judge
        a stall from this, without reading the runner's disk."""
        run.last_activity_at = now()
        log_at, size = None, 0
        written = log_written(job)
        if written is not None:
            log_at, size = written
        try:
            log_at = max(log_at or 0.0, trainer_log_path(job).stat().st_mtime)
        except OSError:
            pass
        tail = "\n".join(read_log(job, limit=16_000).splitlines()[-ACTIVITY_TAIL_LINES:])
        self.store.add_event(job.id, EventKind.ACTIVITY, events.activity(log_at, size, tail))

    def follow(self, job: Job, run: Running) -> None:
        # Lines read stay in the backlog until recorded: a database outage delays them, loses none.
        run.backlog.extend(run.follower.poll())
        per_epoch = self._tokens_per_epoch.get(job.id) or job.metrics.get("tokens_per_epoch")
        # One event a step (and one a step's evaluation), also when a step's lines arrive together
        # (the closing summary repeats the last step; a cluster's log comes in batches).
        fresh = []
        posted: set[tuple[int, bool]] = set()
        while run.backlog:
            point = run.backlog[0]
            new = point.step > run.seen_step or point.eval_loss is not None and point.step >= run.seen_step
            if new and (point.step, point.is_eval) not in posted:
                if run.first_point is None and point.loss is not None and not point.is_eval:
                    run.first_point = point.to_dict()
                resumed = job.attempt > 1
                shown = true_progress(point.to_dict(), per_epoch, since=run.first_point, resumed=resumed)
                self.store.add_event(job.id, EventKind.PROGRESS, shown)
                posted.add((point.step, point.is_eval))
                run.seen_step = max(run.seen_step, point.step)
                fresh.append(point)
            run.backlog.pop(0)
        if not fresh:
            if run.new_points and now() - run.last_plot_at >= PLOT_EVERY:
                self.plot(job, run, final=False)
            return
        latest = dict(job.progress)
        for point in fresh:  # the closing summary line has no loss: keep the last one logged
            latest.update({k: v for k, v in point.to_dict().items() if v is not None})
        latest = true_progress(latest, per_epoch, since=run.first_point, resumed=job.attempt > 1)
        self.store.update(job.id, progress=latest)
        run.new_points = True
        if now() - run.last_plot_at >= PLOT_EVERY:
            self.plot(job, run, final=False)

    def plot(self, job: Job, run: Running | None, *, final: bool) -> str | None:
        from ..llamafactory.progress import loss_points, read_trainer_log
        from ..plots import render_loss_plot

        points = loss_points(read_trainer_log(trainer_log_path(job)))
        if run is not None:
            run.last_plot_at = now()
            run.new_points = False
        if not points:
            return None
        dest = Path(job.work_dir) / "loss.png"
        try:
            render_loss_plot(
                points,
                dest,
                title=f"#{job.id} {Path(job.model).name}",
                subtitle=f"{job.method or ''} · {job.dataset or ''}" + ("" if final else " · in progress"),
            )
        except OSError as exc:  # a full disk: one line, not a traceback on every try
            log.warning("loss plot of job #%s not written: %s", job.id, exc.strerror or exc)
            return None
        except Exception:
            log.exception("loss plot of job #%s failed", job.id)
            return None
        fresh = self.store.get(job.id)
        self.store.update(job.id, artifacts={**fresh.artifacts, "plot": str(dest)})
        key = self.store.put_file(job.id, "loss.png", dest.read_bytes())
        self.store.add_event(job.id, EventKind.PLOT, events.plot(key, final=final, points=len(points)))
        return str(dest)

