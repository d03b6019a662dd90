"""Starting a claimed job: its inputs fetched and its plan made first where needed (off the runner
loop), its config written, its command and environment built, and its process started."""

from __future__ import annotations

import errno
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from .. import artifacts, events
from ..backends import Backend, LaunchSpec
from ..backends.joblog import start_attempt
from ..errors import UserError
from ..events import EventKind
from ..hardware import Hardware
from ..job import Job, now
from ..kinds import kind_of
from ..llamafactory.command import command_env
from ..settings import Settings
from ..store import Store
from .estimates import Estimates
from .finish import Finisher
from .follow import JobFollower
from .running import Running, checkpoint_step

log = logging.getLogger("runners.worker")


class Launcher:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend,
        hardware: Hardware,
        *,
        storage,
        transfers: ThreadPoolExecutor,
        lock: threading.RLock,
        running: dict[int, Running],
        follow: JobFollower,
        finisher: Finisher,
        estimates: Estimates,
    ):
        self.settings = settings
        self.store = store
        self.backend = backend
        self.hardware = hardware
        self.storage = storage
        self._transfers = transfers
        self._lock = lock
        self.running = running  # the runner's: a started job goes in
        self.follow = follow
        self.finisher = finisher
        self.estimates = estimates
        self.fetching: set[int] = set()  # claimed jobs whose inputs or plan are being prepared

    def start(self, job: Job, slots: list[str]) -> None:
        """Launch a job just claimed: now, or after its preparation in the transfer pool."""
        parent = self.store.find(job.parent_id) if job.parent_id else None
        fetch = self.storage is not None and artifacts.missing_inputs(job.args, parent)
        prepare = self.settings.estimate and kind_of(job.kind).estimated
        if fetch or prepare:
            self.fetching.add(job.id)
            self._transfers.submit(self._fetch_then_launch, job, parent, slots, fetch=fetch)
        else:
            self.launch(job, slots)

    def _fetch_then_launch(
        self, job: Job, parent: Job | None, slots: list[str], *, fetch: bool = True
    ) -> None:
        """Inputs kept only in the artifact store (e.g. exported on another host) come first; a train
        job's tokens are counted and its `fast` shape chosen for the GPU it got."""
        try:
            if fetch:
                self.store.add_event(job.id, EventKind.FETCHING)
                args = artifacts.fetch_inputs(job, parent, self.storage, self.settings.cache_dir)
                self.store.update(job.id, args=args)
            if self.settings.estimate and kind_of(job.kind).estimated:
                self.estimates.prepare_launch(self.store.get(job.id), slots)
        except Exception as exc:  # a thread of the pool: nothing above it would see the error
            if not isinstance(exc, (UserError, OSError)):
                log.exception("fetching the inputs of job #%s failed", job.id)
            text = exc.text() if isinstance(exc, UserError) else str(exc)
            with self._lock:
                self.fetching.discard(job.id)
                self.finisher.fail_before_start(job, f"Could not prepare the job: {text}")
            return
        with self._lock:
            self.fetching.discard(job.id)
            self.launch(self.store.get(job.id), slots)

    def job_env(self, job: Job, slots: list[str]) -> dict[str, str]:
        return command_env(job, slots, self.settings, has_gpu=self.hardware.has_gpu)

    def launch(self, job: Job, slots: list[str]) -> None:
        work_dir = Path(job.work_dir or self.settings.jobs_dir / str(job.id))
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            kind = kind_of(job.kind)
            if kind.fit_to_hardware is not None:
                job = kind.fit_to_hardware(job, work_dir, self.hardware, slots, self.store)
            config = work_dir / "config.yaml"
            config.write_text(yaml.safe_dump(job.args, sort_keys=False, allow_unicode=True), encoding="utf-8")
            if kind.prepare is not None:
                job = kind.prepare(job, work_dir, self.store)
            env = self.job_env(job, slots)
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
            values: dict[str, Any] = {}
            if kind.serving is not None:  # the port, API key and environment it serves with
                served_env, values = kind.serving.launch(job, self.settings)
                env.update(served_env)
            argv = kind.argv(job, config, self.settings)
            log_path = Path(job.log_path or work_dir / "job.log")
            attempt = f"{job.kind} #{job.id}, attempt {job.attempt}, slots {','.join(slots)}"
            start_attempt(log_path, f"{attempt}: {' '.join(argv)}")
            parent = self.store.find(job.parent_id) if job.parent_id else None
            handle = self.backend.start(
                LaunchSpec(argv=argv, env=env, cwd=work_dir, log_path=log_path, job=job, parent=parent)
            )
        except OSError as exc:
            advice = (
                "free space on the runner's data disk (old jobs' checkpoints and merged exports are "
                "the largest), then `resume` or run it again"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "check TUNEBOT_DATA_DIR is writable and llamafactory-cli is installed"
            )
            self.finisher.fail_before_start(job, f"Could not start the job: {exc.strerror or exc}.", advice)
            return
        # Followed from here on, before anything is written: a database outage on the writes
        # below must not leave a live process that no runner watches (the next tick records its
        # handle and launch values, `Worker._watch_one`).
        run = Running(job.id, handle, launch_values=dict(values))
        if kind.follows_trainer_log:
            run.follower = self.follow.trainer_log(job)
            if job.attempt > 1:
                # A resumed run appends to the log from its checkpoint's step on: skip the old lines.
                run.follower.poll()
                run.seen_step = checkpoint_step(job.args.get("resume_from_checkpoint"))
        run.last_activity_at = now()
        self.running[job.id] = run
        self.store.update(job.id, handle=handle, **values)
        config_key = self.store.put_file(job.id, "config.yaml", config.read_bytes())
        self.store.add_event(job.id, EventKind.STARTED, events.started(slots, job.attempt, config_key))
