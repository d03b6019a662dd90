"""The same app over Socket Mode (the default transport), against the local websocket stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_bolt.adapter.socket_mode import SocketModeHandler

from bot.app import build_app
from bot.render import ACTION_CANCEL
from bot.threads import channel_of, slack_origin
from runners.queue import Requester
from tests.delivery_fixtures import quick_client
from tests.slack_fixtures import SlackBot, bot_settings, db_url, runtime, slack, texts
from tests.slack_signing import (
    CHANNEL_ID,
    HUMAN_USER_ID,
    block_actions_payload,
    message_event,
    new_trigger_id,
    slash_command_payload,
    view_submission_payload,
)
from tests.socket_standin import SocketModeStandin

__all__ = ["bot_settings", "db_url", "runtime", "slack"]  # fixtures


@pytest.fixture
def sock(slack, bot_settings, runtime) -> Iterator[tuple[SocketModeStandin, SlackBot]]:
    with SocketModeStandin(slack) as standin:
        app = build_app(bot_settings, runtime, client=quick_client(slack))
        handler = SocketModeHandler(app, slack.app_token)
        handler.connect()
        try:
            standin.wait_connected()
            yield standin, SlackBot(app=app, url="", slack=slack, runtime=runtime)
        finally:
            standin.close_client(handler)
            app.tunebot.close()


def test_help_and_mistakes_travel_in_the_ack_payload(sock) -> None:
    standin, bot = sock
    envelope = standin.push_slash_command("help")
    ack = standin.wait_for_ack(envelope)
    assert "/tune train" in texts(ack.payload)
    assert standin.ack_delay(envelope) < 3.0
    wrong = standin.wait_for_ack(standin.push_slash_command("deploy"))
    assert "`deploy` needs a job id" in texts(wrong.payload)


def test_train_is_acked_then_queued_and_a_redelivered_command_makes_one_job(sock) -> None:
    standin, bot = sock
    payload = slash_command_payload(
        "train tiny", response_url=bot.slack.new_response_url(), trigger_id=new_trigger_id()
    )
    first = standin.push("slash_commands", payload)
    assert "Checking" in texts(standin.wait_for_ack(first).payload)
    assert standin.ack_delay(first) < 3.0
    standin.wait_for_ack(standin.push("slash_commands", payload))
    bot.wait_response(2)
    [job] = bot.runtime.store.list_jobs()
    assert (job.user, channel_of(job)) == (HUMAN_USER_ID, CHANNEL_ID)


def test_events_buttons_and_the_form_over_the_socket(sock) -> None:
    standin, bot = sock
    job = bot.runtime.queue.submit_train(
        preset="tiny", requester=Requester(user=HUMAN_USER_ID, origin=slack_origin(CHANNEL_ID))
    )
    message = bot.job_message(job)
    reply = bot.slack.add_message(CHANNEL_ID, "status", thread_ts=message["ts"])
    event = message_event("status", ts=reply["ts"], thread_ts=message["ts"])
    standin.wait_for_ack(standin.push_event(event, event_id="Ev0SOCKET01"))
    standin.wait_for_ack(standin.push_event(event, event_id="Ev0SOCKET01", retry_attempt=1))
    assert f"Train #{job.id}" in bot.wait_ephemeral()["text"]

    click = block_actions_payload(message, ACTION_CANCEL, response_url=bot.slack.new_response_url())
    standin.wait_for_ack(standin.push_interactive(click))
    bot.wait_response()
    assert bot.runtime.store.get(job.id).state == "cancelled"
    assert len(bot.slack.ephemerals()) == 1  # the redelivered event was not answered again

    standin.wait_for_ack(standin.push_slash_command("train"))
    bot.slack.wait_for_call("views.open", timeout=10)
    view = bot.slack.views()[-1]
    errors = standin.wait_for_ack(
        standin.push_interactive(
            view_submission_payload(view, {"model": "tiny", "dataset": "demo", "compute": "bf16"})
        )
    )
    assert (
        errors.payload["response_action"] == "errors"
        and "bf16 needs a GPU" in errors.payload["errors"]["compute"]
    )
    good = standin.wait_for_ack(
        standin.push_interactive(
            view_submission_payload(view, {"model": "tiny", "dataset": "demo", "compute": "fp32"})
        )
    )
    assert not good.payload
    assert len(bot.runtime.store.list_jobs()) == 2
