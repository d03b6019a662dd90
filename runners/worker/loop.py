"""The runner loop: claim queued jobs, start their processes, follow them, and record how they end.

One `Worker` per runner process. Several may share a database (and a host): claims and slot
leases are atomic in the store, so a job never starts twice and a GPU is never handed out twice.
The Worker keeps the loop, the claims and recovery; it owns one collaborator per concept:
`Launcher` (launch.py), `JobFollower` (follow.py), `Finisher` (finish.py), `Uploads`
(uploads.py) and `Estimates` (estimates.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..backends import Backend, open_backend
from ..errors import UserError
from ..events import EventKind
from ..hardware import Hardware, detect, slots_for
from ..job import ACTIVE_STATES, Job, JobState, now
from ..kinds import Watch, is_known, kind_of
from ..recovery.outage import Outage, is_database_error
from ..settings import Settings
from ..store import Store
from .estimates import Estimates
from .finish import Finisher
from .follow import JobFollower
from .launch import Launcher
from .running import Running
from .uploads import Uploads

# One logger for the whole runner loop, whichever of its modules speaks.
log = logging.getLogger("runners.worker")

RECOVER_EVERY = 30.0
BEAT_EVERY = 5.0


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
        self._hardware = hardware or detect()
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
            from ..artifacts import open_storage

            self.storage = open_storage(settings.storage, settings.data_dir)
        # Uploads and input fetches take minutes for a merged 8B model: off the runner loop.
        self._transfers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tunebot-transfer")
        # One warning when the database goes away and one when it is back, not one per tick.
        self.outage = Outage(log, f"runner {self.runner_id}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_thread: threading.Thread | None = None
        self._last_recover = 0.0
        self._lock = threading.RLock()
        self.uploads = Uploads(
            store, self.storage, self._transfers, host=self.host, runner_id=self.runner_id, only_job=only_job
        )
        # Token counts for estimates of queued train jobs: one at a time, off the runner loop.
        self.estimates = Estimates(
            settings, store, self.hardware, host=self.host, slots=self.slots, lock=self._lock
        )
        self.follow = JobFollower(store, self.estimates.tokens_per_epoch)
        self.finisher = Finisher(
            store, self.backend, follow=self.follow, estimates=self.estimates, uploads=self.uploads
        )
        self.launcher = Launcher(
            settings,
            store,
            self.backend,
            self.hardware,
            storage=self.storage,
            transfers=self._transfers,
            lock=self._lock,
            running=self.running,
            follow=self.follow,
            finisher=self.finisher,
            estimates=self.estimates,
        )

    @property
    def hardware(self) -> Hardware:
        """What this runner plans and leases for, fixed at construction: its parts (backend,
        estimates, launcher) were built with it, so it cannot be swapped afterwards (pass
        `hardware=` to `Worker` or `Runtime`)."""
        return self._hardware

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
        self.estimates.shutdown()
        try:
            self.store.forget_runner(self.runner_id)
        except Exception as exc:  # the database is away: its beat simply goes stale
            if not is_database_error(exc):
                raise

    def uploads_pending(self) -> list[int]:
        """Jobs whose artifacts this runner is uploading now."""
        return self.uploads.pending()

    def wait_uploads(self, timeout: float | None = None) -> bool:
        """Wait for the uploads under way; True if none is left."""
        return self.uploads.wait(timeout)

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
            if self.settings.estimate and self.only_job is None:
                # A worker for one job (`tunebot cancel` settling it) estimates nobody's queue:
                # its counting pool would outlive the command and hold its exit.
                self.estimates.estimate_queued()

    # --- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Adopt this host's jobs whose runner is gone: re-attach if the process lives, else settle them."""
        self._last_recover = now()
        live = {r.id for r in self.store.live_runners()} - {self.runner_id}
        for job in self.store.list_jobs(states=ACTIVE_STATES):
            if (
                job.id in self.running
                or job.id in self.launcher.fetching
                or job.host != self.host
                or job.runner_id in live
            ):
                continue
            if self.only_job is not None and job.id != self.only_job:
                continue
            if not is_known(job.kind):
                log.warning("job #%s is of kind %r, which this runner does not know; left as it is",
                            job.id, job.kind)
                continue
            if not self.store.adopt(job.id, job.runner_id, self.runner_id):
                continue  # another runner on this host adopted it first
            handle = job.handle or None
            if handle is not None and self.backend.reattach(handle):
                run = Running(job.id, handle, seen_step=int(job.progress.get("step") or 0))
                if kind_of(job.kind).follows_trainer_log:
                    run.follower = self.follow.trainer_log(job)
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
                    self.follow.catch_up(job)
                self.finisher.finish(
                    self.store.get(job.id), code, None, finished_at=self.backend.ended_at(handle)
                )
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
            self.uploads.retry(live)

    # --- claiming -----------------------------------------------------------------------
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
            if not is_known(job.kind):
                continue  # a kind this runner's code does not have (a newer front end's): another runner's
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
            self.launcher.start(self.store.get(job.id), slots)

    def _job_env(self, job: Job, slots: list[str]) -> dict[str, str]:
        return self.launcher.job_env(job, slots)

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
        """Follow one running job: progress, a served model's state, cancel, and its end."""
        try:
            if not job.handle and run.handle:
                # Its launch could not record the handle (the database was away): now.
                self.store.update(job.id, handle=run.handle, **run.launch_values)
            if run.follower is not None:
                self.follow.follow(job, run)
            serving = kind_of(job.kind).serving
            if serving is not None and run.term_sent_at is None:
                watch = Watch(self.settings, self.store, self.backend, self.chat_base)
                reason = serving.watch(job, watch)
                if reason:
                    self._stop_process(run, reason=reason)
            if self.follow.activity_due(run):
                self.follow.activity(job, run)
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
                self.follow.follow(job, run)
            try:
                self.finisher.finish(self.store.get(job.id), code, run)
            except Exception as exc:
                if is_database_error(exc):
                    raise  # still in self.running: finished again once the database is back
                log.exception("recording the end of job #%s failed", job.id)
                self.running.pop(job.id, None)
                self.finisher.fail_before_start(job, f"tunebot could not record how it ended: {exc}")
                return
            self.running.pop(job.id, None)
            self.estimates.tokens_per_epoch.pop(job.id, None)

    def _stop_process(self, run: Running, reason: str | None) -> None:
        run.stop_reason = reason
        run.term_sent_at = now()
        self.backend.cancel(run.handle)

    def api_base(self, job: Job) -> str:
        """Where the runner reaches a deployment's API (`…/v1`): this host, or the node that serves it."""
        serving = kind_of(job.kind).serving
        if serving is None:
            raise UserError(f"Job #{job.id} serves no model.", field="job")
        return serving.api_base(job, self.settings, self.backend)


def wait_for(store: Store, job_id: int, states: tuple[str, ...], timeout: float, poll: float = 0.2) -> Job:
    """Block until the job reaches one of `states` (tests, the CLI); returns the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = store.get(job_id)
        if job.state in states or time.monotonic() > deadline:
            return job
        time.sleep(poll)
