"""One tunebot process's engine: the store, the queue, the runner loop and the chat-page server.

`tunebot serve`, `tunebot worker`, `tunebot demo` and the foreground `tunebot run` each build a
`Runtime`; a front end then talks to `runtime.queue` and reads `runtime.store`'s events.
"""

from __future__ import annotations

import logging
from typing import Any

from . import deploy
from .errors import UserError
from .hardware import Hardware
from .job import JobKind, JobState, now
from .queue import JobQueue
from .settings import Settings
from .store import Store
from .worker import Worker

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        only_job: int | None = None,
        hardware: Hardware | None = None,
    ):
        """`hardware`: what the runner plans for (detected when not given; the bench passes a card
        capped to 80 or 24 GB so the `fast` plan is made for that card)."""
        self.settings = settings
        self.store = store or Store(settings.db_url)
        self.store.migrate()
        self.worker = Worker(settings, self.store, only_job=only_job, hardware=hardware)
        # With no runner live, requests are judged by this process's runner's hardware.
        self.queue = JobQueue(settings, self.store, local=self.worker.hardware)
        self._web_server = None
        self.web_port: int | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self, *, worker: bool = True, web: bool = True) -> Runtime:
        if web:
            self.start_web()
        if worker:
            self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        if self._web_server is not None:
            try:
                self._web_server.stop()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("stopping the chat-page server failed")
            self._web_server = None

    def start_web(self) -> None:
        """Serve deployments' chat pages; if the port is taken (another tunebot serves them), skip."""
        from .webchat import create_chat_app, serve_in_thread

        app = create_chat_app(self.chat_target, on_activity=self.touch)
        try:
            self._web_server, self.web_port = serve_in_thread(
                app, self.settings.web_host, self.settings.web_port
            )
        except OSError as exc:
            log.warning(
                "chat pages not served from this process (%s:%s: %s)",
                self.settings.web_host,
                self.settings.web_port,
                exc.strerror or exc,
            )
            return
        self.worker.chat_base = deploy.web_url(
            self.settings.public_url, self.settings.web_host, self.web_port
        )

    # --- deployments --------------------------------------------------------------------
    def chat_target(self, job_id: int):
        from .webchat import ChatTarget

        job = self.store.find(job_id)
        if (
            job is None
            or job.kind != JobKind.DEPLOY.value
            or job.state != JobState.SERVING.value
            or not job.port
        ):
            return None
        title = f"tunebot #{job.id}: {job.model.rsplit('/', 1)[-1]}"
        if job.parent_id:
            title += f" (from #{job.parent_id})"
        return ChatTarget(
            api_base=self.worker.api_base(job),
            model_name=deploy.model_name(job),
            title=title,
            defaults=deploy.chat_defaults(job),
        )

    def touch(self, job_id: int) -> None:
        self.store.update(job_id, last_activity=now())

    def chat(self, job_ref: int | str, messages: list[dict[str, str]], **kwargs: Any) -> str:
        """One chat turn with a deployment (a deploy job, or a train/export job that has one)."""
        job = self.store.get(job_ref)
        if job.kind != JobKind.DEPLOY.value:
            serving = self.queue.deployments_of(job.id, (JobState.SERVING.value,))
            if not serving:
                fix = (
                    f"`deploy {job.id}`"
                    if job.kind in (JobKind.TRAIN.value, JobKind.EXPORT.value)
                    else "chat with a deploy job, or a train or export job that has one"
                )
                raise UserError(f"Job #{job.id} has no serving deployment.", field="job", fix=fix)
            job = serving[0]
        answer = deploy.chat(
            job, messages, bind_host=self.settings.deploy_host, api_base=self.worker.api_base(job), **kwargs
        )
        self.touch(job.id)
        return answer
