"""The buttons on a job's message: Eval, Export, Deploy, Cancel, Resume, Undeploy (value: the job id)."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import BoltContext, Respond

from ...parsing import Command
from ...services import services_of
from ...use_cases import BUTTON_COMMANDS, Origin, answer_command
from ..answers import answering_errors


def run_job_button(body: dict[str, Any], action: dict[str, Any], respond: Respond, context: BoltContext,
                   logger: logging.Logger) -> None:
    services = services_of(context)
    container = body.get("container") or {}
    origin = Origin(
        user=body["user"]["id"],
        channel=(body.get("channel") or {}).get("id") or container.get("channel_id", ""),
        thread_ts=container.get("thread_ts", ""),
        request_key=body.get("trigger_id"),
    )

    def reply(message: dict[str, Any]) -> None:
        respond(**message, response_type="ephemeral", replace_original=False)

    with answering_errors(reply, logger):
        command = Command(BUTTON_COMMANDS[action["action_id"]], [str(action.get("value", ""))])
        reply(answer_command(services, command, origin))
