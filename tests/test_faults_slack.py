"""Fault suite, Slack side (issue #10 items 8 and 9): a send that outlasts its claim under a long
Retry-After, a sender that dies between Slack accepting a post and the outbox recording it, an
answer lost to a timeout. Windows are scaled down: a claim of 0.5 s stands for 120 s, a
Retry-After of 2 s for 70 s."""

from __future__ import annotations

import threading
import time

import pytest
from slack_sdk import WebClient

from bot.outbox import delivery as delivery_module
from bot.outbox.delivery import SENT, Delivery
from runners.store import Store

from .delivery_fixtures import quick_client, slack  # noqa: F401


@pytest.fixture
def db(tmp_path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'tunebot.db'}")
    s.migrate()
    yield s
    s.engine.dispose()


@pytest.fixture
def short_claims(monkeypatch):
    monkeypatch.setattr(delivery_module, "CLAIM_SECONDS", 0.5)


def posted(slack, text: str, channel: str = "C1") -> list[dict]:  # noqa: F811
    return [m for m in slack.messages(channel) if m.get("text") == text]


def drain_for(delivery: Delivery, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        delivery.drain()
        time.sleep(0.05)


# --- 8: a send must not outlive its claim ----------------------------------------------------------
def test_a_send_sleeping_through_a_long_retry_after_keeps_its_claim_and_posts_once(
    slack, db, short_claims  # noqa: F811
):
    first = Delivery(quick_client(slack, retries=1), db)
    second = Delivery(quick_client(slack, retries=1), db)
    slack.fail_next("chat.postMessage", 429, retry_after=2)  # the client sleeps 2 s: 4 claims long
    sender = threading.Thread(target=first.post, args=("C1",), kwargs={"text": "root", "key": "job:1:root"})
    sender.start()
    time.sleep(0.2)
    drain_for(second, 2.5)  # another process's delivery loop, ready to take over a stale claim
    sender.join(10)
    [root] = posted(slack, "root")
    row = first.find("job:1:root")
    assert row.state == SENT and row.ts == root["ts"]
    assert len(slack.calls("chat.postMessage")) == 2  # the 429 and the one post


def test_a_sender_that_lost_its_claim_does_not_record_the_row(slack, db, short_claims, monkeypatch):  # noqa: F811
    first = Delivery(quick_client(slack), db)
    second = Delivery(quick_client(slack), db)
    monkeypatch.setattr(first, "_renew_claim", lambda row_id: True)  # its renewals do not reach the db
    slack.delay_next("chat.postMessage", 1.5)
    sender = threading.Thread(target=first.post, args=("C1",), kwargs={"text": "root", "key": "job:1:root"})
    sender.start()
    time.sleep(0.8)  # first's claim has run out; its post has not reached Slack yet
    drain_for(second, 0.3)
    sender.join(10)
    row = second.find("job:1:root")
    held = [m for m in posted(slack, "root") if m["ts"] == row.ts]
    assert row.state == SENT and held, "the row points at the claim holder's post"
    # second posted first (it held the claim); first, which had lost it, did not overwrite the row
    assert row.ts == min(m["ts"] for m in posted(slack, "root"))


# --- 9: a crash between Slack accepting a post and the outbox recording it ---------------------------
@pytest.mark.parametrize("in_thread", [False, True])
def test_a_post_that_landed_before_its_sender_died_is_not_sent_again(
    slack, db, short_claims, monkeypatch, in_thread  # noqa: F811
):
    first = Delivery(quick_client(slack), db)
    thread_ts = first.post("C1", text="root", key="job:1:root") if in_thread else None

    def crash(row, answer):
        raise RuntimeError("killed after Slack accepted the post")

    monkeypatch.setattr(first, "_record_sent", crash)
    with pytest.raises(RuntimeError):
        first.post("C1", text="finished", thread_ts=thread_ts, key="job:1:finished")
    assert len(posted(slack, "finished")) == 1
    time.sleep(0.6)  # its claim runs out
    second = Delivery(quick_client(slack), db)
    drain_for(second, 0.5)
    [message] = posted(slack, "finished")  # still one
    row = second.find("job:1:finished")
    assert row.state == SENT and row.ts == message["ts"]
    looked = "conversations.replies" if in_thread else "conversations.history"
    assert slack.calls(looked)


def test_a_post_whose_answer_timed_out_is_looked_for_before_it_is_sent_again(slack, db):  # noqa: F811
    impatient = WebClient(token=slack.bot_token, base_url=slack.base_url, timeout=1)
    delivery = Delivery(impatient, db, retry_base=0.1)
    slack.delay_next("chat.postMessage", 1.5)  # Slack posts it, but answers after the client gave up
    assert delivery.post("C1", text="finished", key="job:2:finished") is None
    assert delivery.find("job:2:finished").error == "TimeoutError"
    slack.wait_for(lambda: posted(slack, "finished"), timeout=5, what="the slow post to land")
    drain_for(delivery, 1.0)
    [message] = posted(slack, "finished")
    assert delivery.find("job:2:finished").ts == message["ts"]


def test_a_post_that_never_landed_is_sent_after_the_look(slack, db, short_claims, monkeypatch):  # noqa: F811
    first = Delivery(quick_client(slack), db)

    def died_before_sending(row, **kwargs):
        raise RuntimeError("killed before the call")

    monkeypatch.setattr(first, "_send", died_before_sending)
    with pytest.raises(RuntimeError):
        first.post("C1", text="finished", key="job:3:finished")
    time.sleep(0.6)
    second = Delivery(quick_client(slack), db)
    drain_for(second, 0.5)
    [message] = posted(slack, "finished")  # lost: none; duplicated: none
    assert second.find("job:3:finished").ts == message["ts"]
    assert slack.calls("conversations.history")


# --- 2: upload outcomes reach the job's thread ------------------------------------------------------
def test_upload_outcomes_are_posted_in_the_thread_a_failure_with_its_reason_and_local_path():
    from bot.story.posts import THREAD, thread_posts
    from runners.job import Job, JobEvent

    from .slack_standin import block_kit_problems

    job = Job(id=12, kind="train", state="succeeded", model="/models/llama", channel="C1",
              message_ts="1.000100", work_dir="/data/jobs/12")
    stored = JobEvent(id=1, job_id=12, type="upload", data={
        "name": "adapter", "location": "oss://bucket/team/12/train/adapter/", "size": 5 * 1024 * 1024,
        "link": "https://bucket.oss.example/team/12/train/adapter/tunebot-manifest.json?Signature=x"})
    failed = JobEvent(id=2, job_id=12, type="upload", data={
        "name": "plot", "error": "The artifact store refused the credentials (403).",
        "local": "/data/jobs/12"})
    [ok_post] = thread_posts(job, stored)
    [failed_post] = thread_posts(job, failed)
    assert ok_post.action == THREAD and failed_post.action == THREAD
    assert "oss://bucket/team/12/train/adapter/" in ok_post.text and "5.0 MiB" in ok_post.text
    assert "Signature=x" in str(ok_post.blocks)  # the signed link
    assert "not uploaded" in failed_post.text and "403" in failed_post.text
    assert "/data/jobs/12" in failed_post.text
    assert not block_kit_problems(ok_post.blocks) and not block_kit_problems(failed_post.blocks)


# --- 6 (bot side): the database away while the outbox drains -------------------------------------------
def test_the_outbox_loop_logs_a_database_outage_once_and_delivers_when_it_is_back(
    slack, db, monkeypatch, caplog  # noqa: F811
):
    import logging

    from sqlalchemy.exc import OperationalError

    delivery = Delivery(quick_client(slack), db)
    delivery.post("C1", text="before")
    real = delivery.drain
    failures = {"left": 5}

    def away():
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("SELECT 1", {}, Exception("connection refused: is the server running?"))
        return real()

    monkeypatch.setattr(delivery, "drain", away)
    monkeypatch.setattr(delivery._outage, "ceiling", 0.05)  # back-off scaled down
    caplog.set_level(logging.INFO, logger="bot.outbox.delivery")
    delivery.start()
    try:
        delivery.post("C1", text="queued while away", key="k:1")
        slack.wait_for(lambda: posted(slack, "queued while away"), timeout=10, what="the post")
        slack.wait_for(lambda: not failures["left"] and not delivery._outage.down, timeout=10,
                       what="the loop to see the database back")
    finally:
        delivery.stop()
    lines = [r for r in caplog.records if r.name == "bot.outbox.delivery" and r.levelno >= logging.WARNING]
    assert not [r for r in lines if r.exc_info]
    assert [r.getMessage() for r in lines if "database" in r.getMessage() or "PostgreSQL" in r.getMessage()]
    assert len(lines) == 2  # away once, back once
