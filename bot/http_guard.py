"""What an HTTP request to `/slack/events` must show before tunebot reads it: a small body, a
form or JSON content type, and Slack's signature.

Anyone on the network can POST there, so the checks run in order of cost: the headers (size
announced, content type, timestamp and signature shaped as Slack sends them) before a byte of the
body is read; the body read in chunks and dropped past `MAX_BODY_BYTES`; the signature (HMAC over
the raw body) checked before anything parses it. Each refusal is a status and one short reason
for the log — never the body, never a header value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

# Slack's payloads are a few kB; a view_submission with a pasted YAML stays well under this.
MAX_BODY_BYTES = 256 * 1024
# Slack's (and Bolt's) window: a signature older than 5 minutes is a replay.
MAX_AGE_S = 5 * 60
CONTENT_TYPES = ("application/x-www-form-urlencoded", "application/json")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


STATUS_TEXT = {400: "bad request", 401: "unauthorized", 413: "payload too large"}


@dataclass(frozen=True)
class Refusal:
    status: int  # 400 malformed, 401 not from Slack, 413 too large
    reason: str  # for the log: what was wrong, in a few words


class BodyTooLarge(Exception):
    pass


def check_head(headers: Mapping[str, str], *, now: float | None = None) -> Refusal | None:
    """The cheap checks, on headers alone (lower-case names, as Starlette gives them)."""
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            return Refusal(400, "malformed Content-Length")
        if int(length) > MAX_BODY_BYTES:
            return Refusal(413, f"body of {length} bytes announced")
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        return Refusal(400, "unexpected content type")
    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if timestamp is None or signature is None:
        return Refusal(401, "unsigned")
    if not _TIMESTAMP.fullmatch(timestamp):
        return Refusal(400, "malformed timestamp")
    if not _SIGNATURE.fullmatch(signature):
        return Refusal(401, "malformed signature")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > MAX_AGE_S:
        return Refusal(401, "stale timestamp")
    return None


async def read_capped(chunks: AsyncIterator[bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, read chunk by chunk; past `limit` bytes the rest is never read (a lying
    Content-Length, or chunked encoding without one)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


def signature_ok(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Slack's `v0=` HMAC-SHA256 over `v0:{timestamp}:{body}`, compared in constant time."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    basestring = b"v0:" + timestamp.encode("ascii") + b":" + body
    expected = "v0=" + hmac.new(secret.encode("utf-8"), basestring, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("x-slack-signature", ""))
