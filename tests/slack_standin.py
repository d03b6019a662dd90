"""A Slack Web API stand-in on 127.0.0.1 for tests: no Slack, real HTTP.

Point a real client at it: `WebClient(token=standin.bot_token, base_url=standin.base_url)`. It
records every call (method, decoded params, headers, time, what it answered), keeps the messages
it was asked to post per channel and thread, stores uploaded files, serves `url_private` downloads
behind the bot token, and can be told to fail the next calls (429 with Retry-After, 5xx, or any
Slack error) so retry handlers are exercised for real.

    with SlackStandin() as slack:
        client = WebClient(token=slack.bot_token, base_url=slack.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        slack.wait_for_call("chat.postMessage")

Pseudo-methods recorded beside the API methods: "upload" (the POST of a file's bytes to its
upload_url), "download" (a GET of url_private), "response_url" (a POST to a slash command's or
button's response_url from `new_response_url()`). `fail_next` accepts them too.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import mimetypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

T = TypeVar("T")

BOT_TOKEN = "xoxb-tunebot-test-token"
APP_TOKEN = "xapp-1-tunebot-test-token"
TEAM_ID = "T0TUNEBOT"
BOT_USER_ID = "U0TUNEBOT"
BOT_ID = "B0TUNEBOT"
APP_ID = "A0TUNEBOT"

# Params Slack takes as JSON inside a form field; decoded so tests see structures either way.
_JSON_FIELDS = ("blocks", "attachments", "view", "files", "metadata", "channels")

# Block Kit limits the stand-in enforces (Slack answers invalid_blocks / invalid_arguments).
MESSAGE_MAX_BLOCKS = 50
VIEW_MAX_BLOCKS = 100
MESSAGE_MAX_TEXT = 40_000


@dataclass
class Call:
    """One request the stand-in received."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    body: bytes
    token: str | None
    at: float
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok", True))


@dataclass
class Upload:
    """A file uploaded through files_upload_v2 and completed."""

    file_id: str
    filename: str
    title: str
    content: bytes
    channel_id: str | None
    thread_ts: str | None
    initial_comment: str | None
    at: float


@dataclass
class _Fault:
    method: str
    status: int
    retry_after: int | None
    error: str | None
    delay: float
    remaining: int


