"""`tunebot serve`: the engine, the notifier and the Slack app in one process.

Socket Mode by default (no public URL: the app dials out to Slack); `--http` serves
`/slack/events` through uvicorn instead. Bolt's Starlette adapter calls `app.dispatch` on the
event loop, so one slow request would hold up every other; here dispatch runs in a thread pool.
SIGINT and SIGTERM stop the transport first (no new work), then the notifier, the outbox and the
runner (running jobs keep running and are re-attached next start).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

import anyio
from slack_bolt import App
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_bolt.error import BoltError
from slack_sdk.errors import SlackApiError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from runners.errors import UserError
from runners.settings import Settings

from . import http_guard
from .schedules.scheduler import Scheduler, ScheduleSettings
from .settings import BotSettings

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
# Requests dispatched at once; Bolt acks on the dispatching thread, so this bounds acks in flight.
DISPATCH_THREADS = 64


def asgi_app(app: App, *, threads: int = DISPATCH_THREADS, signing_secret: str | None = None) -> Starlette:
    """`/slack/events` (commands, events, interactivity) and `/healthz`, dispatching off the event loop.

    Size, content type and signature are checked (bot/http_guard.py) before the body is parsed;
    a forged or malformed request gets 400/401/413 and one log line.
    """
    limiter = anyio.CapacityLimiter(threads)
    secret = signing_secret or getattr(app, "_signing_secret", None)

    def refuse(request: Request, refusal: http_guard.Refusal) -> Response:
        client = request.client.host if request.client else "?"
        log.warning("refused a request to %s from %s: %s (%d)", EVENTS_PATH, client, refusal.reason,
                    refusal.status)
        return PlainTextResponse(http_guard.STATUS_TEXT[refusal.status], status_code=refusal.status)

    def verify_and_dispatch(request: Request, body: bytes) -> Response | http_guard.Refusal:
        # In a worker thread: the HMAC over the body, Bolt's parsing and the listeners.
        if secret and not http_guard.signature_ok(secret, request.headers, body):
            return http_guard.Refusal(401, "wrong signature")
        try:
            bolt_request = to_bolt_request(request, body)
        except Exception:  # Bolt's parsing assumes Slack's shapes (`[]` raises AttributeError…)
            return http_guard.Refusal(400, "unreadable body")
        if not isinstance(bolt_request.body, dict) or not all(
            isinstance(bolt_request.body.get(k, {}), dict) for k in ("event", "view", "container")
        ):
            return http_guard.Refusal(400, "not a Slack payload")  # Bolt expects objects here
        return to_starlette_response(app.dispatch(bolt_request))

    async def events(request: Request) -> Response:
        refusal = http_guard.check_head(request.headers)
        if refusal is not None:
            return refuse(request, refusal)
        try:
            body = await http_guard.read_capped(request.stream())
        except http_guard.BodyTooLarge:
            return refuse(request, http_guard.Refusal(413, "body too large"))
        except ClientDisconnect:  # the sender left mid-body: nobody to answer, nothing to log twice
            return refuse(request, http_guard.Refusal(400, "client left before sending the body"))
        result = await anyio.to_thread.run_sync(verify_and_dispatch, request, body, limiter=limiter)
        return refuse(request, result) if isinstance(result, http_guard.Refusal) else result

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route(EVENTS_PATH, events, methods=["POST"]), Route("/healthz", health)])


class HttpServer:
    """uvicorn serving `asgi_app(app)` in a thread (so signals stay with the main thread)."""

    def __init__(self, app: App, host: str, port: int):
        import uvicorn

        config = uvicorn.Config(asgi_app(app), host=host, port=port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="tunebot-http", daemon=True)

    def start(self, timeout: float = 15.0) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise UserError("The HTTP server did not start (is the port in use?).", field="--port",
                                fix="tunebot serve --http --port 3001")
            time.sleep(0.05)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


def _token_refused(error: Exception) -> UserError:
    reason = str(error)
    if isinstance(error, SlackApiError) and error.response is not None:
        reason = str(error.response.get("error"))
    return UserError(f"Slack refused SLACK_BOT_TOKEN ({reason}).", field="SLACK_BOT_TOKEN",
                     fix="copy the Bot User OAuth Token (xoxb-…) again from the app's Install App page, "
                         "and check the app is installed in the workspace")


def _preflight(settings: Settings) -> None:
    """`tunebot doctor`'s fast checks: warnings are printed, a problem stops the start with its fix."""
    from bot.cli.doctor import preflight

    for check in preflight(settings):
        line = f"tunebot: {check.name}: {check.detail}" + (f"\n  fix: {check.fix}" if check.fix else "")
        if check.failed:
            raise UserError(f"{check.name}: {check.detail}", field=check.name, fix=check.fix)
        print(line, file=sys.stderr)


