"""The runner loop: claim queued jobs, start their processes, follow them, and record how they end.

One `Worker` per runner process. Several may share a database (and a host): claims and slot
leases are atomic in the store, so a job never starts twice and a GPU is never handed out twice.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import artifacts, deploy, events
from .backends import Backend, Handle, LaunchSpec, open_backend
from .errors import UserError
from .events import EventKind
from .hardware import Hardware, detect, slots_for
from .job import ACTIVE_STATES, Job, JobKind, JobState, now
from .kinds import MissingOutput, kind_of
from .llamafactory.command import command_env
from .recovery.outage import Outage, is_database_error
from .settings import Settings
from .speed.throughput import true_progress
from .store import Store

log = logging.getLogger(__name__)

PLOT_EVERY = 30.0  # seconds between partial loss plots of a running job
ACTIVITY_EVERY = 60.0  # seconds between activity events of a running job (front ends judge stalls by them)
ACTIVITY_TAIL_LINES = 15
RECOVER_EVERY = 30.0
BEAT_EVERY = 5.0


@dataclass
class Running:
    job_id: int
    handle: Handle
    follower: Any = None  # TrainerLogFollower for train jobs
    term_sent_at: float | None = None
    killed: bool = False
    stop_reason: str | None = None  # why tunebot stopped it (idle deployment, start-up timeout)
    last_plot_at: float = 0.0
    new_points: bool = False
    seen_step: int = 0
    last_activity_at: float = 0.0
    backlog: list = field(default_factory=list)  # trainer_log points read but not yet recorded
    final_plot_done: bool = False
    succeeded_with: dict[str, Any] | None = None  # the values its success was recorded with
    trouble_logged: bool = False  # a follow error of this job was logged once already


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        backend: Backend | None = None,
        hardware: Hardware | None = None,
        runner_id: str | None = None,
        only_job: int | None = None,
    ):
        self.settings = settings
        self.store = store
        self.hardware = hardware or detect()
        self.backend = backend or open_backend(settings.backend, settings, self.hardware)
        self.host = self.hardware.host or socket.gethostname()
        self.slots = self.backend.capacity() or slots_for(self.hardware, settings.gpus, settings.cpu_slots)
        self.runner_id = runner_id or f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.only_job = only_job
        self.announce_reattach = True  # a one-off look from the command line says nothing in the thread
        self.chat_base: str | None = None  # e.g. http://host:7860, set when the chat-page server runs
        self.running: dict[int, Running] = {}
        self.storage = None  # the artifact store, when it is remote (OSS); local job folders otherwise
        if settings.storage is not None and settings.storage.backend != "local":
            from .artifacts import open_storage

            self.storage = open_storage(settings.storage, settings.data_dir)
        # Uploads and input fetches take minutes for a merged 8B model: off the runner loop.
        self._transfers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tunebot-transfer")
        self._fetching: set[int] = set()
        self._uploads: dict[int, Future] = {}  # job id -> its artifact upload, while one runs
        # One warning when the database goes away and one when it is back, not one per tick.
        self.outage = Outage(log, f"runner {self.runner_id}")
        # Token counts for estimates of queued train jobs: one at a time, off the runner loop.
        self._counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunebot-count")
        self._estimating: set[int] = set()
        self._tokens_per_epoch: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_thread: threading.Thread | None = None
        self._last_recover = 0.0
        self._lock = threading.RLock()

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.store.beat(
            self.runner_id, self.host, os.getpid(), hardware={**self.hardware.to_dict(), "slots": self.slots}
        )
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tunebot-worker", daemon=True)
        self._thread.start()
        # The heartbeat has its own thread: a slow tick must not make this runner look dead.
        self._beat_thread = threading.Thread(target=self._beat_loop, name="tunebot-beat", daemon=True)
        self._beat_thread.start()

    def stop(self, timeout: float = 10.0, *, upload_timeout: float = 600.0) -> None:
        """Stop the loop. Job processes keep running: a later tunebot re-attaches to them.

        Uploads under way are waited for (up to `upload_timeout`): an upload cut off here would
        leave a job `succeeded` with half its files in the store. One that outlasts the wait stays
        marked pending on the job, and the next runner on this host uploads it again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.wait_uploads(upload_timeout)
        self._transfers.shutdown(wait=False, cancel_futures=True)
        self._counting.shutdown(wait=False, cancel_futures=True)
        try:
            self.store.forget_runner(self.runner_id)
        except Exception as exc:  # the database is away: its beat simply goes stale
            if not is_database_error(exc):
                raise

    def uploads_pending(self) -> list[int]:
        """Jobs whose artifacts this runner is uploading now."""
        return [job_id for job_id, future in list(self._uploads.items()) if not future.done()]

    def wait_uploads(self, timeout: float | None = None) -> bool:
        """Wait for the uploads under way; True if none is left."""
        futures = [f for f in list(self._uploads.values()) if not f.done()]
        if futures:
            wait(futures, timeout=timeout)
        return not self.uploads_pending()

    def _beat_loop(self) -> None:
        while not self._stop.wait(BEAT_EVERY):
            try:
                self.store.beat(self.runner_id, self.host, os.getpid())
                self.outage.ok()
            except Exception as exc:  # the database is away for a moment; the next beat tries again
                if is_database_error(exc):
                    self.outage.failed(exc)
                else:
                    log.exception("runner heartbeat failed")

    def _loop(self) -> None:
        while not self._stop.is_set():
            pause = self.settings.poll_interval
            try:
                self.tick()
                self.outage.ok()
            except Exception as exc:  # keep the runner alive; the job-level code records job failures
                if is_database_error(exc):
                    # Locked or down: job processes go on; follow them again once it is back.
                    pause = max(pause, self.outage.failed(exc))
                else:
                    log.exception("runner tick failed")
            self._stop.wait(pause)

    def tick(self) -> None:
        with self._lock:
            if now() - self._last_recover >= RECOVER_EVERY:
                self.recover()
            self._watch()
            self._claim()
            if self.settings.estimate:
                self._estimate_queued()

    # --- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Adopt this host's jobs whose runner is gone: re-attach if the process lives, else settle them."""
        self._last_recover = now()
        live = {r.id for r in self.store.live_runners()} - {self.runner_id}
        for job in self.store.list_jobs(states=ACTIVE_STATES):
            if (
                job.id in self.running
                or job.id in self._fetching
                or job.host != self.host
                or job.runner_id in live
            ):
                continue
            if self.only_job is not None and job.id != self.only_job:
                continue
            if not self.store.adopt(job.id, job.runner_id, self.runner_id):
                continue  # another runner on this host adopted it first
            handle = job.handle or None
            if handle is not None and self.backend.reattach(handle):
                run = Running(job.id, handle, seen_step=int(job.progress.get("step") or 0))
                if kind_of(job.kind).follows_trainer_log:
                    run.follower = self._follower(job)
                self.running[job.id] = run
                if self.announce_reattach:
                    self.store.add_event(job.id, EventKind.REATTACHED)
                log.info("re-attached to job #%s", job.id)
                continue
            code = self.backend.outcome(handle) if handle is not None else None
            if code is not None:
                # It ended while no runner was up: its figures and end time come from what it
                # left (trainer_log, exit file), not from the last progress seen or from now.
                if kind_of(job.kind).follows_trainer_log:
                    self._catch_up_progress(job)
                self._finish(self.store.get(job.id), code, None, finished_at=self.backend.ended_at(handle))
            else:
                self.store.release_slots(job.id)
                self.store.transition(
                    job.id,
                    ACTIVE_STATES,
                    JobState.INTERRUPTED.value,
                    finished_at=now(),
                    error="Its process was gone when tunebot looked again (tunebot restarted, or the "
                    "process never started).",
                    advice=f"`resume {job.id}` continues from the last checkpoint."
                    if kind_of(job.kind).resumable
                    else None,
                )
        # Leases whose job has ended (a crash between finishing and releasing).
        for _slot, job_id in self.store.leased_slots(self.host).items():
            job = self.store.find(job_id)
            if job is None or job.is_final:
                self.store.release_slots(job_id)
        if self.storage is not None:
            self._retry_uploads(live)

    def _retry_uploads(self, live: set[str]) -> None:
        """Upload again what a runner of this host left unfinished (stopped or killed mid-upload)."""
        for job in self.store.list_jobs(states=[JobState.SUCCEEDED.value], limit=200):
            if (
                not job.artifacts.get(UPLOAD_PENDING)
                or job.host != self.host
                or job.runner_id in live
                or job.runner_id == self.runner_id  # its own: under way, or failed (said so once)
                or job.id in self._uploads
                or (self.only_job is not None and job.id != self.only_job)
            ):
                continue
            if not self.store.adopt(job.id, job.runner_id, self.runner_id):
                continue
            log.info("job #%s: uploading its artifacts again (the last upload did not finish)", job.id)
            self._start_upload(job.id)

    def _catch_up_progress(self, job: Job) -> None:
        """Record the trainer_log lines written since the last progress this runner saw."""
        from .llamafactory.progress import read_trainer_log

        seen = int(job.progress.get("step") or 0)
        points = read_trainer_log(Path(job.work_dir) / "output" / "trainer_log.jsonl")
        per_epoch = job.metrics.get("tokens_per_epoch")
        latest = dict(job.progress)
        for point in points:
            if point.step > seen or point.eval_loss is not None and point.step >= seen:
                self.store.add_event(job.id, EventKind.PROGRESS, true_progress(point.to_dict(), per_epoch))
                seen = max(seen, point.step)
                latest.update({k: v for k, v in point.to_dict().items() if v is not None})
        latest = true_progress(latest, per_epoch)
        if latest != job.progress:
            self.store.update(job.id, progress=latest)

    # --- claiming and launching ---------------------------------------------------------
    def free_slots(self) -> list[str]:
        leased = self.store.leased_slots(self.host)
        return [s for s in self.slots if s not in leased]

    def _claim(self) -> None:
        if self.only_job is not None:
            job = self.store.find(self.only_job)
            candidates = [job] if job is not None and job.state == JobState.QUEUED.value else []
        else:
            candidates = self.store.list_jobs(states=[JobState.QUEUED.value], newest_first=False, limit=200)
        busy_users: dict[str, int] = {}
        free = self.free_slots()
        for job in candidates:
            if not free:
                return
            if job.user:
                active = busy_users.get(job.user)
                if active is None:
                    active = busy_users[job.user] = self.store.count_active(job.user)
                if active >= self.settings.max_jobs_per_user:
                    continue  # this user waits; others behind them may go
            if job.n_slots > len(self.slots):
                continue  # more than this host has: another runner's job
            if job.n_slots > len(free):
                return  # first in line waits for slots: FIFO
            slots = free[: job.n_slots]
            if not self.store.lease_slots(self.host, slots, job.id):
                return  # another runner took them; try next tick
            first_state = kind_of(job.kind).first_state
            claimed = self.store.transition(
                job.id,
                [JobState.QUEUED.value],
                first_state,
                runner_id=self.runner_id,
                host=self.host,
                slots=slots,
                started_at=now(),
                finished_at=None,
                exit_code=None,
            )
            if not claimed:
                # Another runner claimed it: free only what this runner just leased.
                self.store.release_slots(job.id, host=self.host, slots=slots)
                continue
            free = [s for s in free if s not in slots]
            if job.user:
                busy_users[job.user] = busy_users.get(job.user, 0) + 1
            claimed_job = self.store.get(job.id)
            parent = self.store.find(claimed_job.parent_id) if claimed_job.parent_id else None
            fetch = self.storage is not None and artifacts.missing_inputs(claimed_job.args, parent)
            prepare = self.settings.estimate and claimed_job.kind == JobKind.TRAIN.value
            if fetch or prepare:
                self._fetching.add(job.id)
                self._transfers.submit(self._fetch_then_launch, claimed_job, parent, slots, fetch=fetch)
            else:
                self._launch(claimed_job, slots)

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
            if self.settings.estimate and job.kind == JobKind.TRAIN.value:
                self._prepare_train(self.store.get(job.id), slots)
        except Exception as exc:  # a thread of the pool: nothing above it would see the error
            if not isinstance(exc, (UserError, OSError)):
                log.exception("fetching the inputs of job #%s failed", job.id)
            text = exc.text() if isinstance(exc, UserError) else str(exc)
            with self._lock:
                self._fetching.discard(job.id)
                self._fail_before_start(job, f"Could not prepare the job: {text}")
            return
        with self._lock:
            self._fetching.discard(job.id)
            self._launch(self.store.get(job.id), slots)

    # --- token counts, the fast plan, estimates ----------------------------------------------
    def _calibration_path(self) -> Path:
        return self.settings.calibration_dir / f"{self.host}.json"

    def _prepare(self, job: Job, slots: list[str] | None, *, apply_plan: bool):
        from .speed.estimate import load_table
        from .speed.trainprep import prepare

        return prepare(
            dict(job.args),
            preset=job.preset,
            spec=job.spec,
            hardware=self.hardware,
            slots=slots,
            cache_dir=self.settings.cache_dir,
            table=load_table(self._calibration_path()),
            env=self._job_env(job, slots or []),
            apply_plan=apply_plan,
        )

    def _prepare_train(self, job: Job, slots: list[str]) -> None:
        """Count, choose the fast plan for this GPU, estimate; record it all on the job."""
        if job.attempt > 1 and job.metrics.get("tokens_per_epoch"):
            self._tokens_per_epoch[job.id] = int(job.metrics["tokens_per_epoch"])
            return  # a resumed run keeps the plan it started with
        prepared = self._prepare(job, slots, apply_plan=True)
        metrics = {**self.store.get(job.id).metrics, **prepared.info}
        self.store.update(job.id, args=prepared.args, metrics=metrics)
        if prepared.info.get("tokens_per_epoch"):
            self._tokens_per_epoch[job.id] = int(prepared.info["tokens_per_epoch"])
        if prepared.info.get("estimate"):
            self.store.add_event(job.id, EventKind.ESTIMATE, prepared.info["estimate"])

    def _estimate_queued(self) -> None:
        """Queued train jobs get an estimate while they wait (the bot edits their message)."""
        for job in self.store.list_jobs(states=[JobState.QUEUED.value], newest_first=False, limit=50):
            if job.kind != JobKind.TRAIN.value or job.id in self._estimating:
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

    def _measure(self, job: Job, metrics: dict[str, Any]) -> None:
        """A finished train job's true tokens seen, tokens/s and MFU (into `metrics`); its speed
        refines this runner's calibration table."""
        from .speed import estimate as eta
        from .speed.throughput import mfu, tokens_per_second, tokens_seen

        if metrics.get("tokens_per_epoch") and metrics.get("epoch") is not None:
            seen = tokens_seen(metrics["epoch"], metrics["tokens_per_epoch"])
            if seen is not None:
                metrics["total_tokens"] = seen
        seen = metrics.get("total_tokens")
        runtime = metrics.get("train_runtime")  # the trainer's own, to the millisecond
        rate = tokens_per_second(seen, runtime, min_seconds=0.01)
        if rate is None:
            return
        metrics["tokens_per_s"] = round(rate, 1)
        params = metrics.get("params")
        gpu = metrics.get("gpu")
        n_gpus = max(1, len(job.slots or []))
        if gpu and isinstance(params, int):
            value = mfu(rate, params, gpu, n_gpus)
            if value is not None:
                metrics["mfu"] = round(value, 4)
        if job.started_at:
            metrics["actual_s"] = round(now() - job.started_at, 1)
        if isinstance(params, int) and params > 0:
            key = eta.table_key(eta.device_name(gpu), job.preset, n_gpus)
            startup = metrics["actual_s"] - float(runtime) if "actual_s" in metrics else None
            path = self._calibration_path()
            table = eta.refine(eta.load_table(path), key, tokens_per_s=rate, params=params, startup_s=startup)
            try:
                eta.save_table(path, table)
            except OSError:
                log.exception("recording the speed of job #%s failed", job.id)

    def _fail_before_start(self, job: Job, error: str, advice: str | None = None) -> None:
        self.store.release_slots(job.id)
        self.store.transition(
            job.id, ACTIVE_STATES, JobState.FAILED.value, finished_at=now(), error=error, advice=advice
        )

    def _launch(self, job: Job, slots: list[str]) -> None:
        work_dir = Path(job.work_dir or self.settings.jobs_dir / str(job.id))
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            fit = kind_of(job.kind).fit_to_hardware
            if fit is not None:
                job = fit(job, work_dir, self.hardware, slots, self.store)
            config = work_dir / "config.yaml"
            config.write_text(yaml.safe_dump(job.args, sort_keys=False, allow_unicode=True), encoding="utf-8")
            prepare = kind_of(job.kind).prepare
            if prepare is not None:
                job = prepare(job, work_dir, self.store)
            env = self._job_env(job, slots)
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
            values: dict[str, Any] = {}
            if job.kind == JobKind.DEPLOY.value:
                port = job.spec.get("port") or deploy.free_port(self.settings.deploy_host)
                api_key = deploy.new_api_key() if self.settings.deploy_api_key else None
                values.update(port=port, api_key=api_key)
                if job.mode == "webchat":
                    env.update(GRADIO_SERVER_NAME=self.settings.deploy_host, GRADIO_SERVER_PORT=str(port))
                else:
                    env.update(
                        API_HOST=self.settings.deploy_host,
                        API_PORT=str(port),
                        API_MODEL_NAME=deploy.model_name(job),
                    )
                    if api_key:
                        env["API_KEY"] = api_key
            argv = kind_of(job.kind).argv(job, config, self.settings)
            log_path = Path(job.log_path or work_dir / "job.log")
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(
                    f"=== tunebot: {job.kind} #{job.id}, attempt {job.attempt}, slots {','.join(slots)}: "
                    f"{' '.join(argv)}\n"
                )
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
            self._fail_before_start(job, f"Could not start the job: {exc.strerror or exc}.", advice)
            return
        self.store.update(job.id, handle=handle, **values)
        config_key = self.store.put_file(job.id, "config.yaml", config.read_bytes())
        run = Running(job.id, handle)
        if kind_of(job.kind).follows_trainer_log:
            run.follower = self._follower(job)
            if job.attempt > 1:
                # A resumed run appends to the log from its checkpoint's step on: skip the old lines.
                run.follower.poll()
                run.seen_step = _checkpoint_step(job.args.get("resume_from_checkpoint"))
        self.running[job.id] = run
        run.last_activity_at = now()
        self.store.add_event(job.id, EventKind.STARTED, events.started(slots, job.attempt, config_key))

    def _job_env(self, job: Job, slots: list[str]) -> dict[str, str]:
        return command_env(job, slots, self.settings, has_gpu=self.hardware.has_gpu)

    def _follower(self, job: Job):
        from .llamafactory.progress import TrainerLogFollower

        return TrainerLogFollower(Path(job.work_dir) / "output" / "trainer_log.jsonl")

    # --- watching -----------------------------------------------------------------------
    def _watch(self) -> None:
        if not self.running:
            return
        jobs = {j.id: j for j in self.store.jobs_by_id(list(self.running))}
        for job_id, run in list(self.running.items()):
            job = jobs.get(job_id)
            if job is None:
                self.running.pop(job_id, None)
                continue
            # A database error goes up to the loop (an outage: retried with back-off); the job's
            # process is never stopped for tunebot's own trouble; only its exit decides its fate.
            self._watch_one(job, run)

    def _watch_one(self, job: Job, run: Running) -> None:
        """Follow one running job: progress, deployment state, cancel, and its end."""
        try:
            if run.follower is not None:
                self._follow(job, run)
            if job.kind == JobKind.DEPLOY.value:
                self._watch_deployment(job, run)
            if now() - run.last_activity_at >= ACTIVITY_EVERY:
                self._activity(job, run)
        except Exception as exc:
            if is_database_error(exc):
                raise
            if not run.trouble_logged:  # once per job: the next tick would only repeat it
                log.exception("following job #%s failed; still waiting for its process to end", job.id)
                run.trouble_logged = True
        if job.cancel_requested and run.term_sent_at is None:
            self._stop_process(run, reason=None)
        if (
            run.term_sent_at is not None
            and not run.killed
            and now() - run.term_sent_at > self.settings.cancel_grace
        ):
            self.backend.cancel(run.handle, force=True)
            run.killed = True
        code = self.backend.poll(run.handle)
        if code is not None:
            # Children that outlive the command (torchrun workers ignoring SIGTERM) go too.
            self.backend.cancel(run.handle, force=True)
            if run.follower is not None:
                self._follow(job, run)
            try:
                self._finish(self.store.get(job.id), code, run)
            except Exception as exc:
                if is_database_error(exc):
                    raise  # still in self.running: finished again once the database is back
                log.exception("recording the end of job #%s failed", job.id)
                self.running.pop(job.id, None)
                self._fail_before_start(job, f"tunebot could not record how it ended: {exc}")
                return
            self.running.pop(job.id, None)
            self._tokens_per_epoch.pop(job.id, None)

    def _stop_process(self, run: Running, reason: str | None) -> None:
        run.stop_reason = reason
        run.term_sent_at = now()
        self.backend.cancel(run.handle)

    def _activity(self, job: Job, run: Running) -> None:
        """Say the job is still followed, when its log last grew and how it ends: front ends judge
        a stall from this, without reading the runner's disk."""
        run.last_activity_at = now()
        log_at, size = None, 0
        for path in (Path(job.log_path), Path(job.work_dir) / "output" / "trainer_log.jsonl"):
            try:
                stat = path.stat()
            except OSError:
                continue
            log_at = max(log_at or 0.0, stat.st_mtime)
            if path == Path(job.log_path):
                size = stat.st_size
        tail = "\n".join(_read_log(job, limit=16_000).splitlines()[-ACTIVITY_TAIL_LINES:])
        self.store.add_event(job.id, EventKind.ACTIVITY, events.activity(log_at, size, tail))

    def _follow(self, job: Job, run: Running) -> None:
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
                self.store.add_event(job.id, EventKind.PROGRESS, true_progress(point.to_dict(), per_epoch))
                posted.add((point.step, point.is_eval))
                run.seen_step = max(run.seen_step, point.step)
                fresh.append(point)
            run.backlog.pop(0)
        if not fresh:
            if run.new_points and now() - run.last_plot_at >= PLOT_EVERY:
                self._plot(job, run, final=False)
            return
        latest = dict(job.progress)
        for point in fresh:  # the closing summary line has no loss: keep the last one logged
            latest.update({k: v for k, v in point.to_dict().items() if v is not None})
        latest = true_progress(latest, per_epoch)
        self.store.update(job.id, progress=latest)
        run.new_points = True
        if now() - run.last_plot_at >= PLOT_EVERY:
            self._plot(job, run, final=False)

    def _plot(self, job: Job, run: Running | None, *, final: bool) -> str | None:
        from .llamafactory.progress import loss_points, read_trainer_log
        from .plots import render_loss_plot

        points = loss_points(read_trainer_log(Path(job.work_dir) / "output" / "trainer_log.jsonl"))
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

    def api_base(self, job: Job) -> str:
        """Where the runner reaches a deployment's API (`…/v1`): this host, or the node that serves it."""
        local = deploy.internal_api_base(self.settings.deploy_host, job.port or 0)
        if not job.handle:
            return local
        host = local.split("//", 1)[1].rsplit(":", 1)[0]
        return self.backend.endpoint(job.handle, host, job.port or 0) + "/v1"

    def _watch_deployment(self, job: Job, run: Running) -> None:
        if run.term_sent_at is not None:
            return
        base = self.api_base(job)
        if job.state == JobState.STARTING.value:
            ready = job.mode == "webchat" and deploy.port_in_use(self.settings.deploy_host, job.port or 0)
            ready = ready or (job.mode != "webchat" and deploy.is_ready(base, job.api_key, timeout=1.0))
            if ready:
                if job.mode == "webchat":
                    url = deploy.web_url(self.settings.public_url, self.settings.deploy_host, job.port)
                elif base != deploy.internal_api_base(self.settings.deploy_host, job.port or 0):
                    url = base  # served on a cluster node, at the address the node published
                else:
                    url = deploy.api_url(self.settings.public_url, self.settings.deploy_host, job.port)
                chat_url = (
                    f"{self.chat_base}/chat/{job.id}/" if self.chat_base and job.mode != "webchat" else url
                )
                self.store.transition(
                    job.id,
                    [JobState.STARTING.value],
                    JobState.SERVING.value,
                    url=url,
                    chat_url=chat_url,
                    last_activity=now(),
                )
                run.ready = True
            elif now() - (job.started_at or now()) > self.settings.deploy_timeout:
                self._stop_process(
                    run,
                    reason=(
                        f"the model did not answer within {self.settings.deploy_timeout:.0f} s "
                        "(TUNEBOT_DEPLOY_TIMEOUT); large models can need minutes to load"
                    ),
                )
            return
        if job.state == JobState.SERVING.value:
            activity = job.last_activity or job.started_at or now()
            try:  # the API server logs every request: a growing log is use too
                activity = max(activity, Path(job.log_path).stat().st_mtime)
            except OSError:
                pass
            if now() - activity > self.settings.deploy_idle:
                self._stop_process(
                    run, reason=f"idle for {self.settings.deploy_idle / 3600:g} h (TUNEBOT_DEPLOY_IDLE)"
                )

    # --- finishing ----------------------------------------------------------------------
    def _finish(self, job: Job, code: int, run: Running | None, *, finished_at: float | None = None) -> None:
        from .llamafactory.failures import explain_failure

        self.store.release_slots(job.id)
        values: dict[str, Any] = {"finished_at": finished_at or now(), "exit_code": code}
        stop_reason = run.stop_reason if run else None
        if job.kind == JobKind.DEPLOY.value:
            if job.cancel_requested or (stop_reason and job.state == JobState.SERVING.value):
                values["error"] = (
                    f"Stopped: {stop_reason}." if stop_reason else f"Undeployed by {job.cancelled_by}."
                )
                self.store.transition(job.id, ACTIVE_STATES, JobState.STOPPED.value, **values)
                return
            failure = explain_failure(_read_log(job), code)
            values.update(
                error=f"The deployment {stop_reason}." if stop_reason else failure.reason,
                advice=failure.advice,
                log_tail=failure.tail,
            )
            self.store.transition(job.id, ACTIVE_STATES, JobState.FAILED.value, **values)
            return
        kind = kind_of(job.kind)
        # A database error anywhere below makes the loop call this again for the same run: the
        # steps done already (the final plot, the state change) are not done twice.
        if kind.follows_trainer_log and not (run is not None and run.final_plot_done):
            self._plot(job, run, final=True)
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
                values.update(kind.collect(job))
                self._add_stored(job, values)
                if self.storage is not None:  # cleared when the upload ends; a later runner retries
                    values["artifacts"][UPLOAD_PENDING] = True
                if job.kind == JobKind.TRAIN.value:
                    self._measure(job, values["metrics"])
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
            if self.storage is not None:
                self._start_upload(job.id)
            return
        failure = explain_failure(_read_log(job), code)
        values.update(error=failure.reason, advice=failure.advice, log_tail=failure.tail)
        lost = self.backend.lost(job.handle) if job.handle else None
        if lost:  # the job could not say how it ended (its node was lost): the backend's words
            values.update(error=lost, advice=None)
        if kind.resumable and (Path(job.work_dir) / "output").is_dir():
            from .llamafactory.recipes import last_checkpoint

            if last_checkpoint(Path(job.work_dir) / "output") is not None:
                values["advice"] = ((failure.advice + " ") if failure.advice else "") + (
                    f"`resume {job.id}` continues from the last checkpoint."
                )
        self.store.transition(job.id, ACTIVE_STATES, JobState.FAILED.value, **values)

    def _start_upload(self, job_id: int) -> None:
        self._uploads[job_id] = self._transfers.submit(self._upload_recorded, job_id)
        self._uploads[job_id].add_done_callback(lambda _f: self._uploads.pop(job_id, None))

    def _upload_recorded(self, job_id: int) -> None:
        """`_upload`, with any failure recorded on the job (a future would swallow it silently)."""
        try:
            self._upload(job_id)
        except Exception as exc:
            log.exception("uploading the artifacts of job #%s failed", job_id)
            try:
                error = {"name": "artifacts", "error": f"The upload failed: {exc}"}
                self.store.add_event(job_id, EventKind.UPLOAD, error)
            except Exception:  # the database is away too: the pending mark stays for a retry
                log.warning("job #%s: the upload failure could not be recorded either", job_id)

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

    def _upload(self, job_id: int) -> None:
        """Copy a succeeded job's artifacts to the store; say in its events what went where."""
        job = self.store.get(job_id)
        # Skip what the job stored itself: this host holds only the small files of it.
        stored = set(job.artifacts.get("remote") or {})
        records, errors = artifacts.upload_job(job, self.storage, skip=stored)
        fresh = self.store.get(job_id)
        remote = {**(fresh.artifacts.get("remote") or {}), **records}
        kept = {k: v for k, v in fresh.artifacts.items() if k != UPLOAD_PENDING}
        self.store.update(job_id, artifacts={**kept, "remote": remote, "remote_errors": errors})
        for name, record in records.items():
            data = {"name": name, "location": record["location"], "size": record["size"]}
            try:
                data["link"] = artifacts.describe(self.storage, record)["link"]
            except UserError:
                pass
            self.store.add_event(job_id, EventKind.UPLOAD, data)
        for name, error in errors.items():
            self.store.add_event(
                job_id, EventKind.UPLOAD, {"name": name, "error": error, "local": str(Path(job.work_dir))}
            )

# In a succeeded job's artifacts while its upload has not finished (a later runner retries it).
UPLOAD_PENDING = "upload_pending"


def _checkpoint_step(path: Any) -> int:
    """`.../checkpoint-40` -> 40; no checkpoint (starting over) -> 0."""
    try:
        return int(str(path).rstrip("/").rsplit("-", 1)[1]) if path else 0
    except (IndexError, ValueError):
        return 0


def _read_log(job: Job, limit: int = 200_000) -> str:
    """The end of the job's log, this attempt only."""
    try:
        with open(job.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    marker = text.rfind("=== tunebot:")
    return text[marker:] if marker >= 0 else text


def wait_for(store: Store, job_id: int, states: tuple[str, ...], timeout: float, poll: float = 0.2) -> Job:
    """Block until the job reaches one of `states` (tests, the CLI); returns the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = store.get(job_id)
        if job.state in states or time.monotonic() > deadline:
            return job
        time.sleep(poll)
