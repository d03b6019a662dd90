"""A Socket Mode stand-in: a local websocket server that speaks Slack's Socket Mode protocol.

It greets each connection with `hello`, pushes envelopes (`slash_commands`, `events_api`,
`interactive`) with an `envelope_id`, and records the acks the app sends back (with their
`payload`, which is how a slash command's or a view submission's response travels). Tied to a
`SlackStandin`, its URL is what `apps.connections.open` answers, so the real
`slack_bolt.adapter.socket_mode.SocketModeHandler` connects to it unchanged:

    with SlackStandin() as slack, SocketModeStandin(slack) as sock:
        app = App(token=slack.bot_token, client=WebClient(token=slack.bot_token, base_url=slack.base_url))
        handler = SocketModeHandler(app, slack.app_token)
        handler.connect()
        sock.wait_connected()
        ack = sock.wait_for_ack(sock.push_slash_command("help"))
        handler.close()
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.slack_signing import event_callback, slash_command_payload
from tests.slack_standin import APP_ID, SlackStandin


@dataclass
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None
    at: float
    raw: dict[str, Any]


class SocketModeStandin:
    """The websocket server; a context manager that starts and stops it."""

    def __init__(self, web: SlackStandin | None = None, *, app_id: str = APP_ID) -> None:
        self.web = web
        self.app_id = app_id
        self._cond = threading.Condition()
        self._connections: list[ServerConnection] = []
        self._connected_total = 0
        self._acks: dict[str, Ack] = {}
        self._received: list[dict[str, Any]] = []
        self._pushed: dict[str, float] = {}
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SocketModeStandin:
        self._server = serve(self._handle, "127.0.0.1", 0, ping_interval=None)
        self._thread = threading.Thread(target=self._server.serve_forever, name="socket-standin", daemon=True)
        self._thread.start()
        if self.web is not None:
            self.web.socket_url = self.url
        return self

    def stop(self) -> None:
        if self.web is not None and self.web.socket_url == self.url:
            self.web.socket_url = None
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SocketModeStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "stand-in not started"
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}/link/"

    # -- the protocol ---------------------------------------------------------------------------

    def _handle(self, connection: ServerConnection) -> None:
        with self._cond:
            self._connections.append(connection)
            self._connected_total += 1
            number = self._connected_total
            self._cond.notify_all()
        try:
            connection.send(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": number,
                        "debug_info": {
                            "host": "tunebot-socket-standin",
                            "approximate_connection_time": 18060,
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            for message in connection:
                try:
                    data = json.loads(message)
                except ValueError:
                    continue
                with self._cond:
                    self._received.append(data)
                    envelope_id = data.get("envelope_id")
                    if envelope_id:
                        self._acks[envelope_id] = Ack(envelope_id, data.get("payload"), time.time(), data)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                if connection in self._connections:
                    self._connections.remove(connection)
                self._cond.notify_all()

    def _wait(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(left, 0.1))

    @property
    def connection_count(self) -> int:
        with self._cond:
            return len(self._connections)

    @property
    def connected_total(self) -> int:
        """Connections ever accepted (a reconnect makes it grow)."""
        with self._cond:
            return self._connected_total

    def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until `count` connections are open (the client got `hello`)."""
        self._wait(lambda: len(self._connections) >= count, timeout, f"{count} socket connection(s)")

    def push(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        envelope_id: str | None = None,
    ) -> str:
        """Send an envelope on the newest connection; returns its envelope_id."""
        envelope_id = envelope_id or str(uuid.uuid4())
        if accepts_response_payload is None:
            accepts_response_payload = envelope_type == "slash_commands" or (
                envelope_type == "interactive"
                and payload.get("type") in ("view_submission", "block_suggestion")
            )
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": envelope_type,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope.update(retry_attempt=retry_attempt, retry_reason=retry_reason)
        with self._cond:
            if not self._connections:
                raise AssertionError("no Socket Mode client is connected")
            connection = self._connections[-1]
            self._pushed[envelope_id] = time.time()
        connection.send(json.dumps(envelope))
        return envelope_id

    def push_slash_command(self, text: str, **payload: Any) -> str:
        """Push a slash command; `payload` goes to `slash_command_payload` (user_id, channel_id …)."""
        return self.push("slash_commands", slash_command_payload(text, **payload))

    def push_event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry_attempt: int = 0
    ) -> str:
        """Push one event wrapped in its Events API envelope (same event_id = a redelivery)."""
        reason = "timeout" if retry_attempt else ""
        return self.push(
            "events_api",
            event_callback(event, event_id=event_id),
            retry_attempt=retry_attempt,
            retry_reason=reason,
        )

    def push_interactive(self, payload: dict[str, Any]) -> str:
        """Push a block_actions / view_submission payload."""
        return self.push("interactive", payload)

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the clients to reconnect, as Slack does every few hours."""
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.send(
                json.dumps(
                    {"type": "disconnect", "reason": reason, "debug_info": {"host": "tunebot-socket-standin"}}
                )
            )

    def drop_connections(self) -> None:
        """Close every connection from the server's side (a network blip; the client reconnects)."""
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        self._wait(lambda: not self._connections, 5.0, "the connections to close")

    def close_client(self, handler: Any) -> None:
        """Stop a SocketModeHandler (or builtin SocketModeClient) connected here, quickly.

        The builtin client's reader blocks up to 3 s in recv() after its own close(); closing the
        connection from this side first wakes it, so a test pays about 1 s instead.
        """
        client = getattr(handler, "client", handler)
        client.auto_reconnect_enabled = False
        client.closed = True
        self.drop_connections()
        handler.close()

    def acks(self) -> list[Ack]:
        with self._cond:
            return sorted(self._acks.values(), key=lambda a: a.at)

    def ack(self, envelope_id: str) -> Ack | None:
        with self._cond:
            return self._acks.get(envelope_id)

    def ack_delay(self, envelope_id: str) -> float | None:
        """Seconds from push to ack (Slack wants it within 3)."""
        with self._cond:
            ack, pushed = self._acks.get(envelope_id), self._pushed.get(envelope_id)
        return None if ack is None or pushed is None else ack.at - pushed

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        return self._wait(lambda: self._acks.get(envelope_id), timeout, f"the ack of {envelope_id}")