def _start_notifier(runtime: Any, client: Any, bot_settings: BotSettings,
                    schedule_settings: ScheduleSettings) -> tuple[Any, Any]:
    """The outbox, and the notifier that tells each job's story through it (progress posts too)."""
    from bot.outbox.delivery import Delivery

    from .story.notifier import Notifier

    delivery = Delivery(client, runtime.store, edit_every=bot_settings.status_edit_every)
    notifier = Notifier(runtime, delivery, bot_settings, progress=schedule_settings)
    delivery.start()
    notifier.start()
    return delivery, notifier


def serve(settings: Settings, *, http: bool, host: str, port: int, runner: bool,
          bot_settings: BotSettings | None = None, stop: threading.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or `stop` is set). Missing or refused tokens: a message and exit code 2."""
    from runners.runtime import Runtime

    from .app import build_app, slack_client

    try:
        bot_settings = bot_settings or BotSettings.from_env()
        bot_settings.check(http=http)
        schedule_settings = ScheduleSettings.from_env()
        _preflight(settings)
        client = slack_client(bot_settings)
        try:
            identity = client.auth_test()
        except SlackApiError as error:
            raise _token_refused(error) from None
        except OSError as error:  # URLError, timeouts, DNS: Slack is out of reach from this host
            raise UserError(
                f"Cannot reach Slack at {client.base_url} ({getattr(error, 'reason', error)}).",
                field="SLACK_API_URL",
                fix="check this host can open HTTPS connections to slack.com (proxy, firewall), "
                "or SLACK_API_URL if you set it",
            ) from None
        runtime = Runtime(settings)
    except UserError as error:
        print(f"tunebot: {error.text()}", file=sys.stderr)
        return 2
    log.info("Slack: %s; bot %s in %s", bot_settings.describe(), identity.get("user_id"),
             identity.get("team"))

    stop = stop or threading.Event()
    previous = _install_signal_handlers(stop)
    runtime.start(worker=runner)
    delivery, notifier = _start_notifier(runtime, client, bot_settings, schedule_settings)
    # Every serve starts one; a lease in the database lets exactly one of them post (bot/state/leases.py).
    scheduler = Scheduler(runtime, delivery, schedule_settings).start()
    transport: Any = None
    try:
        try:
            app = build_app(bot_settings, runtime, client=client, delivery=delivery, verify_token=False)
        except BoltError as error:
            print(f"tunebot: {_token_refused(error).text()}", file=sys.stderr)
            return 2
        if http:
            transport = HttpServer(app, host, port).start()
            url = f"http://{host}:{transport.port}{EVENTS_PATH}"
            print(f"tunebot: serving Slack requests on {url}", flush=True)
        else:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            transport = SocketModeHandler(app, bot_settings.app_token)
            transport.connect()
            print("tunebot: connected to Slack (Socket Mode)", flush=True)
        if not runner:
            print("tunebot: no runner in this process; `tunebot worker` runs the jobs", flush=True)
        while not stop.wait(0.5):
            pass
        print("tunebot: stopping", flush=True)
        return 0
    except UserError as error:
        print(f"tunebot: {error.text()}", file=sys.stderr)
        return 2
    finally:
        if transport is not None:
            try:
                transport.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("closing the Slack connection failed")
        for part in (scheduler, notifier, delivery):
            part.stop()
        runtime.stop()
        _restore_signal_handlers(previous)


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
