"""Slack's requests, as Slack would send them: payloads, and signed HTTP requests for Bolt.

The payload builders return the dicts Slack sends (a slash command's form fields, a
block_actions or view_submission payload, an events API envelope); the Socket Mode stand-in
pushes the same dicts. The `signed_*` functions wrap them into the exact bodies and headers of
Slack's HTTP delivery (`v0=` HMAC-SHA256 over `v0:{timestamp}:{raw body}`), with knobs for a
wrong secret, a stale timestamp and a retry (`X-Slack-Retry-Num`). `post()` sends one to a
running app and returns the status without raising on 4xx.

    request = signed_slash_command("train tiny", response_url=slack.new_response_url())
    result = post(app_url, request)
    assert result.status == 200
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tests.slack_standin import APP_ID, BOT_ID, BOT_USER_ID, TEAM_ID

SIGNING_SECRET = "tunebot-test-signing-secret"
# Slack's (and Bolt's) limit: a signature older than 5 minutes is refused.
STALE_AFTER_S = 5 * 60
HUMAN_USER_ID = "U0HUMAN01"
CHANNEL_ID = "C0TUNEBOT"
CHANNEL_NAME = "ml-ops"

_ids = itertools.count(1)


def new_trigger_id() -> str:
    """A fresh trigger_id, shaped like Slack's."""
    return f"{next(_ids)}.{int(time.time())}.{uuid.uuid4().hex}"


def new_event_id() -> str:
    return f"Ev{uuid.uuid4().hex[:10].upper()}"


def stale_timestamp() -> int:
    return int(time.time()) - STALE_AFTER_S - 60


# -- payloads (what Slack sends) ----------------------------------------------------------------


def slash_command_payload(
    text: str,
    *,
    command: str = "/tune",
    user_id: str = HUMAN_USER_ID,
    user_name: str = "alice",
    channel_id: str = CHANNEL_ID,
    channel_name: str = CHANNEL_NAME,
    response_url: str = "https://hooks.slack.com/commands/T0TUNEBOT/1/x",
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
) -> dict[str, str]:
    """A slash command's fields (form-encoded over HTTP, the payload over Socket Mode)."""
    return {
        "token": "verification-token-unused",
        "team_id": team_id,
        "team_domain": "tunebot-test",
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or new_trigger_id(),
    }


def _user(user_id: str) -> dict[str, str]:
    return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM_ID}


def find_action(message: dict[str, Any], action_id: str) -> tuple[str | None, dict[str, Any]]:
    """(block_id, element) of the interactive element `action_id` in a message's blocks."""
    for block in message.get("blocks") or []:
        elements = block.get("elements", []) if block.get("type") == "actions" else [block.get("accessory")]
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return block.get("block_id"), element
    raise LookupError(f"no element with action_id {action_id!r} in the message")


