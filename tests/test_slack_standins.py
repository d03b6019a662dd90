"""The Slack stand-ins behave like Slack for a real slack_sdk WebClient and a real Bolt app."""

from __future__ import annotations

import struct
import time
import urllib.request
import zlib
from collections.abc import Iterator

import pytest
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.starlette import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from tests.slack_signing import (
    CHANNEL_ID,
    HUMAN_USER_ID,
    SIGNING_SECRET,
    app_mention_event,
    block_actions_payload,
    event_callback,
    fill_view_state,
    new_event_id,
    post,
    serve_asgi,
    signed_event,
    signed_interactive,
    signed_slash_command,
    stale_timestamp,
    view_submission_payload,
)
from tests.slack_standin import SlackStandin, block_kit_problems
from tests.socket_standin import SocketModeStandin


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A real (valid) RGB PNG, built with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00" + b"".join(bytes([(x * 60) % 256, (y * 80) % 256, 200]) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def slack() -> Iterator[SlackStandin]:
    with SlackStandin() as standin:
        yield standin


def client_for(slack: SlackStandin, **kwargs) -> WebClient:
    return WebClient(token=slack.bot_token, base_url=slack.base_url, **kwargs)


# -- Web API ------------------------------------------------------------------------------------


def test_post_then_update_keeps_one_message_with_the_new_text(slack: SlackStandin) -> None:
    client = client_for(slack)
    posted = client.chat_postMessage(
        channel=CHANNEL_ID,
        text="queued",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*#1* queued"}}],
    )
    ts = posted["ts"]
    client.chat_update(channel=CHANNEL_ID, ts=ts, text="running 50%")

    assert [m["text"] for m in slack.messages(CHANNEL_ID)] == ["running 50%"]
    assert slack.message(CHANNEL_ID, ts)["blocks"][0]["text"]["text"] == "*#1* queued"
    call = slack.calls("chat.postMessage")[0]
    assert call.params["blocks"][0]["type"] == "section"
    assert call.token == slack.bot_token
    assert slack.methods() == ["chat.postMessage", "chat.update"]


def test_thread_replies_are_kept_in_order_and_listed_by_conversations_replies(slack: SlackStandin) -> None:
    client = client_for(slack)
    root = client.chat_postMessage(channel=CHANNEL_ID, text="root")["ts"]
    for i in range(3):
        client.chat_postMessage(channel=CHANNEL_ID, text=f"reply {i}", thread_ts=root)
    human = slack.add_message(CHANNEL_ID, "hello model", thread_ts=root)

    assert [m["text"] for m in slack.thread(CHANNEL_ID, root)] == [
        "reply 0",
        "reply 1",
        "reply 2",
        "hello model",
    ]
    first = client.conversations_replies(channel=CHANNEL_ID, ts=root, limit=3)
    rest = client.conversations_replies(
        channel=CHANNEL_ID, ts=root, cursor=first["response_metadata"]["next_cursor"]
    )
    texts = [m["text"] for m in first["messages"] + rest["messages"]]
    assert texts == ["root", "reply 0", "reply 1", "reply 2", "hello model"]
    assert rest["messages"][-1]["user"] == human["user"]
    assert slack.message(CHANNEL_ID, root)["reply_count"] == 4


def test_a_wrong_bot_token_is_refused_with_invalid_auth(slack: SlackStandin) -> None:
    client = WebClient(token="xoxb-wrong", base_url=slack.base_url)
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel=CHANNEL_ID, text="x")
    assert caught.value.response["error"] == "invalid_auth"
    assert slack.messages() == []


def test_update_of_an_unknown_message_and_over_limit_blocks_are_errors(slack: SlackStandin) -> None:
    client = client_for(slack)
    with pytest.raises(SlackApiError) as caught:
        client.chat_update(channel=CHANNEL_ID, ts="1.000001", text="x")
    assert caught.value.response["error"] == "message_not_found"
    too_many = [{"type": "divider"}] * 51
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel=CHANNEL_ID, text="x", blocks=too_many)
    assert caught.value.response["error"] == "invalid_blocks"
    assert block_kit_problems([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])


