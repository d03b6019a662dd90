"""Deployment: `llamafactory-cli api` (or webchat); starts in `starting` until the model answers,
then serves until undeployed or idle (runners/worker.py follows that, with runners/deploy.py)."""

from __future__ import annotations

from ..deploy import port_in_use
from ..errors import UserError
from ..job import JobKind, JobState
from ..llamafactory.command import command_argv
from ..llamafactory.recipes import Recipe, deploy_recipe
from .base import Intake, Kind, Request, collect_nothing, register


def recipe(request: Request, intake: Intake) -> Recipe:
    """Serve a job's model (or model=PATH); a taken port or a webchat nobody set up is refused here."""
    built = deploy_recipe(intake.source(request, DEPLOY), request.pairs)
    port = built.spec.get("port")
    if port and port_in_use(intake.settings.deploy_host, port):
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


DEPLOY = register(
    Kind(
        JobKind.DEPLOY.value,
        argv=command_argv,
        collect=collect_nothing,
        first_state=JobState.STARTING.value,
        recipe=recipe,
        from_job=True,
        usage="JOB [mode=api|webchat]",
        summary="Serve a model: an OpenAI-compatible API and a chat page",
        example="12 mode=api",
        order=40,
    )
)
