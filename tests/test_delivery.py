"""Delivery through a real WebClient to the Slack Web API stand-in, with the outbox on SQLite and
PostgreSQL: retries, order within a thread, restarts, throttled edits, uploads."""

from __future__ import annotations

import logging
import threading
import time

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler

from bot.outbox.delivery import FAILED, Delivery
from bot.outbox.slack import make_client
from runners.llamafactory.progress import Progress
from runners.plots import render_loss_plot

from .conftest import wait_until
from .delivery_fixtures import quick_client, slack  # noqa: F401 (a fixture)


def ok_posts(standin, channel="C1"):
    return [c for c in standin.calls("chat.postMessage") if c.ok and c.params.get("channel") == channel]


def test_make_client_retries_rate_limits_and_server_errors():
    client = make_client("xoxb-x", "http://127.0.0.1:9/api")
    kinds = {type(h) for h in client.retry_handlers}
    assert {RateLimitErrorRetryHandler, ServerErrorRetryHandler} <= kinds
    assert client.base_url == "http://127.0.0.1:9/api/"


def test_delivery_adds_missing_retry_handlers_to_a_bare_client(slack, store):  # noqa: F811
    bare = WebClient(token=slack.bot_token, base_url=slack.base_url)
    Delivery(bare, store)
    kinds = {type(h) for h in bare.retry_handlers}
    assert {RateLimitErrorRetryHandler, ServerErrorRetryHandler} <= kinds


def test_rate_limited_post_is_retried_after_retry_after(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store)
    slack.fail_next("chat.postMessage", 429, retry_after=1)
    ts = delivery.post("C1", text="hello")
    assert ts and slack.message("C1", ts)["text"] == "hello"
    first, second = slack.calls("chat.postMessage")
    assert first.status == 429 and second.ok
    assert second.at - first.at >= 1.0  # Retry-After was honoured
    assert delivery.pending() == []


def test_rate_limit_outlasting_the_client_waits_retry_after_in_the_outbox(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack, retries=0), store)
    slack.fail_next("chat.postMessage", 429, retry_after=1)
    assert delivery.post("C1", text="later") is None
    [row] = delivery.pending()
    assert row.error == "ratelimited" and row.next_at - row.created_at >= 0.9
    delivery.start()
    try:
        slack.wait_for(lambda: ok_posts(slack), timeout=5, what="the retried post")
    finally:
        delivery.stop()
    refused, sent = slack.calls("chat.postMessage")
    assert sent.at - refused.at >= 1.0
    assert delivery.pending() == []


def test_post_failing_with_500s_is_kept_and_sent_later_in_order_with_the_thread(slack, store, tmp_path):  # noqa: F811
    delivery = Delivery(quick_client(slack), store, retry_base=0.3)
    root = delivery.post("C1", text="root")
    slack.fail_next("chat.postMessage", 500, times=2)  # the first try and the client's one retry
    assert delivery.post("C1", text="first", thread_ts=root) is None
    calls_before = len(slack.calls("chat.postMessage"))
    # Later posts and an upload of the same thread wait behind it, without even trying.
    assert delivery.post("C1", text="second", thread_ts=root) is None
    assert delivery.upload("C1", root, content="a: 1\n", filename="c.yaml", title="config") is None
    assert len(slack.calls("chat.postMessage")) == calls_before
    assert slack.calls("files.getUploadURLExternal") == []
    # Another thread is not held up.
    other = delivery.post("C1", text="elsewhere")
    assert other is not None
    assert [r.payload.get("text") for r in delivery.pending()] == ["first", "second", None]
    delivery.start()
    try:
        slack.wait_for(lambda: len(slack.thread("C1", root)) == 3, timeout=10, what="the thread")
    finally:
        delivery.stop()
    replies = slack.thread("C1", root)
    assert [m["text"] for m in replies[:2]] == ["first", "second"]
    assert replies[2]["files"][0]["name"] == "c.yaml"
    assert delivery.pending() == []


def test_outbox_survives_a_restart(slack, store):  # noqa: F811
    first = Delivery(quick_client(slack), store, retry_base=0.3)
    slack.fail_next("chat.postMessage", 503, times=2)
    assert first.post("C1", text="root of #7", key="job:7:root") is None
    assert first.post("C1", text="started", thread_key="job:7:root") is None
    assert first.upload("C1", content=b"png", filename="x.png", title="x", thread_key="job:7:root") is None
    del first  # the process ends with the outbox full

    sent_keys = []
    second = Delivery(quick_client(slack), store, retry_base=0.3)
    second.on_sent(lambda key, channel, ts: sent_keys.append((key, channel, ts)))
    second.start()
    try:
        slack.wait_for(lambda: slack.uploads(), timeout=10, what="the upload")
    finally:
        second.stop()
    root_ts = second.sent_ts("job:7:root")
    assert root_ts and slack.message("C1", root_ts)["text"] == "root of #7"
    assert [m["text"] for m in slack.thread("C1", root_ts)][:1] == ["started"]
    assert slack.uploads()[0].thread_ts == root_ts
    assert sent_keys == [("job:7:root", "C1", root_ts)]
    # The same key again posts nothing new.
    assert second.post("C1", text="root of #7", key="job:7:root") == root_ts
    assert len(ok_posts(slack)) == 2


