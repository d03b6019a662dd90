"""Shared fixtures for the Slack app's tests: the Web API stand-in, the real app over signed HTTP.

Import what a test module needs (`from tests.slack_fixtures import slack, bot, ...`). Importing
`db_url` too makes that module's tests run on SQLite only (they do not test the database).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from slack_bolt import App
from slack_sdk import WebClient

from bot.app import build_app
from bot.serve import asgi_app
from bot.services import Services
from bot.settings import BotSettings
from bot.threads import channel_of, record_root, root_ts, slack_origin
from runners.hardware import Hardware
from runners.job import Job
from runners.runtime import Runtime
from runners.settings import Settings
from tests.delivery_fixtures import quick_client
from tests.slack_signing import (
    CHANNEL_ID,
    HUMAN_USER_ID,
    SIGNING_SECRET,
    HttpResult,
    app_mention_event,
    block_actions_payload,
    event_callback,
    message_event,
    new_trigger_id,
    post,
    serve_asgi,
    signed_event,
    signed_interactive,
    signed_slash_command,
    view_submission_payload,
)
from tests.slack_standin import SlackStandin

ADMIN_ID = "U0ADMIN01"
OTHER_USER_ID = "U0BOB0002"  # allowed, but not the owner of the tests' jobs
OUTSIDER_ID = "U0MALLORY"  # not allowed to spend GPU time
FAKE_CLI = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
CPU = Hardware(host="slackhost", gpus=(), cpu_count=2)
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite only: for modules whose tests are about Slack, not the database."""
    return f"sqlite:///{tmp_path / 'tunebot.db'}"


@pytest.fixture
def slack() -> Iterator[SlackStandin]:
    with SlackStandin() as standin:
        yield standin


@pytest.fixture
def bot_settings(slack: SlackStandin) -> BotSettings:
    return BotSettings(
        bot_token=slack.bot_token,
        signing_secret=SIGNING_SECRET,
        app_token=slack.app_token,
        api_url=slack.base_url,
        allowed_users=frozenset({HUMAN_USER_ID, OTHER_USER_ID}),
        admins=frozenset({ADMIN_ID}),
        status_edit_every=0.5,
    )


