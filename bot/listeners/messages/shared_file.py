"""A file shared with `/tune dataset add NAME` (or in reply to the bot's prompt) becomes a dataset."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import BoltContext
from slack_sdk import WebClient

from runners.errors import UserError

from ... import uploads
from ...auth import audit
from ...parsing import parse_command
from ...render.replies import render_dataset_added
from ...services import services_of
from ..answers import answering_errors


def _dataset_name(text: str) -> str | None:
    """`/tune dataset add NAME`, `dataset add NAME` or `@tunebot dataset add NAME` -> NAME."""
    if "dataset" not in text.lower():
        return None
    try:
        command = parse_command(text)
    except UserError:
        return None
    return command.args[0] if command.name == "dataset add" else None


def shared_file(event: dict[str, Any], client: WebClient, context: BoltContext,
                logger: logging.Logger) -> None:
    services = services_of(context)
    user, channel = event.get("user", ""), event.get("channel", "")
    if event.get("bot_id") or not user:
        return
    thread_ts = event.get("thread_ts") or ""
    name = _dataset_name(event.get("text") or "")
    prompt = None
    if name is None and thread_ts:
        prompt = uploads.prompt_of(services.store, channel, thread_ts)
        name = prompt.name if prompt is not None else None
    if name is None:
        return  # people share files for other reasons
    where = thread_ts or event["ts"]

    def tell(message: dict[str, Any]) -> None:
        services.ephemeral(channel, user, thread_ts=where, **message)

    with answering_errors(tell, logger):
        services.access.require(user, channel, "add datasets")
        file = uploads.pick_file(event.get("files") or [])
        info = uploads.register(client, services.runtime.settings.data_dir, name, file)
        audit(services.store, user, "dataset add", None, name=name, rows=info.rows, format=info.format,
              channel=channel, file=file.get("name"))
        services.post(channel, thread_ts=where, **render_dataset_added(info, user=user))
        if prompt is not None:
            uploads.forget_prompt(services.store, channel, prompt.ts)
