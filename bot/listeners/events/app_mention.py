"""`@tunebot …` outside a job's thread: any /tune command; help, status, jobs and datasets answer in place.

In a job's thread the message listener owns replies (commands and chat turns), so a mention
there only answers `@tunebot help`. A mention that shares a file is a dataset upload, which
the message listener handles too.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import BoltContext
from slack_sdk import WebClient

from runners.errors import UserError

from ...parsing import COMMAND, parse_thread_reply
from ...render import render_error, render_help
from ...render.replies import render_text
from ...services import services_of
from ...threads import job_of_thread
from ...use_cases import Origin, answer_command
from ..answers import answering_errors
from ..commands.tune import ask_for_dataset_file, parse_tune

ANSWERED_IN_PLACE = ("help", "status", "jobs", "datasets")


def app_mention(event: dict[str, Any], body: dict[str, Any], client: WebClient, context: BoltContext,
                logger: logging.Logger) -> None:
    services = services_of(context)
    user, channel = event.get("user", ""), event.get("channel", "")
    if event.get("bot_id") or not user or event.get("files"):
        return
    thread_ts = event.get("thread_ts") or ""
    where = thread_ts or event["ts"]
    text = event.get("text") or ""
    origin = Origin(user=user, channel=channel, thread_ts=thread_ts, request_key=body.get("event_id"))

    def post(message: dict[str, Any]) -> None:
        services.post(channel, thread_ts=where, **message)

    def tell(message: dict[str, Any]) -> None:
        services.ephemeral(channel, user, thread_ts=where, **message)

    if thread_ts and job_of_thread(services.store, channel, thread_ts) is not None:
        reply = parse_thread_reply(text, context.bot_user_id)
        if reply is not None and reply.name == "help":
            with answering_errors(tell, logger):
                post(render_help(services.access.summary(user, channel)))
        return
    with answering_errors(tell, logger):
        try:
            command = parse_tune(text)
        except UserError as error:
            tell(render_error(error))
            return
        if command.name in ANSWERED_IN_PLACE:
            post(answer_command(services, command, origin))
        elif command.name == "train" and not (command.args or command.pairs or command.yaml):
            tell(render_text(f"The train form opens from the slash command: `{COMMAND} train`."))
        elif command.name == "dataset add":
            ask_for_dataset_file(services, client, command.args[0], origin, thread_ts=where)
        else:
            tell(answer_command(services, command, origin))
