"""Deployment: `llamafactory-cli api` (or webchat); starts in `starting` until the model answers,
then serves until undeployed or idle. The runner asks `Deployment` at launch (port, API key,
environment), each tick (ready? idle?) and at the end; runners/deploy.py talks to the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import deploy as served
from ..backends.joblog import log_written
from ..errors import UserError
from ..job import Job, JobKind, JobState, now
from ..llamafactory.command import command_argv
from ..llamafactory.recipes import Recipe, deploy_recipe
from ..settings import Settings
from .base import Intake, Kind, Request, Watch, collect_nothing, register


def recipe(request: Request, intake: Intake) -> Recipe:
    """Serve a job's model (or model=PATH); a taken port or a webchat nobody set up is refused here."""
    built = deploy_recipe(intake.source(request, DEPLOY), request.pairs)
    port = built.spec.get("port")
    if port and served.port_in_use(intake.settings.deploy_host, port):
        raise UserError(
            f"Port {port} is already in use on the runner.",
            field="port",
            fix="leave out port= to get a free one, or pick another",
        )
    if built.mode == "webchat" and not intake.settings.webchat_cli:
        raise UserError(
            "mode=webchat needs LLaMA-Factory's Gradio chat in an environment of its own (gradio "
            "downgrades packages tunebot needs), and the operator has not set TUNEBOT_WEBCHAT_CLI.",
            field="mode",
            fix="mode=api: every deployment already gets a chat page link",
        )
    return built


class Deployment:
    """How a deployment is served (kinds/base.py: Serving)."""

    def launch(self, job: Job, settings: Settings) -> tuple[dict[str, str], dict[str, Any]]:
        port = job.spec.get("port") or served.free_port(settings.deploy_host)
        api_key = served.new_api_key() if settings.deploy_api_key else None
        if job.mode == "webchat":
            env = {"GRADIO_SERVER_NAME": settings.deploy_host, "GRADIO_SERVER_PORT": str(port)}
        else:
            env = {
                "API_HOST": settings.deploy_host,
                "API_PORT": str(port),
                "API_MODEL_NAME": served.model_name(job),
            }
            if api_key:
                env["API_KEY"] = api_key
        return env, {"port": port, "api_key": api_key}

    def api_base(self, job: Job, settings: Settings, backend: Any) -> str:
        """This host, or the node that serves it."""
        local = served.internal_api_base(settings.deploy_host, job.port or 0)
        if not job.handle:
            return local
        host = local.split("//", 1)[1].rsplit(":", 1)[0]
        return backend.endpoint(job.handle, host, job.port or 0) + "/v1"

    def watch(self, job: Job, watch: Watch) -> str | None:
        settings = watch.settings
        if job.state == JobState.STARTING.value:
            base = self.api_base(job, settings, watch.backend)
            ready = job.mode == "webchat" and served.port_in_use(settings.deploy_host, job.port or 0)
            ready = ready or (job.mode != "webchat" and served.is_ready(base, job.api_key, timeout=1.0))
            if ready:
                if job.mode == "webchat":
                    url = served.web_url(settings.public_url, settings.deploy_host, job.port)
                elif base != served.internal_api_base(settings.deploy_host, job.port or 0):
                    url = base  # served on a cluster node, at the address the node published
                else:
                    url = served.api_url(settings.public_url, settings.deploy_host, job.port)
                chat_url = (
                    f"{watch.chat_base}/chat/{job.id}/" if watch.chat_base and job.mode != "webchat" else url
                )
                watch.store.transition(
                    job.id,
                    [JobState.STARTING.value],
                    JobState.SERVING.value,
                    url=url,
                    chat_url=chat_url,
                    last_activity=now(),
                )
            elif now() - (job.started_at or now()) > settings.deploy_timeout:
                return (
                    f"the model did not answer within {settings.deploy_timeout:.0f} s "
                    "(TUNEBOT_DEPLOY_TIMEOUT); large models can need minutes to load"
                )
            return None
        if job.state == JobState.SERVING.value:
            activity = job.last_activity or job.started_at or now()
            written = log_written(job)  # the API server logs every request: a growing log is use too
            if written is not None:
                activity = max(activity, written[0])
            if now() - activity > settings.deploy_idle:
                return f"idle for {settings.deploy_idle / 3600:g} h (TUNEBOT_DEPLOY_IDLE)"
        return None

    def ended(
        self, job: Job, stop_reason: str | None, explain: Callable[[], Any]
    ) -> tuple[str, dict[str, Any]]:
        if job.cancel_requested or (stop_reason and job.state == JobState.SERVING.value):
            error = f"Stopped: {stop_reason}." if stop_reason else f"Undeployed by {job.cancelled_by}."
            return JobState.STOPPED.value, {"error": error}
        failure = explain()
        return JobState.FAILED.value, {
            "error": f"The deployment {stop_reason}." if stop_reason else failure.reason,
            "advice": failure.advice,
            "log_tail": failure.tail,
        }


DEPLOY = register(
    Kind(
        JobKind.DEPLOY.value,
        argv=command_argv,
        collect=collect_nothing,
        first_state=JobState.STARTING.value,
        serving=Deployment(),
        recipe=recipe,
        from_job=True,
        usage="JOB [mode=api|webchat]",
        summary="Serve a model: an OpenAI-compatible API and a chat page",
        example="12 mode=api",
        order=40,
    )
)
