"""`/tune …`: parsed and acknowledged at once; the work (validation, the engine) runs lazily."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from slack_bolt import Ack, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from runners.errors import UserError, shorten
from runners.llamafactory.recipes import DEFAULT_PRESET, PRESETS

from ... import uploads
from ...auth import audit
from ...channels import channel_info
from ...parsing import COMMAND, Command, extract_yaml, parse_command
from ...render import render_error, render_help, render_train_modal
from ...render.replies import render_checking, render_dataset_prompt, render_text
from ...services import Services, services_of
from ...use_cases import Origin, answer_command, checked
from ..answers import Reply, answering_errors

_YAML_LINE = re.compile(r"^\s*[A-Za-z_][\w.\-]*\s*:\s*\S", re.MULTILINE)
# The ack's reading of the text, handed to the lazy listener in Bolt's context (Bolt copies the
# context for lazy listeners after the ack ran: process_before_response=True), so it is read once.
PARSED = "tunebot_tune_command"


def parse_tune(text: str) -> Command:
    """The command's text -> Command; `train` followed by YAML lines without a ``` block works too."""
    try:
        return parse_command(text)
    except UserError:
        first, _, rest = text.strip().partition("\n")
        if first.strip().lower() == "train" and _YAML_LINE.search(rest):
            return Command("train", yaml=extract_yaml(rest))
        raise


def _opens_form(command: Command) -> bool:
    return command.name == "train" and not command.args and not command.pairs and command.yaml is None


def ack_tune(ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient, context: BoltContext,
             logger: logging.Logger) -> None:
    services = services_of(context)
    text = command.get("text") or ""
    context[PARSED] = None  # a mistake: the ack says what is wrong, the lazy listener does nothing
    try:
        parsed = parse_tune(text)
    except UserError as error:
        ack(**render_error(error))
        return
    context[PARSED] = parsed
    if parsed.name == "help":
        topic = " ".join(parsed.args) if parsed.args else None
        ack(**render_help(services.access.summary(command.get("user_id"), command.get("channel_id")), topic))
    elif _opens_form(parsed):
        ack()
        # Not on the lazy listeners' pool: its threads may all be waiting for engine slots.
        services.forms.submit(_open_form_answering, services, client, command, respond, logger)
    elif checked(parsed.name):
        ack(**render_checking(f"{COMMAND} {text.strip()}"[:200]))
    else:
        ack()


def _origin(command: dict[str, Any]) -> Origin:
    return Origin(user=command["user_id"], channel=command["channel_id"],
                  request_key=command.get("trigger_id"))


def _ephemeral_reply(respond: Respond) -> Reply:
    def reply(message: dict[str, Any]) -> None:
        respond(**message, response_type="ephemeral")

    return reply


def _open_form_answering(services: Services, client: WebClient, command: dict[str, Any], respond: Respond,
                         logger: logging.Logger) -> None:
    with answering_errors(_ephemeral_reply(respond), logger):
        open_train_form(services, client, command["trigger_id"], _origin(command))


def run_tune(command: dict[str, Any], respond: Respond, client: WebClient, context: BoltContext,
             logger: logging.Logger) -> None:
    services = services_of(context)
    parsed: Command | None = context.get(PARSED)
    if parsed is None or parsed.name == "help" or _opens_form(parsed):
        return  # the ack said what is wrong, was the answer, or opens the form
    origin = _origin(command)
    reply = _ephemeral_reply(respond)
    with answering_errors(reply, logger):
        if parsed.name == "dataset add":
            reply(ask_for_dataset_file(services, client, parsed.args[0], origin))
        else:
            reply(answer_command(services, parsed, origin))


def seed_recipe_for_form(services: Services) -> dict[str, Any]:
    """The form starts at the seed recipe, with the operator's default model and dataset."""
    defaults: dict[str, Any] = dict(PRESETS[DEFAULT_PRESET].values)
    settings = services.runtime.settings
    defaults["model"] = settings.default_model or ""
    defaults["dataset"] = settings.default_dataset or ""
    if not services.queue.hardware.has_gpu:
        defaults["bf16"] = False  # fp32: what a host without a GPU can run
    return defaults


def open_train_form(services: Services, client: WebClient, trigger_id: str, origin: Origin) -> None:
    services.access.require(origin.user, origin.channel, store=services.store)
    metadata = json.dumps({"channel": origin.channel})
    view = render_train_modal(seed_recipe_for_form(services), private_metadata=metadata)
    client.views_open(trigger_id=trigger_id, view=view)


def _is_member(client: WebClient, channel: str) -> bool:
    try:
        return channel_info(client, channel)["is_member"]
    except SlackApiError:
        return True  # no channels:read: let the post itself say whether it can


def ask_for_dataset_file(services: Services, client: WebClient, name: str, origin: Origin,
                         thread_ts: str | None = None) -> dict[str, Any]:
    """Post the prompt the file is shared in reply to; remember it."""
    from runners.datasets import validate_dataset_name

    services.access.require(origin.user, origin.channel, "add datasets", store=services.store)
    try:
        validate_dataset_name(name)
    except UserError as err:
        audit(services.store, origin.user, "refused", None, what="dataset add", channel=origin.channel,
              reason=shorten(err.message, 200))
        raise
    if not _is_member(client, origin.channel):
        # Slack sends a bot the messages (and files) of conversations it is in, and no others.
        raise UserError("I am not in this channel, so I would not see the file you share here.",
                        fix=f"invite me with `/invite @tunebot`, then `{COMMAND} dataset add {name}` again")
    try:
        posted = client.chat_postMessage(channel=origin.channel, thread_ts=thread_ts,
                                         **render_dataset_prompt(name, origin.user))
    except SlackApiError as error:
        if error.response.get("error") in ("not_in_channel", "channel_not_found"):
            raise UserError("I cannot post in this conversation, so I cannot ask for the file here.",
                            fix="invite me with `/invite @tunebot`, or share the file with the message "
                                f"`{COMMAND} dataset add {name}`") from None
        raise
    uploads.remember_prompt(services.store, origin.channel, thread_ts or posted["ts"], origin.user, name)
    audit(services.store, origin.user, "dataset prompt", None, name=name, channel=origin.channel)
    return render_text(f":inbox_tray: Reply to my message in this channel with the file for {name!r}.")