def block_kit_problems(blocks: list[dict[str, Any]], *, max_blocks: int = MESSAGE_MAX_BLOCKS) -> list[str]:
    """What Slack would reject in these blocks (the published Block Kit limits); [] when fine."""
    problems: list[str] = []
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    if len(blocks) > max_blocks:
        problems.append(f"{len(blocks)} blocks > {max_blocks}")
    block_ids: set[str] = set()

    def text_len(obj: Any, limit: int, where: str) -> None:
        if not isinstance(obj, dict) or "text" not in obj:
            problems.append(f"{where}: missing text object")
            return
        if obj.get("type") not in ("plain_text", "mrkdwn"):
            problems.append(f"{where}: text type {obj.get('type')!r}")
        if not isinstance(obj["text"], str) or not obj["text"]:
            problems.append(f"{where}: empty text")
        elif len(obj["text"]) > limit:
            problems.append(f"{where}: text {len(obj['text'])} > {limit}")

    def element(el: dict[str, Any], where: str) -> None:
        kind = el.get("type")
        if "action_id" in el and len(el["action_id"]) > 255:
            problems.append(f"{where}: action_id too long")
        if kind == "button":
            text_len(el.get("text"), 75, f"{where} button")
            if len(str(el.get("value", ""))) > 2000:
                problems.append(f"{where}: button value > 2000")
            if "url" in el and len(el["url"]) > 3000:
                problems.append(f"{where}: button url > 3000")
        elif kind in ("static_select", "radio_buttons", "checkboxes"):
            options = el.get("options") or [
                o for g in el.get("option_groups", []) for o in g.get("options", [])
            ]
            if not options or len(options) > 100:
                problems.append(f"{where}: {len(options)} options")
            for option in options:
                text_len(option.get("text"), 75, f"{where} option")
                if len(str(option.get("value", ""))) > 150:
                    problems.append(f"{where}: option value > 150")
        elif kind == "plain_text_input":
            if "initial_value" in el and len(el["initial_value"]) > el.get("max_length", 3000):
                problems.append(f"{where}: initial_value longer than max_length")
            if "placeholder" in el:
                text_len(el["placeholder"], 150, f"{where} placeholder")

    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        kind = block.get("type")
        block_id = block.get("block_id")
        if block_id is not None:
            if block_id in block_ids:
                problems.append(f"{where}: duplicate block_id {block_id!r}")
            if len(block_id) > 255:
                problems.append(f"{where}: block_id too long")
            block_ids.add(block_id)
        if kind == "header":
            text_len(block.get("text"), 150, where)
            if block.get("text", {}).get("type") != "plain_text":
                problems.append(f"{where}: header text must be plain_text")
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"{where}: section needs text or fields")
            if "text" in block:
                text_len(block["text"], 3000, where)
            fields = block.get("fields", [])
            if len(fields) > 10:
                problems.append(f"{where}: {len(fields)} fields > 10")
            for j, f in enumerate(fields):
                text_len(f, 2000, f"{where}.fields[{j}]")
            if "accessory" in block:
                element(block["accessory"], f"{where}.accessory")
        elif kind == "context":
            elements = block.get("elements", [])
            if not elements or len(elements) > 10:
                problems.append(f"{where}: {len(elements)} context elements")
            for j, el in enumerate(elements):
                if el.get("type") in ("plain_text", "mrkdwn"):
                    text_len(el, 3000, f"{where}.elements[{j}]")
        elif kind == "actions":
            elements = block.get("elements", [])
            if not elements or len(elements) > 25:
                problems.append(f"{where}: {len(elements)} action elements")
            seen: set[str] = set()
            for j, el in enumerate(elements):
                element(el, f"{where}.elements[{j}]")
                action_id = el.get("action_id")
                if action_id in seen:
                    problems.append(f"{where}: duplicate action_id {action_id!r}")
                if action_id:
                    seen.add(action_id)
        elif kind == "input":
            text_len(block.get("label"), 2000, f"{where}.label")
            if "hint" in block:
                text_len(block["hint"], 2000, f"{where}.hint")
            if not isinstance(block.get("element"), dict):
                problems.append(f"{where}: input without element")
            else:
                element(block["element"], f"{where}.element")
        elif kind in ("divider", "image", "rich_text", "file", "video", "table"):
            pass
        else:
            problems.append(f"{where}: unknown block type {kind!r}")
    return problems


def view_problems(view: dict[str, Any]) -> list[str]:
    """What Slack would reject in a modal view."""
    problems: list[str] = []
    if not isinstance(view, dict):
        return ["view must be an object"]
    if view.get("type") != "modal":
        problems.append(f"view type {view.get('type')!r}")
    for key, limit in (("title", 24), ("submit", 24), ("close", 24)):
        if key in view:
            text = view[key].get("text", "") if isinstance(view[key], dict) else ""
            if not text or len(text) > limit:
                problems.append(f"{key} text must be 1..{limit} chars")
    if "title" not in view:
        problems.append("title missing")
    if len(view.get("private_metadata", "")) > 3000:
        problems.append("private_metadata > 3000")
    if len(view.get("callback_id", "")) > 255:
        problems.append("callback_id > 255")
    blocks = view.get("blocks", [])
    problems.extend(block_kit_problems(blocks, max_blocks=VIEW_MAX_BLOCKS))
    if any(b.get("type") == "input" for b in blocks) and "submit" not in view:
        problems.append("a view with inputs needs submit")
    return problems


