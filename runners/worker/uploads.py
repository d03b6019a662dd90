"""Copying a succeeded job's artifacts to a remote artifact store, off the runner loop, and again
when a runner of this host stopped before its upload ended."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from .. import artifacts
from ..errors import UserError
from ..events import EventKind
from ..job import JobState
from ..store import Store

log = logging.getLogger("runners.worker")

# In a succeeded job's artifacts while its upload has not finished (a later runner retries it).
UPLOAD_PENDING = "upload_pending"


class Uploads:
    """The uploads of one runner: at most one per job at a time, each in the transfer pool."""

    def __init__(
        self,
        store: Store,
        storage,
        transfers: ThreadPoolExecutor,
        *,
        host: str,
        runner_id: str,
        only_job: int | None = None,
    ):
        self.store = store
        self.storage = storage  # the remote artifact store (OSS); None: job folders are the copies
        self._transfers = transfers
        self.host = host
        self.runner_id = runner_id
        self.only_job = only_job
        self._uploads: dict[int, Future] = {}  # job id -> its artifact upload, while one runs

    def pending(self) -> list[int]:
        """Jobs whose artifacts this runner is uploading now."""
        return [job_id for job_id, future in list(self._uploads.items()) if not future.done()]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the uploads under way; True if none is left."""
        futures = [f for f in list(self._uploads.values()) if not f.done()]
        if futures:
            wait(futures, timeout=timeout)
        return not self.pending()

    def retry(self, live: set[str]) -> None:
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
            self.start(job.id)

    def start(self, job_id: int) -> None:
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
