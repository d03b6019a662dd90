"""The Slack app: a slack-bolt `App` built from settings, with every listener registered.

Acks are fast and the work is lazy: with `process_before_response=True` Bolt runs a listener's
ack function on the request's own thread (the HTTP worker or the Socket Mode receiver) and hands
the lazy half to `listener_executor`. With it off, Bolt queues the ack function on that same
executor and busy-waits for it, so a burst of slow lazy work (LLaMA-Factory's validation) would
hold acks back past Slack's 3 seconds. The same holds for both transports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App, BoltContext, BoltResponse
from slack_sdk import WebClient

from bot.outbox.slack import make_client
from bot.state.dedupe import EventLog, drop_redelivered_events
from runners.runtime import Runtime

from . import uploads
from .auth import Access
from .listeners import register_listeners
from .parsing import COMMAND
from .services import CONTEXT_KEY, Services
from .settings import BotSettings

log = logging.getLogger(__name__)

# What the app registers; manifest.yml must ask for exactly these (tests/test_manifest.py checks).
COMMANDS = {COMMAND}
BOT_EVENTS = {"app_mention", "message.channels", "message.groups"}
BOT_SCOPES = {
    "commands",  # /tune
    "chat:write",  # job messages, thread posts, edits, ephemeral replies
    "chat:write.public",  # answer in public channels the bot was not invited to
    "files:read",  # download shared datasets (url_private)
    "files:write",  # the loss plot and the job's config (files_upload_v2)
    "app_mentions:read",  # @tunebot help
    "channels:history",  # thread replies and shared files in public channels; conversations.replies
    "groups:history",  # the same in private channels
    "channels:read",  # conversations.info (schedules: is the bot in the channel)
    "groups:read",
}
# Lazy work runs here: job submissions (validation), chat turns, downloads.
LISTENER_THREADS = 32


def slack_client(settings: BotSettings) -> WebClient:
    """The outbox's WebClient: it waits out 429s (Retry-After), retries 5xx and dropped connections,
    and keeps message bodies (an API key in an ephemeral) out of slack_sdk's debug log."""
    return make_client(settings.bot_token, settings.api_url)


def build_app(settings: BotSettings, runtime: Runtime, *, client: WebClient | None = None,
              delivery: Any | None = None, verify_token: bool = True) -> App:
    """The tunebot Slack app.

    `verify_token=False` skips Bolt's auth.test at start (the bot's identity is then learnt on
    the first request). `delivery` is the outbox posts go through (bot.outbox.delivery.Delivery).
    """
    client = client or slack_client(settings)
    app = App(
        client=client,  # its token is the bot token
        signing_secret=settings.signing_secret or None,
        process_before_response=True,
        token_verification_enabled=verify_token,
        listener_executor=ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="tunebot-lazy"),
        logger=logging.getLogger("bot.bolt"),
    )
    uploads.ensure_table(runtime.store)
    services = Services(runtime=runtime, settings=settings, client=client,
                        access=Access.from_settings(settings),
                        events=EventLog(runtime.store), delivery=delivery)

    def provide_services(context: BoltContext, resp: BoltResponse, next: Callable[[], None]) -> BoltResponse:
        context[CONTEXT_KEY] = services
        next()
        return resp

    app.middleware(drop_redelivered_events(services.events))
    app.middleware(provide_services)
    register_listeners(app)
    app.tunebot = services  # type: ignore[attr-defined]  # for serve() and tests
    return app
