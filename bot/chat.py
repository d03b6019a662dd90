"""Chatting with a deployed model in its job's thread.

The conversation sent to the model is the thread's human chat turns and the model's own earlier
answers, in order; the bot's status posts, commands to the bot (`status`, `cancel`, …) and other
bots' messages are not part of it. The model's answers are told apart from the bot's other posts
by a marker: the block_id of the answer's first block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from slack_sdk import WebClient

from runners.job import Job, JobState

from .parsing import LEADING_MENTION, parse_thread_reply, unescape_slack
from .render import SECTION_TEXT_MAX, context, escape, message, section

log = logging.getLogger(__name__)

ANSWER_MARKER = "tunebot_chat_answer"
# Enough history for a chat in a thread, short enough for a small model's context. (Answer length,
# temperature, top-p and the system prompt are the deployment's: runners.deploy.chat_defaults.)
MAX_TURNS = 20
# Messages with these subtypes are still something a person wrote.
_HUMAN_SUBTYPES = (None, "thread_broadcast", "file_share")


EMPTY_ANSWER = "_(an empty answer)_"


def render_chat_answer(answer: str, deployment: Job) -> dict[str, Any]:
    """The model's answer, posted in the thread; its first block carries the answer marker."""
    text = escape(answer.strip()) or EMPTY_ANSWER
    chunks = [text[i : i + SECTION_TEXT_MAX - 10] for i in range(0, min(len(text), 40 * SECTION_TEXT_MAX),
                                                                    SECTION_TEXT_MAX - 10)]
    blocks = [section(chunk) for chunk in chunks[:45]]
    blocks[0]["block_id"] = f"{ANSWER_MARKER}_{deployment.id}"
    blocks.append(context(f":robot_face: #{deployment.id} · {escape(deployment.model.rsplit('/', 1)[-1])}"))
    return message(answer.strip() or "(an empty answer)", blocks)


def is_answer(msg: dict[str, Any]) -> bool:
    blocks = msg.get("blocks") or []
    return bool(blocks) and str(blocks[0].get("block_id", "")).startswith(ANSWER_MARKER)


def _answer_text(msg: dict[str, Any]) -> str:
    parts = [b.get("text", {}).get("text", "") for b in msg.get("blocks") or []
             if b.get("type") == "section" and isinstance(b.get("text"), dict)]
    text = "".join(parts) if parts else msg.get("text", "")
    return "" if text == EMPTY_ANSWER else unescape_slack(text)


def _human_text(msg: dict[str, Any], bot_user_id: str | None) -> str | None:
    """What a person said to the model, or None when the message is not a chat turn."""
    text = msg.get("text") or ""
    if parse_thread_reply(text, bot_user_id) is not None:
        return None  # a command to the bot
    match = LEADING_MENTION.match(text)
    if match and bot_user_id and match.group(1) == bot_user_id:
        text = text[match.end():]
    text = unescape_slack(text).strip()
    return text or None


def conversation(messages: Iterable[dict[str, Any]], *, bot_user_id: str | None, bot_id: str | None,
                 root_ts: str, until_ts: str | None = None) -> list[dict[str, str]]:
    """A thread's messages (as conversations.replies returns them) -> the chat to send the model.

    Roles alternate user/assistant and start and end with the user, as LLaMA-Factory's API wants:
    consecutive turns of one side are joined.
    """
    turns: list[dict[str, str]] = []
    for msg in messages:
        ts = msg.get("ts", "")
        if ts == root_ts:
            continue
        if until_ts is not None and float(ts or 0) > float(until_ts):
            break
        ours = (bot_id and msg.get("bot_id") == bot_id) or (bot_user_id and msg.get("user") == bot_user_id)
        if ours:
            if is_answer(msg):
                turns.append({"role": "assistant", "content": _answer_text(msg)})
            continue
        if msg.get("bot_id") or msg.get("subtype") not in _HUMAN_SUBTYPES or not msg.get("user"):
            continue  # other bots, joins, edits
        said = _human_text(msg, bot_user_id)
        if said:
            turns.append({"role": "user", "content": said})
    merged: list[dict[str, str]] = []
    for turn in turns:
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1] = {"role": turn["role"], "content": merged[-1]["content"] + "\n\n" + turn["content"]}
        else:
            merged.append(turn)
    while merged and merged[0]["role"] != "user":
        merged.pop(0)
    while merged and merged[-1]["role"] != "user":
        merged.pop()
    if len(merged) > MAX_TURNS:
        merged = merged[-MAX_TURNS:]
        if merged[0]["role"] != "user":
            merged = merged[1:]
    return merged


def read_thread(client: WebClient, channel: str, thread_ts: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every message of a thread, root first (conversations.replies, all pages)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while len(found) < limit:
        response = client.conversations_replies(channel=channel, ts=thread_ts, cursor=cursor, limit=200)
        found.extend(response.get("messages") or [])
        cursor = (response.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            break
    return found


def serving_deployment(runtime: Any, job: Job) -> Job | None:
    """The deployment a chat in `job`'s thread talks to, if one is serving."""
    if job.kind == "deploy":
        return job if job.state == JobState.SERVING.value else None
    serving = runtime.queue.deployments_of(job.id, (JobState.SERVING.value,))
    return serving[0] if serving else None