def test_files_upload_v2_round_trips_real_png_bytes_into_a_thread(slack: SlackStandin) -> None:
    client = client_for(slack)
    root = client.chat_postMessage(channel=CHANNEL_ID, text="job #1")["ts"]
    png = tiny_png()
    assert png.startswith(b"\x89PNG")

    client.files_upload_v2(
        channel=CHANNEL_ID,
        thread_ts=root,
        content=png,
        filename="loss.png",
        title="Loss",
        initial_comment="training loss",
    )

    [upload] = slack.uploads()
    assert upload.content == png
    assert (upload.filename, upload.title, upload.channel_id, upload.thread_ts) == (
        "loss.png",
        "Loss",
        CHANNEL_ID,
        root,
    )
    assert upload.initial_comment == "training loss"
    assert [c.method for c in slack.calls()][1:4] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    [share] = slack.thread(CHANNEL_ID, root)
    assert share["files"][0]["id"] == upload.file_id
    info = client.files_info(file=upload.file_id)["file"]
    assert info["mimetype"] == "image/png" and info["size"] == len(png)


def test_url_private_serves_a_shared_file_only_with_the_bot_token(slack: SlackStandin) -> None:
    rows = b'{"instruction": "hi", "output": "hello"}\n'
    event = slack.share_file(CHANNEL_ID, "train.jsonl", rows, text="/tune dataset add demo")
    file_id = event["files"][0]["id"]
    info = client_for(slack).files_info(file=file_id)["file"]
    assert info["name"] == "train.jsonl" and info["channels"] == [CHANNEL_ID]

    authorised = urllib.request.Request(
        info["url_private_download"], headers={"Authorization": f"Bearer {slack.bot_token}"}
    )
    with urllib.request.urlopen(authorised, timeout=5) as resp:
        assert resp.read() == rows
    # Like Slack: no token, no file, but a sign-in page with status 200.
    with urllib.request.urlopen(info["url_private"], timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.read() != rows
    assert [c.status for c in slack.calls("download")] == [200, 302]


def test_429_retry_after_is_honoured_by_the_rate_limit_retry_handler(slack: SlackStandin) -> None:
    client = client_for(slack, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])
    slack.fail_next("chat.postMessage", 429, retry_after=1)

    started = time.monotonic()
    client.chat_postMessage(channel=CHANNEL_ID, text="after a rate limit")
    elapsed = time.monotonic() - started

    first, second = slack.calls("chat.postMessage")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0 and elapsed >= 1.0
    assert len(slack.messages(CHANNEL_ID)) == 1


def test_429_without_a_retry_handler_surfaces_ratelimited(slack: SlackStandin) -> None:
    slack.fail_next("chat.update", 429, retry_after=3)
    with pytest.raises(SlackApiError) as caught:
        client_for(slack).chat_update(channel=CHANNEL_ID, ts="1.0", text="x")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "3"


def test_server_errors_are_retried_by_the_server_error_retry_handler(slack: SlackStandin) -> None:
    quick = FixedValueRetryIntervalCalculator(0.05)
    client = client_for(
        slack, retry_handlers=[ServerErrorRetryHandler(max_retry_count=2, interval_calculator=quick)]
    )
    slack.fail_next("chat.postMessage", 500, times=2)
    client.chat_postMessage(channel=CHANNEL_ID, text="third time lucky")
    assert [c.status for c in slack.calls("chat.postMessage")] == [500, 500, 200]


def test_an_injected_slack_error_and_a_slow_answer(slack: SlackStandin) -> None:
    client = client_for(slack)
    slack.fail_next("chat.postMessage", 200, error="channel_not_found")
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel="C404", text="x")
    assert caught.value.response["error"] == "channel_not_found"
    slack.delay_next("auth.test", 0.3)
    started = time.monotonic()
    client.auth_test()
    assert time.monotonic() - started >= 0.3


def test_views_open_then_update_with_hash_checks(slack: SlackStandin) -> None:
    client = client_for(slack)
    view = {
        "type": "modal",
        "callback_id": "train_form",
        "title": {"type": "plain_text", "text": "Train"},
        "submit": {"type": "plain_text", "text": "Go"},
        "blocks": [
            {
                "type": "input",
                "block_id": "model",
                "label": {"type": "plain_text", "text": "Model"},
                "element": {"type": "plain_text_input", "action_id": "model", "initial_value": "m"},
            }
        ],
    }
    opened = client.views_open(trigger_id="1.2.x", view=view)["view"]
    client.views_update(view_id=opened["id"], hash=opened["hash"], view={**view, "callback_id": "again"})
    with pytest.raises(SlackApiError) as caught:
        client.views_update(view_id=opened["id"], hash=opened["hash"], view=view)
    assert caught.value.response["error"] == "hash_conflict"
    assert slack.views()[0]["callback_id"] == "again"
    state = fill_view_state(slack.views()[0], {"model": "llama"})
    assert state["values"]["model"]["model"] == {"type": "plain_text_input", "value": "llama"}
    with pytest.raises(ValueError):
        fill_view_state(view, {"no_such_field": "x"})


