"""What every listener shares: the engine, the settings, who may do what, and the way out to Slack.

Bolt hands each listener a `context`; a global middleware puts the one `Services` there, and
`services_of(context)` takes it out. Bolt deep-copies a lazy listener's context, so `Services`
copies as itself: the lazy half of a listener sees the same engine, not a copy of it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient

from bot.state.dedupe import EventLog
from runners.runtime import Runtime
from runners.store import Store

from .auth import Access
from .settings import BotSettings

log = logging.getLogger(__name__)

CONTEXT_KEY = "tunebot"


@dataclass(eq=False)
class Services:
    runtime: Runtime
    settings: BotSettings
    client: WebClient
    access: Access
    events: EventLog
    # bot.outbox.delivery's outbox once `serve` starts one: posts stay in order per thread and are retried.
    delivery: Any | None = None
    # The engine's checks are CPU work under the GIL: a few at a time leave the acks room to run.
    engine_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))
    # Checks that must finish before an ack (the train form) run here, with a deadline.
    checks: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="tunebot-check"))
    # Answers that follow an ack (Bolt answers Slack only once the ack function returns, so a Slack
    # call made there, retried through a 429, would hold the ack back).
    followups: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="tunebot-followup"))
    # views.open for `/tune train`: its trigger_id expires in 3 s, so it must not queue behind lazy
    # listeners that wait for engine slots.
    forms: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="tunebot-form"))

    def __deepcopy__(self, memo: dict) -> Services:
        return self

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def queue(self):
        return self.runtime.queue

    def post(self, channel: str, *, text: str, blocks: list[dict] | None = None,
             thread_ts: str | None = None) -> str | None:
        """Post a message (through the outbox when there is one); returns its ts when known."""
        if self.delivery is not None:
            return self.delivery.post(channel, text=text, blocks=blocks, thread_ts=thread_ts)
        response = self.client.chat_postMessage(channel=channel, text=text, blocks=blocks,
                                                thread_ts=thread_ts)
        return response.get("ts")

    def ephemeral(self, channel: str, user: str, *, text: str, blocks: list[dict] | None = None,
                  thread_ts: str | None = None) -> None:
        """A message only `user` sees, in `channel` (or in a thread of it)."""
        if self.delivery is not None:
            self.delivery.ephemeral(channel, user, text=text, blocks=blocks, thread_ts=thread_ts)
            return
        self.client.chat_postEphemeral(channel=channel, user=user, text=text, blocks=blocks,
                                       thread_ts=thread_ts)

    def close(self) -> None:
        self.checks.shutdown(wait=False, cancel_futures=True)
        self.followups.shutdown(wait=False, cancel_futures=True)
        self.forms.shutdown(wait=False, cancel_futures=True)


def services_of(context: Any) -> Services:
    return context[CONTEXT_KEY]
