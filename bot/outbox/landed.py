"""Did a post whose outcome is unknown land in Slack?

A sender can die (or lose its claim) after Slack accepted a post and before the outbox recorded
it. Sending again would post it twice. Every keyed post therefore carries its outbox key in its
message metadata, and before a post that may have landed is sent again, the thread (or the
channel's recent history) is read for a message with that key: found, it is the post.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

KEY_FIELD = "outbox_key"
POST_EVENT = "tunebot_post"
LOOK_BACK = 200  # messages read back: a thread's replies, or the channel's latest top-level posts


def with_key(metadata: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """The post's metadata carrying its outbox key (a post without metadata gets some)."""
    if not metadata:
        return {"event_type": POST_EVENT, "event_payload": {KEY_FIELD: key}}
    payload = dict(metadata.get("event_payload") or {})
    payload[KEY_FIELD] = key
    return {**metadata, "event_payload": payload}


def key_of(message: dict[str, Any]) -> str | None:
    payload = (message.get("metadata") or {}).get("event_payload") or {}
    value = payload.get(KEY_FIELD)
    return value if isinstance(value, str) else None


def find_landed(client: WebClient, channel: str, thread_ts: str | None, key: str,
                oldest: float | None = None) -> str | None:
    """The ts of the message posted with `key` (in the thread `thread_ts`, else at the channel's top
    level), or None if it is not there. A failure to look raises: the caller retries later rather
    than risk a duplicate."""
    if thread_ts:
        try:
            answer = client.conversations_replies(channel=channel, ts=thread_ts, limit=LOOK_BACK,
                                                  include_all_metadata=True)
        except SlackApiError as exc:
            if exc.response.get("error") == "thread_not_found":
                return None  # the thread has no replies at all: nothing of ours landed there
            raise
    else:
        kwargs: dict[str, Any] = {"channel": channel, "limit": LOOK_BACK, "include_all_metadata": True}
        if oldest:
            kwargs["oldest"] = f"{max(0.0, oldest - 60):.6f}"  # a little slack for clock skew
        answer = client.conversations_history(**kwargs)
    for message in answer.get("messages") or []:
        if key_of(message) == key:
            return message.get("ts")
    return None