def block_actions_payload(
    message: dict[str, Any],
    action_id: str,
    *,
    channel_id: str = CHANNEL_ID,
    user_id: str = HUMAN_USER_ID,
    response_url: str = "https://hooks.slack.com/actions/T0TUNEBOT/1/x",
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A click on the button `action_id` of a posted message (as the stand-in stored it).

    Raises LookupError when the message has no such button: a test cannot click what is not there.
    """
    block_id, element = find_action(message, action_id)
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "type": element.get("type", "button"),
        "action_ts": f"{time.time():.6f}",
    }
    if "text" in element:
        action["text"] = element["text"]
    if "value" in element:
        action["value"] = element["value"]
    return {
        "type": "block_actions",
        "user": _user(user_id),
        "api_app_id": APP_ID,
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": channel_id,
            "is_ephemeral": False,
            **({"thread_ts": message["thread_ts"]} if message.get("thread_ts") else {}),
        },
        "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": TEAM_ID, "domain": "tunebot-test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": CHANNEL_NAME},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }


def _options(element: dict[str, Any]) -> list[dict[str, Any]]:
    options = list(element.get("options") or [])
    for group in element.get("option_groups") or []:
        options.extend(group.get("options") or [])
    return options


def fill_view_state(view: dict[str, Any], values: dict[str, str | list[str]] | None = None) -> dict[str, Any]:
    """The `view.state` Slack sends on submit, for a person who typed `values` into `view`.

    `values` is keyed by block_id (or action_id); inputs not named keep their initial value.
    A value for a select must be one of its options' values (else ValueError).
    """
    values = values or {}
    state: dict[str, dict[str, Any]] = {}
    for block in view.get("blocks", []):
        if block.get("type") != "input":
            continue
        element = block["element"]
        block_id, action_id = block.get("block_id"), element.get("action_id")
        key = block_id if block_id in values else action_id
        kind = element.get("type")
        given = values.get(key) if key in values else None
        entry: dict[str, Any] = {"type": kind}
        if kind in ("plain_text_input", "number_input", "email_text_input", "url_text_input"):
            entry["value"] = given if given is not None else element.get("initial_value")
            if entry["value"] == "":
                entry["value"] = None
        elif kind in ("static_select", "radio_buttons"):
            if given is None:
                entry["selected_option"] = element.get("initial_option")
            else:
                match = [o for o in _options(element) if o["value"] == given]
                if not match:
                    raise ValueError(f"{given!r} is not an option of {key}")
                entry["selected_option"] = match[0]
        elif kind == "checkboxes":
            if given is None:
                entry["selected_options"] = element.get("initial_options", [])
            else:
                wanted = [given] if isinstance(given, str) else list(given)
                entry["selected_options"] = [o for o in _options(element) if o["value"] in wanted]
        else:
            entry["value"] = given
        state.setdefault(block_id, {})[action_id] = entry
    unknown = (
        set(values)
        - {b.get("block_id") for b in view.get("blocks", [])}
        - {b.get("element", {}).get("action_id") for b in view.get("blocks", [])}
    )
    if unknown:
        raise ValueError(f"no input named {sorted(unknown)} in the view")
    return {"values": state}


def view_submission_payload(
    view: dict[str, Any],
    values: dict[str, str | list[str]] | None = None,
    *,
    user_id: str = HUMAN_USER_ID,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A submit of `view` (as opened, e.g. from `SlackStandin.views()`), with `values` typed in."""
    submitted = json.loads(json.dumps(view))
    submitted.setdefault("id", "V0SUBMIT")
    submitted.setdefault("private_metadata", "")
    submitted.setdefault("callback_id", "")
    submitted["state"] = fill_view_state(view, values)
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": "tunebot-test"},
        "user": _user(user_id),
        "api_app_id": APP_ID,
        "token": "verification-token-unused",
        "trigger_id": trigger_id or new_trigger_id(),
        "view": submitted,
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def message_event(
    text: str,
    *,
    channel: str = CHANNEL_ID,
    user: str = HUMAN_USER_ID,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel_type: str = "channel",
    bot_id: str | None = None,
    files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A `message` event (use `SlackStandin.add_message` to also make it exist in the stand-in)."""
    event: dict[str, Any] = {
        "type": "message",
        "text": text,
        "user": user,
        "ts": ts or f"{time.time():.6f}",
        "channel": channel,
        "channel_type": channel_type,
        "event_ts": ts or f"{time.time():.6f}",
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    if bot_id:
        event["bot_id"] = bot_id
    if files:
        event.update(subtype="file_share", files=files, upload=False)
    return event


def app_mention_event(
    text: str,
    *,
    channel: str = CHANNEL_ID,
    user: str = HUMAN_USER_ID,
    ts: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """An `app_mention` event; `text` should contain `<@U0TUNEBOT>` as Slack's does."""
    event = {
        "type": "app_mention",
        "text": text,
        "user": user,
        "ts": ts or f"{time.time():.6f}",
        "channel": channel,
        "event_ts": ts or f"{time.time():.6f}",
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def event_callback(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """The Events API envelope around one event."""
    return {
        "token": "verification-token-unused",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or new_event_id(),
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{uuid.uuid4().hex}",
    }


# -- signed HTTP requests -----------------------------------------------------------------------


@dataclass
class SignedRequest:
    body: bytes
    headers: dict[str, str]


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def signature(body: bytes, secret: str, timestamp: int | str) -> str:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def sign(
    body: bytes | str,
    content_type: str,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> SignedRequest:
    raw = body.encode() if isinstance(body, str) else body
    ts = int(time.time()) if timestamp is None else timestamp
    out = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": signature(raw, secret, ts),
    }
    out.update(headers or {})
    return SignedRequest(raw, out)


def signed_slash_command(
    text: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None, **payload: Any
) -> SignedRequest:
    """A signed slash command; `payload` goes to `slash_command_payload` (user_id, channel_id …)."""
    body = urlencode(slash_command_payload(text, **payload))
    return sign(body, "application/x-www-form-urlencoded", secret=secret, timestamp=timestamp)


def signed_interactive(
    payload: dict[str, Any], *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> SignedRequest:
    """A signed block_actions / view_submission: form body `payload=<json>`."""
    body = urlencode({"payload": json.dumps(payload)})
    return sign(body, "application/x-www-form-urlencoded", secret=secret, timestamp=timestamp)


def signed_event(
    payload: dict[str, Any],
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
) -> SignedRequest:
    """A signed Events API delivery; `retry_num` makes it a redelivery (X-Slack-Retry-Num)."""
    headers = {}
    if retry_num is not None:
        headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
    return sign(json.dumps(payload), "application/json", secret=secret, timestamp=timestamp, headers=headers)


def post(url: str, request: SignedRequest, *, timeout: float = 10.0) -> HttpResult:
    """POST a signed request; 4xx/5xx come back as a result, not an exception."""
    req = urllib.request.Request(url, data=request.body, headers=request.headers, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, dict(resp.headers), resp.read(), time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        return HttpResult(error.code, dict(error.headers), error.read(), time.perf_counter() - started)


# -- serving an app over HTTP in a test ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_asgi(asgi_app: Any, *, timeout: float = 10.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on 127.0.0.1; yields its base URL (no slash)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="asgi-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the ASGI server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


__all__ = [
    "BOT_ID",
    "CHANNEL_ID",
    "HUMAN_USER_ID",
    "SIGNING_SECRET",
    "HttpResult",
    "SignedRequest",
    "app_mention_event",
    "block_actions_payload",
    "event_callback",
    "fill_view_state",
    "find_action",
    "message_event",
    "new_event_id",
    "new_trigger_id",
    "post",
    "serve_asgi",
    "sign",
    "signature",
    "signed_event",
    "signed_interactive",
    "signed_slash_command",
    "slash_command_payload",
    "stale_timestamp",
    "view_submission_payload",
]
