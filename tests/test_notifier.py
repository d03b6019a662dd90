"""The notifier: real jobs' events (the fast stand-in llamafactory-cli, on SQLite and PostgreSQL)
become the right Slack calls on the Web API stand-in, through a real WebClient and Delivery."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlmodel import Session, delete, select

from bot.outbox.delivery import Delivery, OutboxItem
from bot.story.notifier import Notifier, NotifierCursor
from bot.threads import channel_of, root_ts, slack_origin
from runners.hardware import Hardware
from runners.job import FINAL_STATES, Job, JobEvent
from runners.queue import JobQueue, Requester
from runners.runtime import Runtime
from runners.worker import Worker, wait_for

from .conftest import wait_until
from .delivery_fixtures import quick_client, slack  # noqa: F401 (a fixture)

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)
ALICE, BOB = "U0ALICE01", "U0BOB0001"
C1 = slack_origin("C1")  # a job asked for at the top level of channel C1


def asker(user: str, channel: str, thread_ts: str, key: str) -> Requester:
    """A request from Slack: who, in which channel and thread, with its trigger id."""
    return Requester(user, slack_origin(channel, thread_ts), key)


def fake_settings(settings, **env):
    return replace(settings, llamafactory_cli=f"{sys.executable} {FAKE}",
                   job_env={"FAKE_STEPS": "5", "FAKE_STEP_SECONDS": "0.1", **env})


@pytest.fixture
def story(slack, settings, store):  # noqa: F811
    """The engine (worker not started), a Delivery and a Notifier on the stand-in."""
    return build_story(slack, settings, store)


def build_story(slack, settings, store, **env):  # noqa: F811
    s = fake_settings(settings, **env)
    runtime = Runtime(s, store=store)
    runtime.queue = JobQueue(s, store, hardware=CPU)
    runtime.worker = Worker(s, store, hardware=CPU)
    delivery = Delivery(quick_client(slack), store, edit_every=0.3, retry_base=0.2)
    notifier = Notifier(runtime, delivery, poll=0.05)
    return SimpleNamespace(slack=slack, store=store, runtime=runtime, queue=runtime.queue, delivery=delivery,
                           notifier=notifier)


class running:
    """Worker, delivery and notifier threads for the duration of a with-block."""

    def __init__(self, st, worker: bool = True):
        self.st, self.worker = st, worker

    def __enter__(self):
        self.st.delivery.start()
        self.st.notifier.start()
        if self.worker:
            self.st.runtime.worker.start()
        return self.st

    def __exit__(self, *exc):
        if self.worker:
            self.st.runtime.worker.stop()
        self.st.notifier.stop()
        self.st.delivery.stop()


def settle(st, timeout: float = 15.0) -> None:
    """Until the notifier has read every event, the outbox is empty and every Slack job's root
    message ts is recorded (a root sent late is recorded just after its row leaves the outbox)."""

    def caught_up() -> bool:
        if st.notifier.cursor != st.store.last_event_id() or st.delivery.pending():
            return False
        return all(root_ts(st.store, j) for j in st.store.list_jobs() if channel_of(j))

    wait_until(caught_up, timeout, what="the notifier and the outbox to catch up")


def finish(st, job: Job, timeout: float = 60.0) -> Job:
    done = wait_for(st.store, job.id, FINAL_STATES, timeout=timeout)
    assert done.is_final, f"job #{job.id} is still {done.state}"
    settle(st)
    return st.store.get(job.id)


def blocks_text(message: dict) -> str:
    return json.dumps(message.get("blocks") or []) + (message.get("text") or "")


def top_level(slack, channel="C1"):  # noqa: F811
    return [m for m in slack.messages(channel) if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]


def test_a_train_job_tells_its_story_in_its_thread(story):
    st = story
    with running(st):
        job = st.queue.submit_train(preset="tiny", requester=asker(ALICE, "C1", "", "trigger-1"))
        job = finish(st, job)
    assert job.state == "succeeded"
    # The root: a new channel message, recorded on the job, edited in place to the end.
    [root] = top_level(st.slack)
    assert root["ts"] == root_ts(st.store, job)
    assert root["metadata"]["event_payload"]["job_id"] == job.id
    assert ":white_check_mark: succeeded" in blocks_text(root) and "job_eval" in blocks_text(root)
    edits = st.slack.calls("chat.update")
    assert edits and all(c.params["ts"] == root_ts(st.store, job) for c in edits)
    assert any("step 5/5" in json.dumps(c.params["blocks"]) for c in edits)
    assert edits[-1].params["metadata"]["event_payload"] == {"job_id": job.id, "kind": "train",
                                                            "state": "succeeded", "step": 5}
    # The thread: started, the exact config, the final loss plot, the finish mentioning Alice.
    thread = st.slack.thread("C1", root_ts(st.store, job))
    assert len(thread) == 4, [m.get("text") for m in thread]
    started, config, plot, finished = thread
    assert f"Train #{job.id} started" in started["text"]
    [config_upload, plot_upload] = st.slack.uploads()
    assert config["files"][0]["id"] == config_upload.file_id
    assert config_upload.thread_ts == root_ts(st.store, job)
    assert config_upload.content.decode() == (Path(job.work_dir) / "config.yaml").read_text()
    assert plot["files"][0]["id"] == plot_upload.file_id and plot_upload.filename == f"loss-{job.id}.png"
    assert plot_upload.content == Path(job.artifacts["plot"]).read_bytes()
    assert plot_upload.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"<@{ALICE}>" in finished["text"] and "finished" in finished["text"]
    assert st.slack.ephemerals() == []


def test_eval_and_export_of_a_job_go_into_its_thread_and_evals_compare(story):
    st = story
    with running(st):
        train = finish(st, st.queue.submit_train(preset="tiny", requester=asker(ALICE, "C1", "", "t1")))
        # A thread reply asks for the first eval; the second comes from the channel (a button, a command).
        in_thread = asker(ALICE, "C1", root_ts(st.store, train), "e1")
        first = finish(st, st.queue.submit_eval(train.id, requester=in_thread))
        second = finish(st, st.queue.submit_eval(train.id, requester=asker(BOB, "C1", "", "e2")))
        export = finish(st, st.queue.submit_export(train.id, requester=asker(ALICE, "C1", "", "x1")))
    assert (first.state, second.state, export.state) == ("succeeded", "succeeded", "succeeded")
    assert len(top_level(st.slack)) == 1  # one thread tells the model's whole story
    thread = st.slack.thread("C1", root_ts(st.store, train))
    for follow_up in (first, second, export):
        root = st.slack.message("C1", root_ts(st.store, follow_up))
        assert root["thread_ts"] == root_ts(st.store, train)  # its root is a reply, edited in place
        assert ":white_check_mark: succeeded" in blocks_text(root)
    texts = [blocks_text(m) for m in thread]
    first_result = next(t for t in texts if f"Eval #{first.id} of #{train.id}" in t and "ROUGE-1" in t)
    assert "nothing to compare" in first_result and f"<@{ALICE}>" in first_result
    second_result = next(t for t in texts if f"Eval #{second.id} of #{train.id}" in t and "ROUGE-1" in t)
    assert f"Change against #{first.id}" in second_result and "+0.00" in second_result
    assert f"<@{BOB}>" in second_result and "Sample 1" in second_result
    export_post = next(t for t in texts if f"Export #{export.id} of #{train.id} is ready" in t)
    assert export.artifacts["model"] in export_post
    # Every post of a follow-up comes after its root.
    order = [m["ts"] for m in thread]
    assert order == sorted(order)
    assert thread.index(st.slack.message("C1", root_ts(st.store, first))) < texts.index(first_result)


def test_a_failed_job_gets_the_reason_advice_and_log_tail(slack, settings, store):  # noqa: F811
    st = build_story(slack, settings, store, FAKE_STEPS="1", FAKE_EXIT="1",
                     FAKE_ERROR="ValueError: Undefined dataset nosuch in dataset_info.json.")
    with running(st):
        job = finish(st, st.queue.submit_train(preset="tiny", requester=asker(ALICE, "C1", "", "f1")))
    assert job.state == "failed"
    failure = st.slack.thread("C1", root_ts(store, job))[-1]
    body = blocks_text(failure)
    assert f"<@{ALICE}>" in body and f"Train #{job.id} failed" in body
    assert "```" in body and "Undefined dataset nosuch" in body
    assert "Resume" in blocks_text(st.slack.message("C1", root_ts(store, job)))


def test_a_deployment_posts_its_urls_and_tells_only_the_requester_its_key(story):
    st, store = story, story.store
    secret = "sk-tunebot-very-secret-0001"
    with running(st, worker=False):  # the engine's moves made by hand: the fake CLI serves no API
        wait_until(lambda: st.notifier.cursor is not None, 5, what="the notifier")
        train, _ = store.add_job(Job(kind="train", model="/models/tiny", user=ALICE, origin=C1))
        wait_until(lambda: root_ts(st.store, store.get(train.id)), 10, what="the train root")
        store.transition(train.id, ["queued"], "succeeded")
        dep, _ = store.add_job(Job(kind="deploy", mode="api", parent_id=train.id, model="/models/tiny",
                                   user=ALICE, origin=C1))
        store.transition(dep.id, ["queued"], "starting", started_at=1.0)
        store.transition(dep.id, ["starting"], "serving", url="http://gpu1:8001/v1", api_key=secret,
                         chat_url="http://gpu1:7860/chat/2/")
        settle(st)
        store.update(dep.id, cancel_requested=True, cancelled_by=BOB)
        store.transition(dep.id, ["serving"], "stopped", finished_at=2.0)
        settle(st)
    train = store.get(train.id)
    dep = store.get(dep.id)
    assert st.slack.message("C1", root_ts(st.store, dep))["thread_ts"] == root_ts(st.store, train)
    thread = [blocks_text(m) for m in st.slack.thread("C1", root_ts(st.store, train))]
    serving = next(t for t in thread if "is serving" in t)
    assert "http://gpu1:7860/chat/2/" in serving and "http://gpu1:8001/v1" in serving
    assert f"<@{ALICE}>" in serving and "sent to" in serving
    assert any("stopped" in t and f"<@{BOB}>" in t for t in thread)
    [key] = st.slack.ephemerals()
    assert key["user"] == ALICE and secret in key["text"] + json.dumps(key["blocks"])
    assert key["thread_ts"] == root_ts(st.store, train)
    public = [c for c in st.slack.calls() if c.method != "chat.postEphemeral"]
    assert all(secret.encode() not in c.body for c in public)


def outbox_dump(store) -> str:
    with Session(store.engine) as s:
        return json.dumps([row.model_dump() for row in s.exec(select(OutboxItem)).all()], default=str)


def serving(store, secret: str) -> Job:
    dep, _ = store.add_job(Job(kind="deploy", mode="api", model="/models/tiny", user=ALICE, origin=C1))
    store.transition(dep.id, ["queued"], "starting", started_at=1.0)
    store.transition(dep.id, ["starting"], "serving", url="http://gpu1:8001/v1", api_key=secret)
    return dep


def test_an_api_key_never_waits_in_the_outbox_nor_stays_there(story):
    st, store = story, story.store
    st.notifier.tick()
    secret = "sk-tunebot-outbox-0001"
    st.slack.fail_next("chat.postEphemeral", 500, times=4)  # Slack down: the key's message must wait
    serving(store, secret)
    st.notifier.tick()
    assert [r.action for r in st.delivery.pending()] == ["ephemeral"]
    assert secret not in outbox_dump(store)
    assert st.delivery.flush(15)
    [shown] = st.slack.ephemerals(ALICE)
    assert secret in shown["text"] + json.dumps(shown["blocks"])  # rendered when it went out
    assert secret not in outbox_dump(store)
    # Refused for good (Alice left the channel): kept as failed, without what it said.
    other = "sk-tunebot-outbox-0002"
    st.slack.fail_next("chat.postEphemeral", 200, error="user_not_in_channel")
    serving(store, other)
    st.notifier.tick()
    assert st.delivery.flush(5)
    assert [f.error for f in st.delivery.failed()] == ["user_not_in_channel"]
    assert other not in outbox_dump(store)


def test_posts_survive_a_slack_outage_in_order(story):
    st = story
    st.slack.fail_next("chat.postMessage", 500, times=6)  # the root and its retries fail for a while
    with running(st):
        job = st.queue.submit_train(preset="tiny", requester=asker(ALICE, "C1", "", "o1"))
        job = finish(st, job)
    failed = [c for c in st.slack.calls("chat.postMessage") if not c.ok]
    assert len(failed) == 6
    [root] = top_level(st.slack)
    assert root_ts(st.store, job) == root["ts"]  # recorded when the outbox finally sent it
    thread = st.slack.thread("C1", root["ts"])
    assert [bool(m.get("files")) for m in thread] == [False, True, True, False]
    assert "started" in thread[0]["text"] and "finished" in thread[-1]["text"]
    shown = [(c.method, c.status, c.params.get("text"))
             for c in st.slack.calls() if c.method.startswith("chat.")]
    assert ":white_check_mark: succeeded" in blocks_text(root), shown


def test_the_cursor_is_kept_so_a_restart_neither_reposts_nor_skips(story):
    st, store = story, story.store
    before, _ = store.add_job(Job(kind="train", model="m", user=ALICE, origin=C1))
    assert st.notifier.tick() == 0  # a first start begins at the newest event: the past is not re-told
    assert st.slack.calls() == []
    job, _ = store.add_job(Job(kind="train", model="m", user=ALICE, origin=C1))
    assert st.notifier.tick() == 1
    root = root_ts(st.store, store.get(job.id))
    assert root and len(st.slack.calls("chat.postMessage")) == 1

    # tunebot stops; the engine goes on.
    store.add_event(job.id, "reattached")
    store.add_event(before.id, "state", {"state": "queued"})
    again = Notifier(st.runtime, Delivery(quick_client(st.slack), store), poll=0.05)
    assert again.tick() == 2
    assert st.delivery.flush(5)
    posts = st.slack.calls("chat.postMessage")
    assert len(posts) == 3  # the note in job's thread, and a root for `before` now that it moved
    assert posts[1].params["thread_ts"] == root and "following" in posts[1].params["text"]
    assert posts[2].params.get("thread_ts") is None and f"#{before.id}" in posts[2].params["text"]
    assert again.tick() == 0
    with store.session() as s:
        assert s.get(NotifierCursor, "slack").last_event_id == store.last_event_id()


def test_two_notifiers_on_one_database_post_each_message_once(story):
    st, store = story, story.store
    second = Notifier(st.runtime, Delivery(quick_client(st.slack), store, edit_every=0.3), poll=0.05)
    st.notifier.tick()
    second.tick()  # both begin at the newest event, as two `tunebot serve` would
    job = st.queue.submit_train(preset="tiny", requester=asker(ALICE, "C1", "", "twice-1"))
    st.runtime.worker.start()
    try:
        assert wait_for(store, job.id, FINAL_STATES, timeout=60).state == "succeeded"
    finally:
        st.runtime.worker.stop()
    while st.notifier.tick() + second.tick():
        pass  # each reads every event of the story
    assert st.delivery.flush(10) and second.delivery.flush(10)
    [root] = top_level(st.slack)
    thread = st.slack.thread("C1", root["ts"])
    assert len(thread) == 4, [m.get("text") for m in thread]  # started, config, plot, finished
    assert len(st.slack.uploads()) == 2
    assert len(st.slack.calls("chat.postMessage")) == 3


def test_one_notifier_per_database_follows_the_stream_and_another_takes_over_when_it_stops(story):
    st, store = story, story.store
    first = Notifier(st.runtime, st.delivery, poll=0.05, lease_ttl=0.6)
    second = Notifier(st.runtime, Delivery(quick_client(st.slack), store), poll=0.05, lease_ttl=0.6)
    st.delivery.start()
    second.delivery.start()
    first.start()
    second.start()
    try:
        wait_until(lambda: first.is_leader or second.is_leader, 5, what="a notifier to lead")
        time.sleep(0.5)
        assert [first.is_leader, second.is_leader].count(True) == 1
        leader, standby = (first, second) if first.is_leader else (second, first)
        one, _ = store.add_job(Job(kind="train", model="m", user=ALICE, origin=C1))
        wait_until(lambda: root_ts(st.store, store.get(one.id)), 10, what="the first root")
        leader.stop()
        wait_until(lambda: standby.is_leader, 5, what="the other notifier to take over")
        two, _ = store.add_job(Job(kind="train", model="m", user=BOB, origin=C1))
        wait_until(lambda: root_ts(st.store, store.get(two.id)), 10, what="the second root")
    finally:
        first.stop()
        second.stop()
        second.delivery.stop()
        st.delivery.stop()
    assert len(top_level(st.slack)) == 2


def test_jobs_from_the_command_line_are_not_posted(story):
    st, store = story, story.store
    st.notifier.tick()
    job, _ = store.add_job(Job(kind="train", model="m"))
    store.transition(job.id, ["queued"], "running")
    store.add_event(job.id, "started", {"slots": ["0"], "attempt": 1, "config": None})
    assert st.notifier.tick() == 3
    assert st.delivery.flush(2)
    assert st.slack.calls() == []


def test_queued_roots_show_their_place_in_line_as_it_changes(story):
    st, store = story, story.store
    st.notifier.tick()
    first, _ = store.add_job(Job(kind="train", model="m", user=ALICE, origin=C1))
    second, _ = store.add_job(Job(kind="train", model="m", user=BOB, origin=C1))
    st.notifier.tick()
    assert "2nd in line" in blocks_text(st.slack.message("C1", root_ts(st.store, store.get(second.id))))
    store.transition(first.id, ["queued"], "running", started_at=1.0)
    st.notifier.tick()
    assert st.delivery.flush(5)
    assert "1st in line" in blocks_text(st.slack.message("C1", root_ts(st.store, store.get(second.id))))
    assert ":gear: running" in blocks_text(st.slack.message("C1", root_ts(st.store, store.get(first.id))))


def notes(slack):  # noqa: F811
    return [c.params["text"] for c in slack.calls("chat.postMessage") if c.params.get("thread_ts")]


def test_an_event_committed_after_a_later_one_is_not_skipped(story):
    st, store = story, story.store
    if store.is_sqlite:
        pytest.skip("SQLite serialises writers: its event ids become visible in order")
    st.notifier.tick()
    job, _ = store.add_job(Job(kind="train", model="m", user=ALICE, origin=C1))
    st.notifier.tick()
    with Session(store.engine) as slow:  # a writer whose id comes first but whose commit comes last
        slow.add(JobEvent(job_id=job.id, type="note", data={"text": "first"}))
        slow.flush()
        store.add_event(job.id, "note", {"text": "second"})
        assert st.notifier.tick() == 0  # it waits for the gap to fill
        slow.commit()
    assert st.notifier.tick() == 2
    assert [n.rsplit(": ", 1)[-1] for n in notes(st.slack)] == ["first", "second"]


def test_a_gap_that_never_fills_is_stepped_over(story):
    st, store = story, story.store
    notifier = Notifier(st.runtime, st.delivery, poll=0.05, gap_wait=0.3)
    notifier.tick()
    job, _ = store.add_job(Job(kind="train", model="m", user=ALICE, origin=C1))
    notifier.tick()
    lost = store.add_event(job.id, "note", {"text": "rolled back"})
    store.add_event(job.id, "note", {"text": "after"})
    with Session(store.engine) as s:  # as if its transaction had rolled back
        s.exec(delete(JobEvent).where(JobEvent.id == lost))
        s.commit()
    assert notifier.tick() == 0
    wait_until(lambda: notifier.tick() == 1, 3, interval=0.05, what="the gap to be stepped over")
    assert [n.rsplit(": ", 1)[-1] for n in notes(st.slack)] == ["after"]