def test_ephemeral_users_channels_and_socket_url(slack: SlackStandin) -> None:
    client = client_for(slack)
    client.chat_postEphemeral(channel=CHANNEL_ID, user=HUMAN_USER_ID, text="only you")
    assert slack.ephemerals(HUMAN_USER_ID)[0]["text"] == "only you"
    assert slack.messages() == []
    slack.add_channel("G0PRIVATE", "secret-lab", is_private=True, is_member=False)
    assert client.conversations_info(channel="G0PRIVATE")["channel"]["is_member"] is False
    assert client.users_info(user=HUMAN_USER_ID)["user"]["is_bot"] is False
    assert client.auth_test()["user_id"] == slack.bot_user_id
    app_client = WebClient(token=slack.app_token, base_url=slack.base_url)
    with pytest.raises(SlackApiError):
        app_client.apps_connections_open(app_token=slack.app_token)  # no socket stand-in yet
    with pytest.raises(SlackApiError) as caught:
        client.apps_connections_open(app_token="xapp-wrong")
    assert caught.value.response["error"] == "invalid_auth"


def test_signatures_match_slack_sdks_own_verifier() -> None:
    request = signed_slash_command("status")
    verifier = SignatureVerifier(SIGNING_SECRET)
    assert verifier.is_valid_request(request.body, request.headers)
    assert not SignatureVerifier("other").is_valid_request(request.body, request.headers)
    stale = signed_slash_command("status", timestamp=stale_timestamp())
    assert not verifier.is_valid_request(stale.body, stale.headers)


# -- a minimal Bolt app over HTTP -------------------------------------------------------------


def minimal_app(slack: SlackStandin, **kwargs) -> App:
    app = App(client=client_for(slack), **kwargs)

    @app.command("/tune")
    def tune(ack, command, respond) -> None:
        ack(f"got: {command['text']}")
        respond(text="later, via response_url")

    @app.action("job_cancel")
    def cancel(ack, body, client) -> None:
        ack()
        client.chat_postMessage(
            channel=body["channel"]["id"],
            thread_ts=body["container"]["message_ts"],
            text=f"cancel {body['actions'][0]['value']}",
        )

    @app.view("train_form")
    def submit(ack, view) -> None:
        model = view["state"]["values"]["model"]["model"]["value"]
        if model == "bad":
            ack(response_action="errors", errors={"model": "no such model"})
        else:
            ack()

    @app.event("app_mention")
    def mention(event, say) -> None:
        say(text=f"hi <@{event['user']}>", thread_ts=event["ts"])

    return app


@pytest.fixture
def http_app(slack: SlackStandin) -> Iterator[str]:
    handler = SlackRequestHandler(minimal_app(slack, signing_secret=SIGNING_SECRET))

    async def endpoint(request: Request):
        return await handler.handle(request)

    asgi = Starlette(routes=[Route("/slack/events", endpoint=endpoint, methods=["POST"])])
    with serve_asgi(asgi) as url:
        yield url + "/slack/events"


def test_bolt_over_http_acks_a_signed_command_and_responds_via_response_url(
    slack: SlackStandin, http_app: str
) -> None:
    result = post(http_app, signed_slash_command("train tiny", response_url=slack.new_response_url()))
    assert result.status == 200
    assert "got: train tiny" in result.text
    slack.wait_for(lambda: slack.responses(), what="a response_url post")
    assert slack.responses()[0]["text"] == "later, via response_url"


def test_bolt_over_http_refuses_a_wrong_secret_and_a_stale_timestamp(
    slack: SlackStandin, http_app: str
) -> None:
    assert post(http_app, signed_slash_command("jobs", secret="not-the-secret")).status == 401
    assert post(http_app, signed_slash_command("jobs", timestamp=stale_timestamp())).status == 401