def _decode_json_fields(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key in _JSON_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                pass
    return out


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            params[name] = payload
        else:
            params[name] = payload.decode("utf-8", "replace")
    return params


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.standin._serve(self)

    def do_GET(self) -> None:  # noqa: N802
        self.server.standin._serve(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: SlackStandin


class SlackStandin:
    """The stand-in server; a context manager that starts and stops it."""

    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        team_id: str = TEAM_ID,
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
        app_id: str = APP_ID,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        # Set by SocketModeStandin: what apps.connections.open answers.
        self.socket_url: str | None = None
        self._cond = threading.Condition()
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: dict[str, dict[str, Any]] = {}
        self._files: dict[str, dict[str, Any]] = {}
        self._file_bytes: dict[str, bytes] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._uploads: list[Upload] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._last_ts = 0.0
        self._counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SlackStandin:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SlackStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def base_url(self) -> str:
        """What `WebClient(base_url=...)` takes (ends with a slash, like Slack's)."""
        return f"{self.root_url}api/"

    # -- what tests read ------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        """Every call received so far (or those of one method), oldest first."""
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def methods(self) -> list[str]:
        return [c.method for c in self.calls()]

    def uploads(self) -> list[Upload]:
        with self._cond:
            return list(self._uploads)

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Current messages (after edits and deletes), root and replies, ordered by ts."""
        with self._cond:
            channels = [channel] if channel else list(self._messages)
            found = [dict(m) for c in channels for m in self._messages.get(c, [])]
        return sorted(found, key=lambda m: float(m["ts"]))

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        with self._cond:
            for m in self._messages.get(channel, []):
                if m["ts"] == ts:
                    return dict(m)
        return None

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The replies in a thread (not its root), oldest first."""
        return [m for m in self.messages(channel) if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts]

    def ephemerals(self, user: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [dict(e) for e in self._ephemerals if user is None or e["user"] == user]

    def views(self) -> list[dict[str, Any]]:
        """Views opened (and their latest update), in opening order."""
        with self._cond:
            return [json.loads(json.dumps(v)) for v in self._views.values()]

    def responses(self) -> list[dict[str, Any]]:
        """Bodies POSTed to response_urls made by `new_response_url()`."""
        return [c.params for c in self.calls("response_url")]

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
        """Wait until predicate() is truthy (re-checked at every call received); return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    recent = ", ".join(c.method for c in self._calls[-20:])
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; last calls: {recent}"
                    )
                self._cond.wait(min(left, 0.1))

    def wait_for_call(
        self,
        method: str,
        where: Callable[[Call], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
    ) -> Call:
        """Wait until `count` calls of `method` (matching `where`) arrived; return the count-th one."""

        def matching() -> list[Call]:
            found = [c for c in self._calls if c.method == method and (where is None or where(c))]
            return found if len(found) >= count else []

        return self.wait_for(matching, timeout, what=f"{count} x {method}")[count - 1]

    def reset_calls(self) -> None:
        with self._cond:
            self._calls.clear()

    # -- what tests arrange ---------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: int | None = 1,
        error: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls of `method` fail.

        status 429 answers `ratelimited` with a Retry-After header; 5xx answers a server error;
        status 200 with `error` answers `{"ok": false, "error": error}` (e.g. channel_not_found).
        """
        with self._cond:
            self._faults.append(
                _Fault(method, status, retry_after if status == 429 else None, error, 0.0, times)
            )

    def delay_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next `times` calls of `method` only after `seconds` (a slow Slack)."""
        with self._cond:
            self._faults.append(_Fault(method, 0, None, None, seconds, times))

    def add_user(self, user_id: str, name: str | None = None, *, is_bot: bool = False, **extra: Any) -> dict:
        user = self._make_user(user_id, name, is_bot)
        user.update(extra)
        with self._cond:
            self._users[user_id] = user
        return user

    def add_channel(
        self, channel_id: str, name: str, *, is_private: bool = False, is_member: bool = True
    ) -> dict[str, Any]:
        channel = self._make_channel(channel_id, name, is_private, is_member)
        with self._cond:
            self._channels[channel_id] = channel
        return channel

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U0HUMAN01",
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
        bot: bool = False,
    ) -> dict[str, Any]:
        """Put a message in the channel as if a person (or the bot) wrote it; returns it with its ts.

        The returned dict is shaped like a `message` event's `event` (add channel_type yourself).
        """
        message: dict[str, Any] = {"type": "message", "text": text, "user": user, "channel": channel}
        if bot:
            message.update(user=self.bot_user_id, bot_id=self.bot_id, app_id=self.app_id)
        if files:
            message.update(subtype="file_share", files=files, upload=False)
        with self._cond:
            message["ts"] = self._next_ts()
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._store_message(channel, message)
        return dict(message)

    def add_file(
        self,
        filename: str,
        content: bytes,
        *,
        user: str = "U0HUMAN01",
        title: str | None = None,
        mimetype: str | None = None,
    ) -> dict[str, Any]:
        """A file a person uploaded: files.info knows it and url_private serves its bytes."""
        with self._cond:
            file_id = self._next_id("F")
            info = self._file_object(file_id, filename, title or filename, len(content), user, mimetype)
            self._files[file_id] = info
            self._file_bytes[file_id] = content
        return dict(info)

    def share_file(
        self,
        channel: str,
        filename: str,
        content: bytes,
        *,
        user: str = "U0HUMAN01",
        text: str = "",
        thread_ts: str | None = None,
        mimetype: str | None = None,
    ) -> dict[str, Any]:
        """A person shares a file in a channel (or thread): returns the `message` event's `event`."""
        info = self.add_file(filename, content, user=user, mimetype=mimetype)
        with self._cond:
            self._files[info["id"]]["channels"] = [channel]
        event = self.add_message(channel, text, user=user, thread_ts=thread_ts, files=[info])
        event["channel_type"] = "group" if channel.startswith("G") else "channel"
        return event

    def new_response_url(self) -> str:
        """A response_url on this server for a slash command or button payload."""
        with self._cond:
            return f"{self.root_url}response/{self._next_id('R')}"

    # -- internals ------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        now = max(time.time(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}0{self._counter:08d}"

    def _make_user(self, user_id: str, name: str | None, is_bot: bool) -> dict[str, Any]:
        name = name or f"user-{user_id.lower()}"
        return {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": name.title(),
            "deleted": False,
            "is_bot": is_bot,
            "is_admin": False,
            "tz": "Asia/Shanghai",
            "tz_offset": 28800,
            "profile": {"display_name": name, "real_name": name.title()},
        }

    def _make_channel(self, channel_id: str, name: str, is_private: bool, is_member: bool) -> dict[str, Any]:
        return {
            "id": channel_id,
            "name": name,
            "is_channel": not is_private,
            "is_group": False,
            "is_im": channel_id.startswith("D"),
            "is_private": is_private,
            "is_archived": False,
            "is_member": is_member,
            "created": 1700000000,
        }

    def _file_object(
        self, file_id: str, filename: str, title: str, size: int, user: str, mimetype: str | None
    ) -> dict[str, Any]:
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        mime = mimetype or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        private = f"{self.root_url}files-pri/{self.team_id}-{file_id}/{quote(filename)}"
        return {
            "id": file_id,
            "created": int(time.time()),
            "timestamp": int(time.time()),
            "name": filename,
            "title": title,
            "mimetype": mime,
            "filetype": ext or "binary",
            "pretty_type": ext.upper() or "Binary",
            "user": user,
            "size": size,
            "mode": "hosted",
            "is_external": False,
            "is_public": True,
            "url_private": private,
            "url_private_download": private + "?download=1",
            "permalink": f"https://tunebot-test.slack.com/files/{user}/{file_id}/{quote(filename)}",
            "channels": [],
            "groups": [],
            "ims": [],
        }

    def _store_message(self, channel: str, message: dict[str, Any]) -> None:
        self._messages.setdefault(channel, []).append(message)
        thread_ts = message.get("thread_ts")
        if thread_ts and thread_ts != message["ts"]:
            for root in self._messages[channel]:
                if root["ts"] == thread_ts:
                    root["thread_ts"] = thread_ts
                    root["reply_count"] = root.get("reply_count", 0) + 1
                    root["latest_reply"] = message["ts"]
                    users = root.setdefault("reply_users", [])
                    if message.get("user") not in users:
                        users.append(message.get("user"))

    def _find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        for m in self._messages.get(channel, []):
            if m["ts"] == ts:
                return m
        return None

    def _take_fault(self, method: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method and fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        split = urlsplit(req.path)
        path = split.path
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in req.headers.items()}
        params: dict[str, Any] = dict(parse_qsl(split.query, keep_blank_values=True))
        content_type = headers.get("content-type", "")
        if body and content_type.startswith("application/json"):
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = {}
            if isinstance(decoded, dict):
                params.update(decoded)
        elif body and content_type.startswith("multipart/form-data"):
            params.update(_parse_multipart(content_type, body))
        elif (
            body and content_type.startswith("application/x-www-form-urlencoded") and path.startswith("/api/")
        ):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        params = _decode_json_fields(params)

        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else params.pop("token", None)

        if path.startswith("/api/"):
            method = path[len("/api/") :]
        elif path.startswith("/upload/"):
            method = "upload"
        elif path.startswith("/files-pri/"):
            method = "download"
        elif path.startswith("/response/"):
            method = "response_url"
        elif path == "/signin":
            self._reply(req, 200, b"<html><body>Sign in to Slack</body></html>", "text/html; charset=utf-8")
            return
        else:
            self._reply(req, 404, b"not found", "text/plain")
            return

        call = Call(method=method, params=params, headers=headers, body=body, token=token, at=time.time())
        with self._cond:
            fault = self._take_fault(method)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
            fault = None

        extra_headers: dict[str, str] = {}
        raw: bytes | None = None
        content = "application/json; charset=utf-8"
        if fault is not None:
            call.status = fault.status
            if fault.status == 429:
                call.response = {"ok": False, "error": "ratelimited"}
                extra_headers["Retry-After"] = str(fault.retry_after or 0)
            elif fault.status >= 500:
                call.response = {"ok": False, "error": fault.error or "internal_error"}
            else:
                call.response = {"ok": False, "error": fault.error or "fatal_error"}
        elif method == "upload":
            call.status, raw, content = self._upload(path, body)
            call.response = {"ok": call.status == 200}
        elif method == "download":
            call.status, raw, content, extra_headers = self._download(path, token)
            call.response = {"ok": call.status == 200}
        elif method == "response_url":
            call.response = {"ok": True}
            raw, content = b"ok", "text/plain"
        else:
            call.response = self._api(method, params, token)
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()
        if raw is None:
            raw = json.dumps(call.response).encode()
        self._reply(req, call.status, raw, content, extra_headers)

    def _reply(
        self,
        req: BaseHTTPRequestHandler,
        status: int,
        raw: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(raw)

    def _upload(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        file_id = path.rsplit("/", 1)[-1]
        with self._cond:
            pending = self._pending.get(file_id)
            if pending is None:
                return 404, b"unknown upload", "text/plain"
            pending["content"] = body
        return 200, f"OK - {len(body)}".encode(), "text/plain"

    def _download(self, path: str, token: str | None) -> tuple[int, bytes, str, dict[str, str]]:
        # Like Slack: without the bot token, url_private redirects to a sign-in page (HTML, 200).
        if token != self.bot_token:
            return 302, b"", "text/html", {"Location": f"{self.root_url}signin"}
        parts = path.split("/")
        file_id = parts[2].split("-", 1)[-1] if len(parts) > 2 else ""
        with self._cond:
            info = self._files.get(file_id)
            content = self._file_bytes.get(file_id)
        if info is None or content is None:
            return 404, b"file not found", "text/plain", {}
        return 200, content, info["mimetype"], {}

    # -- the API methods ------------------------------------------------------------------------

    def _api(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return {"ok": False, "error": "invalid_auth"}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        with self._cond:
            result = handler(params)
        if "ok" not in result:
            result = {"ok": True, **result}
        return result

    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://tunebot-test.slack.com/",
            "team": "tunebot test",
            "user": "tunebot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self.socket_url:
            return {"ok": False, "error": "socket_mode_not_enabled"}
        return {"url": f"{self.socket_url}?ticket={self._next_id('K')}"}

    def _message_problem(self, p: dict[str, Any]) -> str | None:
        if not p.get("channel"):
            return "channel_not_found"
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            return "no_text"
        if len(str(p.get("text") or "")) > MESSAGE_MAX_TEXT:
            return "msg_too_long"
        if p.get("blocks") is not None and block_kit_problems(p["blocks"]):
            return "invalid_blocks"
        return None

    def _invalid(self, error: str, p: dict[str, Any], key: str = "blocks") -> dict[str, Any]:
        messages = (
            block_kit_problems(p.get(key) or []) if key == "blocks" else view_problems(p.get(key) or {})
        )
        return {"ok": False, "error": error, "response_metadata": {"messages": messages}}

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        problem = self._message_problem(p)
        if problem:
            return self._invalid(problem, p)
        channel = p["channel"]
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": p.get("text") or "",
            "channel": channel,
            "ts": self._next_ts(),
        }
        for key in ("blocks", "attachments", "metadata"):
            if p.get(key) is not None:
                message[key] = p[key]
        if p.get("thread_ts"):
            message["thread_ts"] = p["thread_ts"]
        self._store_message(channel, message)
        return {"channel": channel, "ts": message["ts"], "message": dict(message)}

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        message = self._find_message(p.get("channel", ""), p.get("ts", ""))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.get("bot_id") != self.bot_id:
            return {"ok": False, "error": "cant_update_message"}
        if p.get("blocks") is not None and block_kit_problems(p["blocks"]):
            return self._invalid("invalid_blocks", p)
        if len(str(p.get("text") or "")) > MESSAGE_MAX_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        if "text" in p:
            message["text"] = p["text"]
        if p.get("blocks") is not None:
            message["blocks"] = p["blocks"]
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {
            "channel": p["channel"],
            "ts": message["ts"],
            "text": message["text"],
            "message": dict(message),
        }

    def _m_chat_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = p.get("channel", ""), p.get("ts", "")
        message = self._find_message(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self._messages[channel].remove(message)
        return {"channel": channel, "ts": ts}

    def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        problem = self._message_problem(p)
        if problem:
            return self._invalid(problem, p)
        ephemeral = {
            "channel": p["channel"],
            "user": p["user"],
            "text": p.get("text") or "",
            "blocks": p.get("blocks"),
            "thread_ts": p.get("thread_ts"),
            "message_ts": self._next_ts(),
        }
        self._ephemerals.append(ephemeral)
        return {"message_ts": ephemeral["message_ts"]}

    def _stored_view(self, view: dict[str, Any], view_id: str | None = None) -> dict[str, Any]:
        stored = json.loads(json.dumps(view))
        view_id = view_id or self._next_id("V")
        stored.update(
            id=view_id,
            team_id=self.team_id,
            app_id=self.app_id,
            bot_id=self.bot_id,
            hash=f"{time.time():.6f}.{self._counter}",
            state={"values": {}},
            root_view_id=view_id,
        )
        stored.setdefault("private_metadata", "")
        stored.setdefault("callback_id", "")
        self._views[view_id] = stored
        return json.loads(json.dumps(stored))

    def _m_views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("trigger_id"):
            return {"ok": False, "error": "invalid_arguments"}
        if view_problems(p.get("view") or {}):
            return self._invalid("invalid_arguments", p, key="view")
        return {"view": self._stored_view(p["view"])}

    _m_views_push = _m_views_open

    def _m_views_update(self, p: dict[str, Any]) -> dict[str, Any]:
        view_id = p.get("view_id")
        if not view_id and p.get("external_id"):
            view_id = next(
                (k for k, v in self._views.items() if v.get("external_id") == p["external_id"]), None
            )
        if not view_id or view_id not in self._views:
            return {"ok": False, "error": "not_found"}
        if p.get("hash") and p["hash"] != self._views[view_id]["hash"]:
            return {"ok": False, "error": "hash_conflict"}
        if view_problems(p.get("view") or {}):
            return self._invalid("invalid_arguments", p, key="view")
        return {"view": self._stored_view(p["view"], view_id)}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("filename") or not str(p.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = self._next_id("F")
        self._pending[file_id] = {"filename": p["filename"], "length": int(p["length"]), "content": None}
        return {"upload_url": f"{self.root_url}upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        files = p.get("files")
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        channel = p.get("channel_id") or (p.get("channels") or "").split(",")[0] or None
        thread_ts = p.get("thread_ts") or None
        done: list[dict[str, Any]] = []
        for item in files:
            pending = self._pending.get(item.get("id", ""))
            if pending is None:
                return {"ok": False, "error": "file_not_found"}
            if pending["content"] is None:
                return {"ok": False, "error": "upload_not_complete"}
        for item in files:
            file_id = item["id"]
            pending = self._pending.pop(file_id)
            info = self._file_object(
                file_id,
                pending["filename"],
                item.get("title") or pending["filename"],
                len(pending["content"]),
                self.bot_user_id,
                None,
            )
            if channel:
                info["channels"] = [channel]
                info["shares"] = {"public": {channel: [{"ts": "", "thread_ts": thread_ts}]}}
            self._files[file_id] = info
            self._file_bytes[file_id] = pending["content"]
            self._uploads.append(
                Upload(
                    file_id,
                    pending["filename"],
                    info["title"],
                    pending["content"],
                    channel,
                    thread_ts,
                    p.get("initial_comment"),
                    time.time(),
                )
            )
            done.append(dict(info))
        if channel:
            message: dict[str, Any] = {
                "type": "message",
                "subtype": "file_share",
                "user": self.bot_user_id,
                "bot_id": self.bot_id,
                "text": p.get("initial_comment") or "",
                "files": done,
                "channel": channel,
                "ts": self._next_ts(),
            }
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._store_message(channel, message)
        return {"files": [{"id": f["id"], "title": f["title"]} for f in done]}

    def _m_files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        info = self._files.get(p.get("file", ""))
        if info is None:
            return {"ok": False, "error": "file_not_found"}
        return {"file": dict(info), "comments": [], "response_metadata": {"next_cursor": ""}}

    def _m_conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        channel_id = p.get("channel", "")
        channel = self._channels.get(channel_id)
        if channel is None:
            if channel_id[:1] not in ("C", "G", "D"):
                return {"ok": False, "error": "channel_not_found"}
            channel = self._make_channel(channel_id, f"chan-{channel_id.lower()}", channel_id[0] == "G", True)
        return {"channel": dict(channel)}

    def _paged(self, items: list[dict[str, Any]], p: dict[str, Any], key: str) -> dict[str, Any]:
        limit = int(p.get("limit") or 1000)
        start = int(p.get("cursor") or 0)
        page = items[start : start + limit]
        next_cursor = str(start + limit) if start + limit < len(items) else ""
        return {key: page, "has_more": bool(next_cursor), "response_metadata": {"next_cursor": next_cursor}}

    def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = p.get("channel", ""), p.get("ts", "")
        if not channel or not ts:
            return {"ok": False, "error": "invalid_arguments"}
        found = [
            dict(m) for m in self._messages.get(channel, []) if m["ts"] == ts or m.get("thread_ts") == ts
        ]
        if not found:
            return {"ok": False, "error": "thread_not_found"}
        found.sort(key=lambda m: float(m["ts"]))
        return self._paged(found, p, "messages")

    def _m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        found = [
            dict(m)
            for m in self._messages.get(p.get("channel", ""), [])
            if not m.get("thread_ts") or m["thread_ts"] == m["ts"]
        ]
        found.sort(key=lambda m: float(m["ts"]), reverse=True)
        return self._paged(found, p, "messages")

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user_id = p.get("user", "")
        user = self._users.get(user_id)
        if user is None:
            if user_id == self.bot_user_id:
                user = self._make_user(user_id, "tunebot", True)
            elif user_id[:1] in ("U", "W"):
                user = self._make_user(user_id, None, False)
            else:
                return {"ok": False, "error": "user_not_found"}
        return {"user": dict(user)}
