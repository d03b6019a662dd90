"""A reply in a job's thread: a command on that job, or, in a deployed model's thread, a chat turn."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import BoltContext
from slack_sdk import WebClient

from ...auth import audit
from ...chat import MAX_TOKENS, conversation, read_thread, render_chat_answer, serving_deployment
from ...parsing import parse_thread_reply
from ...services import services_of
from ...threads import job_of_thread
from ...use_cases import Origin, answer_thread_command
from ..answers import answering_errors


def thread_reply(event: dict[str, Any], body: dict[str, Any], client: WebClient, context: BoltContext,
                 logger: logging.Logger) -> None:
    services = services_of(context)
    user, channel = event.get("user", ""), event.get("channel", "")
    thread_ts, ts = event.get("thread_ts") or "", event.get("ts", "")
    if event.get("bot_id") or not user or not thread_ts or thread_ts == ts:
        return
    root = job_of_thread(services.store, channel, thread_ts)
    if root is None:
        return
    origin = Origin(user=user, channel=channel, thread_ts=thread_ts, request_key=body.get("event_id"))

    def tell(message: dict[str, Any]) -> None:
        services.ephemeral(channel, user, thread_ts=thread_ts, **message)

    reply = parse_thread_reply(event.get("text") or "", context.bot_user_id)
    with answering_errors(tell, logger):
        if reply is not None:
            if reply.name != "help":  # `@tunebot help` is the mention listener's
                tell(answer_thread_command(services, root, reply, origin))
            return
        deployment = serving_deployment(services.runtime, root)
        if deployment is None:
            return  # people talking among themselves in a job's thread
        services.access.require(user, channel, "chat with this model")
        messages = read_thread(client, channel, thread_ts)
        if not any(m.get("ts") == ts for m in messages):
            messages.append(event)  # Slack's thread listing may lag behind the event
        turns = conversation(messages, bot_user_id=context.bot_user_id, bot_id=context.bot_id,
                             root_ts=thread_ts, until_ts=ts)
        if not turns:
            return
        answer = services.runtime.chat(deployment.id, turns, max_tokens=MAX_TOKENS)
        services.post(channel, thread_ts=thread_ts, **render_chat_answer(answer, deployment))
        audit(services.store, user, "chat", deployment.id, channel=channel, turns=len(turns))
