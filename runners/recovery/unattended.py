"""Acting for a runner that is not there.

A job whose runner is gone (the foreground `tunebot run` was interrupted, a `tunebot worker` was
stopped or killed) keeps its process, or has already ended. Until a runner comes back, the
command line settles it itself: `show` and `logs -f` record how a job ended that nobody followed,
and `cancel` / `undeploy` stop the process through the backend instead of leaving a request that
no one reads. The work is the runner's own (`Worker.recover` re-attaches or settles, its watch
loop stops and records), done once, in this process.
"""

from __future__ import annotations

import time

from ..job import ACTIVE_STATES, Job, JobState
from ..settings import Settings
from ..store import Store


def followed(store: Store, job: Job) -> bool:
    """True when a live runner is following the job (or it is not running at all)."""
    if job.state not in ACTIVE_STATES:
        return True
    live = {r.id for r in store.live_runners()}
    return bool(job.runner_id) and job.runner_id in live


def settle(settings: Settings, store: Store, job: Job, *, stop: bool = False, timeout: float | None = None,
           upload_timeout: float = 600.0) -> Job:
    """The job, brought up to date by acting as its runner when none follows it.

    A process that ended is recorded as its runner would have (figures, end time, results); with
    `stop` (a cancel or undeploy was just asked for), a live process is stopped (SIGTERM, then
    SIGKILL after the cancel grace) and its end recorded. Jobs of another host are left alone:
    their processes are not this machine's to signal."""
    from ..worker import Worker

    if followed(store, job):
        return job
    worker = Worker(settings, store, only_job=job.id)
    worker.announce_reattach = False
    if job.host and job.host != worker.host:
        return job
    worker.recover()
    if stop and job.id in worker.running:
        deadline = time.monotonic() + (timeout if timeout is not None else settings.cancel_grace + 30.0)
        while job.id in worker.running and time.monotonic() < deadline:
            worker.tick()
            time.sleep(0.2)
    worker.running.clear()  # a live process not stopped here: the next runner re-attaches to it
    worker.wait_uploads(upload_timeout)
    return store.get(job.id)


def settled_state_words(job: Job) -> str:
    """How `cancel`/`undeploy` describe the outcome."""
    if job.is_final:
        return job.state
    if job.state == JobState.QUEUED.value:
        return "queued"
    return "stop requested; its runner stops it"