def test_bolt_over_http_handles_a_button_click_on_a_posted_message(
    slack: SlackStandin, http_app: str
) -> None:
    posted = client_for(slack).chat_postMessage(
        channel=CHANNEL_ID,
        text="job #7",
        blocks=[
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "job_cancel",
                        "value": "7",
                        "text": {"type": "plain_text", "text": "Cancel"},
                    }
                ],
            }
        ],
    )
    message = slack.message(CHANNEL_ID, posted["ts"])
    assert post(http_app, signed_interactive(block_actions_payload(message, "job_cancel"))).status == 200
    reply = slack.wait_for_call("chat.postMessage", lambda c: c.params.get("thread_ts") == posted["ts"])
    assert reply.params["text"] == "cancel 7"
    with pytest.raises(LookupError):
        block_actions_payload(message, "job_deploy")


def test_bolt_over_http_view_submission_can_answer_field_errors(slack: SlackStandin, http_app: str) -> None:
    view = {
        "type": "modal",
        "callback_id": "train_form",
        "title": {"type": "plain_text", "text": "Train"},
        "submit": {"type": "plain_text", "text": "Go"},
        "blocks": [
            {
                "type": "input",
                "block_id": "model",
                "label": {"type": "plain_text", "text": "Model"},
                "element": {"type": "plain_text_input", "action_id": "model"},
            }
        ],
    }
    bad = post(http_app, signed_interactive(view_submission_payload(view, {"model": "bad"})))
    assert bad.status == 200 and bad.json() == {
        "response_action": "errors",
        "errors": {"model": "no such model"},
    }
    good = post(http_app, signed_interactive(view_submission_payload(view, {"model": "llama"})))
    assert good.status == 200 and good.body == b""


def test_bolt_over_http_handles_an_event_and_a_retried_delivery_is_visible(
    slack: SlackStandin, http_app: str
) -> None:
    event = app_mention_event(f"<@{slack.bot_user_id}> help")
    payload = event_callback(event, event_id=new_event_id())
    assert post(http_app, signed_event(payload)).status == 200
    assert post(http_app, signed_event(payload, retry_num=1)).status == 200
    slack.wait_for_call("chat.postMessage", count=2)
    # Bolt does not de-duplicate redeliveries: the app must (by event_id).
    assert [c.params["thread_ts"] for c in slack.calls("chat.postMessage")] == [event["ts"], event["ts"]]


# -- the same app over Socket Mode ------------------------------------------------------------


def test_bolt_over_socket_mode_acks_commands_with_their_payload_and_handles_events(
    slack: SlackStandin,
) -> None:
    with SocketModeStandin(slack) as sock:
        handler = SocketModeHandler(minimal_app(slack), slack.app_token)
        handler.connect()
        try:
            sock.wait_connected()
            envelope = sock.push_slash_command("status 3", response_url=slack.new_response_url())
            ack = sock.wait_for_ack(envelope)
            assert ack.payload == {"text": "got: status 3"}
            assert sock.ack_delay(envelope) < 3.0
            slack.wait_for(lambda: slack.responses(), what="respond() through response_url")

            event = app_mention_event(f"<@{slack.bot_user_id}> help")
            sock.wait_for_ack(sock.push_event(event))
            said = slack.wait_for_call("chat.postMessage")
            assert said.params["text"] == f"hi <@{HUMAN_USER_ID}>"

            connections_before = sock.connected_total
            sock.disconnect()
            slack.wait_for(lambda: sock.connected_total > connections_before, timeout=10, what="a reconnect")
            sock.wait_connected()
            assert sock.wait_for_ack(sock.push_slash_command("jobs")).payload == {"text": "got: jobs"}
            assert len(slack.calls("apps.connections.open")) >= 2
        finally:
            sock.close_client(handler)


def test_socket_mode_interactive_envelope_round_trip(slack: SlackStandin) -> None:
    posted = client_for(slack).chat_postMessage(
        channel=CHANNEL_ID,
        text="job #9",
        blocks=[
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "job_cancel",
                        "value": "9",
                        "text": {"type": "plain_text", "text": "Cancel"},
                    }
                ],
            }
        ],
    )
    with SocketModeStandin(slack) as sock:
        handler = SocketModeHandler(minimal_app(slack), slack.app_token)
        handler.connect()
        try:
            sock.wait_connected()
            payload = block_actions_payload(slack.message(CHANNEL_ID, posted["ts"]), "job_cancel")
            sock.wait_for_ack(sock.push_interactive(payload))
            reply = slack.wait_for_call("chat.postMessage", count=2)
            assert reply.params == {**reply.params, "text": "cancel 9", "thread_ts": posted["ts"]}
        finally:
            sock.close_client(handler)
