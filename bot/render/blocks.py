"""Block Kit primitives: Slack's limits, escaping, cutting, and the blocks every message is built of.

Pure functions, no Slack calls. Everything a person or a log wrote is escaped (`&`, `<`, `>`: a
log line saying `<!channel>` must not ping a channel) and cut to Slack's limits, counted like
Slack counts them (UTF-16 code units): 3000 characters a text block, 150 a header, 50 blocks a message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

# Slack's limits (Block Kit reference), counted like Slack counts: UTF-16 code units.
MAX_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
CONTEXT_ELEMENTS_MAX = 10
FALLBACK_TEXT_MAX = 3000
MODAL_TITLE_MAX = 24
OPTION_TEXT_MAX = 75

_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


# -- text helpers ---------------------------------------------------------------------------------


def slack_len(text: str) -> int:
    """Length as Slack counts it (UTF-16 code units: an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def _cut(text: str, units: int) -> str:
    """The longest prefix of `text` within `units` UTF-16 units."""
    if slack_len(text) <= units:
        return text
    out, used = [], 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > units:
            break
        out.append(ch)
        used += size
    return "".join(out)


def truncate(text: str, limit: int, marker: str = "…") -> str:
    """`text` cut to `limit` (Slack's counting), ending in `marker` when cut."""
    if slack_len(text) <= limit:
        return text
    return _cut(text, max(0, limit - slack_len(marker))) + marker


def truncate_tail(text: str, limit: int, marker: str = "…") -> str:
    """Keep the end of `text` (the last log lines matter most), starting with `marker` when cut."""
    if slack_len(text) <= limit:
        return text
    reversed_cut = _cut(text[::-1], max(0, limit - slack_len(marker)))[::-1]
    # Start at a line boundary when one is near, so the first line shown is whole.
    newline = reversed_cut.find("\n")
    if 0 <= newline < 200:
        reversed_cut = reversed_cut[newline:]
    return marker + reversed_cut


def escape(text: Any) -> str:
    """Slack's three control characters escaped, so text shows as written and pings nobody."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(user: str | None) -> str:
    if not user:
        return "the command line"
    if _USER_ID.match(user):
        return f"<@{user}>"
    return escape(user)


def code(text: Any) -> str:
    """Inline code; backticks inside would end it early, so they become look-alikes."""
    value = escape(text).replace("`", "ˋ").replace("\n", " ")
    return f"`{value}`" if value else "` `"


def code_block(text: str, limit: int = SECTION_TEXT_MAX) -> str:
    """A ``` block of `text`, keeping its end when it must be cut, within `limit` overall."""
    body = escape(text).replace("```", "ˋˋˋ").strip("\n") or " "
    return "```\n" + truncate_tail(body, limit - 8) + "\n```"


def link(url: str, label: str | None = None) -> str:
    url = escape(url).replace("|", "%7C")
    return f"<{url}|{escape(label).replace('|', '¦')}>" if label else f"<{url}>"


def slack_date(ts: float | None, fmt: str = "{date_short_pretty} at {time}") -> str:
    """A time every reader sees in their own time zone."""
    if not ts:
        return "—"
    fallback = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(ts)}^{fmt}|{fallback}>"


def plain(text: str, limit: int = HEADER_TEXT_MAX) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text or " ", limit), "emoji": True}


def mrkdwn(text: str, limit: int = SECTION_TEXT_MAX) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text or " ", limit)}


def section(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": mrkdwn(text), **extra}


def fields_section(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Up to 10 `*label*\\nvalue` fields, two columns wide in Slack."""
    return {
        "type": "section",
        "fields": [mrkdwn(f"*{label}*\n{value}", FIELD_TEXT_MAX) for label, value in pairs[:10]],
    }


def context(*texts: str) -> dict[str, Any]:
    elements = [mrkdwn(t) for t in texts if t][:CONTEXT_ELEMENTS_MAX]
    return {"type": "context", "elements": elements or [mrkdwn(" ")]}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": plain(text, HEADER_TEXT_MAX)}


def message(text: str, blocks: list[dict[str, Any]], *, escaped: bool = False) -> dict[str, Any]:
    """The payload: fallback text (notifications, screen readers) and at most 50 blocks.

    Slack parses the fallback like any message text (and the outbox sends it alone when Slack
    refuses the blocks), so it is escaped here: give it as plain words. `escaped=True`: it is
    tunebot's own mrkdwn (mentions meant), whose people's words were escaped already.
    """
    if len(blocks) > MAX_BLOCKS:
        hidden = len(blocks) - (MAX_BLOCKS - 1)
        blocks = blocks[: MAX_BLOCKS - 1] + [context(f"…and {hidden} more not shown.")]
    return {"text": truncate(text if escaped else escape(text), FALLBACK_TEXT_MAX), "blocks": blocks}