def test_edits_are_throttled_and_the_last_content_wins(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store, edit_every=0.6).start()
    try:
        ts = delivery.post("C1", text="v", key="m")
        sent_now = [delivery.update("C1", ts, text=f"v{i}", key="m") for i in range(10)]
        assert sent_now == [True] + [False] * 9
        slack.wait_for_call("chat.update", count=2, timeout=5)
        time.sleep(1.0)  # nothing more comes
    finally:
        delivery.stop()
    edits = slack.calls("chat.update")
    assert [c.params["text"] for c in edits] == ["v0", "v9"]
    assert edits[1].at - edits[0].at >= 0.55
    assert slack.message("C1", ts)["text"] == "v9"


def test_edits_by_ts_and_by_key_share_one_throttle(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store, edit_every=0.5).start()
    try:
        ts = delivery.post("C1", text="v", key="root")
        assert delivery.update("C1", key="root", text="a") is True
        assert delivery.update("C1", ts, text="b") is False  # the same message, so throttled
        slack.wait_for_call("chat.update", count=2, timeout=5)
    finally:
        delivery.stop()
    assert [c.params["text"] for c in slack.calls("chat.update")] == ["a", "b"]


def test_an_edit_of_a_message_still_waiting_goes_out_with_it(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store, retry_base=0.3)
    slack.fail_next("chat.postMessage", 500, times=2)
    assert delivery.post("C1", text="queued", key="job:1:root") is None
    assert delivery.update("C1", key="job:1:root", text="running 50%") is False
    delivery.start()
    try:
        slack.wait_for(lambda: ok_posts(slack), timeout=5, what="the post")
    finally:
        delivery.stop()
    assert ok_posts(slack)[0].params["text"] == "running 50%"
    assert slack.calls("chat.update") == []


def test_an_edit_queued_while_the_post_was_in_flight_never_lands_after_newer_content(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store, retry_base=0.3)
    slack.fail_next("chat.postMessage", 500, times=2)
    assert delivery.post("C1", text="v0", key="K") is None
    root = delivery.find("K")
    assert delivery._claim(root.id) is not None  # a send of the post is under way...
    assert delivery.update("C1", key="K", text="v1") is False  # ...so this edit waits for it
    delivery._set(root.id, claimed_by=None, claimed_until=None)  # ...and that send failed
    assert delivery.update("C1", key="K", text="v2") is False
    assert delivery.flush(timeout=5)
    ts = delivery.sent_ts("K")
    assert slack.message("C1", ts)["text"] == "v2"


def test_real_png_goes_up_through_files_upload_v2_into_the_thread(slack, store, tmp_path):  # noqa: F811
    points = [Progress(step=i, total=4, loss=3.0 / i) for i in range(1, 5)]
    png = render_loss_plot(points, tmp_path / "loss.png", title="#3 tiny")
    delivery = Delivery(quick_client(slack), store)
    root = delivery.post("C1", text="root")
    file_id = delivery.upload("C1", root, path=png, filename="loss-3.png", title="Loss of #3")
    assert file_id
    [upload] = slack.uploads()
    assert upload.content == png.read_bytes() and upload.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert (upload.channel_id, upload.thread_ts, upload.filename, upload.title) == ("C1", root, "loss-3.png",
                                                                                   "Loss of #3")
    assert slack.methods()[-3:] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    assert slack.thread("C1", root)[0]["files"][0]["id"] == file_id


def test_a_post_slack_refuses_as_malformed_goes_out_as_plain_text(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store)
    too_long_header = [{"type": "header", "text": {"type": "plain_text", "text": "x" * 200}}]
    ts = delivery.post("C1", text="the words", blocks=too_long_header)
    assert ts is not None
    message = slack.message("C1", ts)
    assert message["text"] == "the words" and "blocks" not in message
    assert delivery.failed() == []


def test_an_edit_of_a_deleted_message_is_dropped_without_blocking_others(slack, store):  # noqa: F811
    delivery = Delivery(quick_client(slack), store)
    assert delivery.update("C1", "123.456", text="gone") is False
    [row] = delivery.failed()
    assert row.state == FAILED and row.error == "message_not_found"
    assert delivery.post("C1", text="still fine") is not None


def test_ephemerals_reach_only_the_user_and_never_the_logs(slack, store, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)  # slack_sdk logs bodies at DEBUG
    delivery = Delivery(make_client(slack.bot_token, slack.base_url), store, retry_base=0.2)
    root = delivery.post("C1", text="root")
    slack.fail_next("chat.postEphemeral", 200, error="internal_error")
    secret = "sk-tunebot-SECRET-123"
    assert delivery.ephemeral("C1", "U1", text=f"key {secret}", thread_ts=root) is None
    assert delivery.flush(timeout=5)
    [ephemeral] = slack.ephemerals("U1")
    assert secret in ephemeral["text"] and ephemeral["thread_ts"] == root
    assert slack.thread("C1", root) == []
    assert "internal_error" in caplog.text  # the failure was logged...
    assert secret not in caplog.text and slack.bot_token not in caplog.text  # ...without the content
    assert delivery.pending() == []  # and the key is not left in the database


def test_two_deliveries_on_one_database_send_each_message_once_in_order(slack, store):  # noqa: F811
    writer = Delivery(quick_client(slack, retries=0), store)
    root = writer.post("C1", text="root")
    slack.fail_next("chat.postMessage", 500)
    texts = [f"m{i}" for i in range(12)]
    for text in texts:
        writer.post("C1", text=text, thread_ts=root)
    assert len(writer.pending()) == 12
    a = Delivery(quick_client(slack), store, retry_base=0.1)
    b = Delivery(quick_client(slack), store, retry_base=0.1)
    threads = [threading.Thread(target=d.flush, kwargs={"timeout": 10}) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: not a.pending(), 10, what="the outbox to empty")
    assert [m["text"] for m in slack.thread("C1", root)] == texts