def fake_cli_settings(settings: Settings, **env: str) -> Settings:
    """The engine with the stand-in llamafactory-cli: jobs run in a second, not a minute."""
    return replace(
        settings,
        llamafactory_cli=f"{sys.executable} {FAKE_CLI}",
        job_env={"FAKE_STEPS": "3", "FAKE_STEP_SECONDS": "0.05", **env},
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """The engine (fake CLI), its runner not started: jobs stay queued unless a test runs them."""
    rt = Runtime(fake_cli_settings(settings), hardware=CPU)
    yield rt
    rt.stop()
    rt.store.engine.dispose()


@dataclass
class SlackBot:
    """The real app behind its HTTP endpoint, and ways to send it what Slack sends."""

    app: App
    url: str
    slack: SlackStandin
    runtime: Runtime

    @property
    def services(self) -> Services:
        return self.app.tunebot  # type: ignore[attr-defined]

    def command(
        self,
        text: str,
        *,
        user: str = HUMAN_USER_ID,
        channel: str = CHANNEL_ID,
        trigger_id: str | None = None,
    ) -> HttpResult:
        request = signed_slash_command(
            text,
            user_id=user,
            channel_id=channel,
            response_url=self.slack.new_response_url(),
            trigger_id=trigger_id or new_trigger_id(),
        )
        return post(self.url, request)

    def event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry_num: int | None = None
    ) -> HttpResult:
        return post(self.url, signed_event(event_callback(event, event_id=event_id), retry_num=retry_num))

    def reply(
        self,
        thread_ts: str,
        text: str,
        *,
        user: str = HUMAN_USER_ID,
        event_id: str | None = None,
        retry_num: int | None = None,
    ) -> dict[str, Any]:
        """A person replies in a thread: the message exists in the stand-in and its event arrives."""
        message = self.slack.add_message(CHANNEL_ID, text, user=user, thread_ts=thread_ts)
        event = message_event(text, user=user, ts=message["ts"], thread_ts=thread_ts)
        assert self.event(event, event_id=event_id, retry_num=retry_num).status == 200
        return event

    def mention(self, text: str, *, thread_ts: str | None = None, user: str = HUMAN_USER_ID) -> HttpResult:
        message = self.slack.add_message(CHANNEL_ID, text, user=user, thread_ts=thread_ts)
        return self.event(app_mention_event(text, user=user, ts=message["ts"], thread_ts=thread_ts))

    def click(
        self,
        message: dict[str, Any],
        action_id: str,
        *,
        user: str = HUMAN_USER_ID,
        trigger_id: str | None = None,
    ) -> HttpResult:
        payload = block_actions_payload(
            message,
            action_id,
            user_id=user,
            response_url=self.slack.new_response_url(),
            trigger_id=trigger_id,
        )
        return post(self.url, signed_interactive(payload))

    def submit(
        self, view: dict[str, Any], values: dict[str, Any] | None = None, *, user: str = HUMAN_USER_ID
    ) -> HttpResult:
        return post(self.url, signed_interactive(view_submission_payload(view, values, user_id=user)))

    def responses(self) -> list[dict[str, Any]]:
        return self.slack.responses()

    def reset(self) -> None:
        """Forget the calls so far (the next response is number 1 again)."""
        self.slack.reset_calls()

    def wait_response(self, count: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        """The count-th answer posted to a response_url (a slash command's or a button's)."""
        found = self.slack.wait_for(
            lambda: len(self.responses()) >= count and self.responses(),
            timeout=timeout,
            what=f"{count} response_url post(s)",
        )
        return found[count - 1]

    def wait_ephemeral(
        self, user: str = HUMAN_USER_ID, count: int = 1, timeout: float = 30.0
    ) -> dict[str, Any]:
        found = self.slack.wait_for(
            lambda: len(self.slack.ephemerals(user)) >= count and self.slack.ephemerals(user),
            timeout=timeout,
            what=f"{count} ephemeral(s) to {user}",
        )
        return found[count - 1]

    def post_job_message(self, job: Job) -> str:
        """What the notifier does for a new job: its root message, ts recorded on the job."""
        from bot.render import render_job_message

        fresh = self.runtime.store.get(job.id)
        client = WebClient(token=self.slack.bot_token, base_url=self.slack.base_url)
        channel = channel_of(fresh) or CHANNEL_ID
        ts = client.chat_postMessage(channel=channel, **render_job_message(fresh))["ts"]
        if not channel_of(fresh):
            self.runtime.store.update(job.id, origin=slack_origin(channel))
        record_root(self.runtime.store, job.id, ts)
        return ts

    def job_message(self, job: Job) -> dict[str, Any]:
        """The job's root message as the stand-in holds it (re-rendered for its current state)."""
        from bot.render import render_job_message

        fresh = self.runtime.store.get(job.id)
        client = WebClient(token=self.slack.bot_token, base_url=self.slack.base_url)
        store = self.runtime.store
        if not root_ts(store, fresh):
            self.post_job_message(fresh)
            fresh = store.get(job.id)
        ts = root_ts(store, fresh)
        client.chat_update(channel=channel_of(fresh), ts=ts, **render_job_message(fresh))
        return self.slack.message(channel_of(fresh), ts)


def start_bot(
    slack: SlackStandin, bot_settings: BotSettings, runtime: Runtime, *, delivery: Any | None = None
) -> Iterator[SlackBot]:
    app = build_app(bot_settings, runtime, client=quick_client(slack), delivery=delivery)
    try:
        with serve_asgi(asgi_app(app)) as base:
            yield SlackBot(app=app, url=base + "/slack/events", slack=slack, runtime=runtime)
    finally:
        app.tunebot.close()  # type: ignore[attr-defined]


def start_story(slack: SlackStandin, bot_settings: BotSettings, runtime: Runtime) -> Iterator[SlackBot]:
    """The whole bot: the app over signed HTTP, the outbox and the notifier telling each job's story
    from its events, and the runtime's runner (started here, stopped after)."""
    from bot.outbox.delivery import Delivery
    from bot.story.notifier import Notifier

    delivery = Delivery(quick_client(slack), runtime.store, edit_every=bot_settings.status_edit_every)
    notifier = Notifier(runtime, delivery, bot_settings, poll=0.2)
    delivery.start()
    notifier.start()
    runtime.start(web=False)
    try:
        yield from start_bot(slack, bot_settings, runtime, delivery=delivery)
    finally:
        notifier.stop()
        delivery.stop()
        runtime.stop()


@pytest.fixture
def bot(slack: SlackStandin, bot_settings: BotSettings, runtime: Runtime) -> Iterator[SlackBot]:
    """The tunebot app over signed HTTP, posting through the real outbox (no notifier)."""
    from bot.outbox.delivery import Delivery

    delivery = Delivery(quick_client(slack), runtime.store, edit_every=bot_settings.status_edit_every).start()
    try:
        yield from start_bot(slack, bot_settings, runtime, delivery=delivery)
    finally:
        delivery.stop()


def ack_json(result: HttpResult) -> dict[str, Any]:
    assert result.status == 200, result.text
    return json.loads(result.body) if result.body else {}


def wait_job(runtime: Runtime, job_id: int, states: tuple[str, ...] = FINAL, timeout: float = 60.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runtime.store.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job #{job_id} is still {runtime.store.get(job_id).state}")


def texts(message: dict[str, Any]) -> str:
    """A message's fallback text and every block's text, for asserting on what a person reads."""
    parts = [message.get("text") or ""]
    for block in message.get("blocks") or []:
        for key in ("text", "label"):
            if isinstance(block.get(key), dict):
                parts.append(block[key].get("text", ""))
        for item in block.get("fields") or block.get("elements") or []:
            if isinstance(item, dict) and isinstance(item.get("text"), (str, dict)):
                parts.append(item["text"] if isinstance(item["text"], str) else item["text"].get("text", ""))
    return "\n".join(parts)
