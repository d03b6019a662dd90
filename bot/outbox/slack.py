"""The Slack side of delivery: the WebClient tunebot sends with (retry handlers on, request bodies
never logged) and what a failed Slack call means for the message (retry later, rewrite it, give up,
or look whether it landed after all). bot/outbox/delivery.py decides what to do with that."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler


class _WithoutBodies(logging.Filter):
    """At DEBUG slack_sdk logs whole request and response bodies (an ephemeral's API key with them):
    keep only what was called and how it went."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for start, cut in (("Sending a request", ", query_params:"), ("Received the following", ", headers")):
            if message.startswith(start):
                record.msg, record.args = message.split(cut, 1)[0] + " (body not logged)", None
        return True


# The WebClient's own logger, for make_client: a child of delivery's, so its lines go where those go.
_client_log = logging.getLogger("bot.outbox.delivery.slack_sdk")
_client_log.addFilter(_WithoutBodies())

# Slack's answers that no retry can fix: the message itself is wrong. Posts are then retried once
# as plain text (no blocks, no metadata), then marked failed (kept in the table, logged).
CONTENT_ERRORS = frozenset({
    "invalid_blocks", "invalid_blocks_format", "msg_too_long", "no_text", "invalid_arguments",
    "invalid_attachments", "too_many_attachments", "invalid_metadata_format", "invalid_metadata_schema",
    "metadata_too_large", "metadata_must_be_sent_from_app", "invalid_arg_name", "invalid_array_arg",
    "invalid_charset", "invalid_form_data", "invalid_post_type", "missing_post_type",
    "markdown_text_conflict",
})
# The target is gone: an edit of a deleted message, an ephemeral to someone who left the channel.
GONE_ERRORS = frozenset({
    "message_not_found", "cant_update_message", "edit_window_closed", "user_not_in_channel",
    "file_deleted",
})


# Failures after which the post may have reached Slack all the same (the answer was lost): before
# sending it again, Slack is asked whether it is there (bot/outbox/landed.py).
UNCERTAIN_ERRORS = frozenset({"timeout", "TimeoutError", "URLError", "ConnectionError",
                              "ConnectionResetError", "RemoteDisconnected", "IncompleteRead", "OSError"})


def retry_handlers() -> list[RetryHandler]:
    """Connection errors, 429 (sleeping Retry-After) and 500/503, each retried twice by the client.
    A send may so last minutes under a long Retry-After: its claim is renewed while it runs."""
    return [
        ConnectionErrorRetryHandler(max_retry_count=2),
        RateLimitErrorRetryHandler(max_retry_count=2),
        ServerErrorRetryHandler(max_retry_count=2),
    ]


def make_client(token: str, base_url: str | None = None, *, timeout: int = 30) -> WebClient:
    """The WebClient tunebot uses everywhere: retry handlers on, request bodies never logged."""
    base = base_url or WebClient.BASE_URL
    if not base.endswith("/"):
        base += "/"
    return WebClient(token=token, base_url=base, timeout=timeout, logger=_client_log,
                     retry_handlers=retry_handlers())


def ensure_retry_handlers(client: WebClient) -> WebClient:
    """Add whichever of the rate-limit and server-error handlers a client lacks."""
    have = {type(h) for h in client.retry_handlers}
    for handler in retry_handlers():
        if type(handler) not in have:
            client.retry_handlers.append(handler)
    return client


class Failure(Exception):
    """A call that did not go through: `code` is Slack's error (or the exception's name)."""

    def __init__(self, code: str, *, permanent: bool, retry_after: float | None = None):
        super().__init__(code)
        self.code = code
        self.permanent = permanent
        self.retry_after = retry_after


def classify(exc: Exception) -> Failure:
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = getattr(response, "status_code", None)
        code = ""
        try:
            code = str(response.get("error") or "")
        except Exception:  # a body that was not JSON
            code = ""
        if status == 429 or code == "ratelimited":
            return Failure(code or "ratelimited", permanent=False, retry_after=retry_after_of(response))
        if status and status >= 500:
            return Failure(code or f"http_{status}", permanent=False)
        return Failure(code or f"http_{status}", permanent=code in CONTENT_ERRORS or code in GONE_ERRORS)
    if isinstance(exc, FileNotFoundError):
        return Failure("file_missing", permanent=True)
    return Failure(type(exc).__name__, permanent=False)


def retry_after_of(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    for name, value in dict(headers).items():
        if str(name).lower() == "retry-after":
            value = value[0] if isinstance(value, (list, tuple)) else value
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None
