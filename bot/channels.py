"""Whether tunebot is in a Slack conversation: Slack sends a bot the messages (and files) of the
conversations it is in and no others, so a prompt or a digest elsewhere would go unanswered."""

from __future__ import annotations

from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

# Slack's answers for a conversation the bot cannot see at all.
NOT_VISIBLE = frozenset({"channel_not_found", "not_in_channel"})


def slack_error(error: SlackApiError) -> str | None:
    return error.response.get("error") if error.response is not None else None


def channel_info(client: WebClient, channel: str) -> dict[str, Any]:
    """conversations.info's channel, with `is_member` true for a DM or group DM (the bot is in every
    one it sees) and false where Slack does not show the bot the channel. Slack's other refusals
    (missing_scope, …) raise SlackApiError."""
    try:
        info = dict(client.conversations_info(channel=channel).get("channel") or {})
    except SlackApiError as error:
        if slack_error(error) in NOT_VISIBLE:
            return {"id": channel, "is_member": False}
        raise
    info["is_member"] = bool(info.get("is_im") or info.get("is_mpim") or info.get("is_member", False))
    return info
