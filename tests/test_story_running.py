"""Progress posts and stall reports in running jobs' threads (bot/story/running.py), told by the
story's notifier from the job events, on SQLite and PostgreSQL, posting to the Slack stand-in."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from slack_sdk import WebClient
from sqlalchemy import update as sa_update

from bot.outbox.delivery import Delivery
from bot.schedules.spec import ScheduleSettings
from bot.story.notifier import Notifier
from bot.threads import record_root, slack_origin
from runners import events
from runners.events import EventKind
from runners.hardware import Hardware
from runners.job import Job, JobEvent
from runners.queue import JobQueue, Requester
from runners.worker import Worker, wait_for
from runners.worker import follow as worker_follow
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID
from tests.slack_standin import SlackStandin

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)


@pytest.fixture
def slack():
    with SlackStandin() as standin:
        yield standin


@pytest.fixture
def client(slack) -> WebClient:
    return WebClient(token=slack.bot_token, base_url=slack.base_url)


@pytest.fixture
def make_notifier(store, client):
    """Story notifiers with progress posts on, posting through their own outbox; stopped at the end."""
    made: list[Notifier] = []

    def make(progress: ScheduleSettings, *, runtime=None, start: bool = False) -> Notifier:
        runtime = runtime or SimpleNamespace(store=store, queue=None)
        notifier = Notifier(runtime, Delivery(client, runtime.store).start(), poll=0.05, progress=progress)
        made.append(notifier)
        return notifier.start() if start else notifier

    yield make
    for notifier in made:
        notifier.stop()
        notifier.delivery.stop()


def fake_settings(settings, **env):
    return replace(
        settings,
        llamafactory_cli=f"{sys.executable} {FAKE}",
        job_env={"FAKE_STEPS": "5", "FAKE_STEP_SECONDS": "0.1", **env},
    )


def test_progress_posts_appear_in_a_running_jobs_thread_with_an_updated_plot(
    settings, store, client, slack, make_notifier, monkeypatch
):
    monkeypatch.setattr(worker_follow, "PLOT_EVERY", 0.2)  # the runner redraws its plot this often
    s = fake_settings(settings, FAKE_STEPS="24", FAKE_STEP_SECONDS="0.25")
    queue = JobQueue(s, store, hardware=CPU)
    asker = Requester(user=HUMAN_USER_ID, origin=slack_origin(CHANNEL_ID))
    job = queue.submit_train(preset="tiny", requester=asker)
    root = client.chat_postMessage(channel=CHANNEL_ID, text=f"Train #{job.id} queued")["ts"]
    record_root(store, job.id, root)  # what the notifier records
    runtime = SimpleNamespace(store=store, queue=queue)
    every = ScheduleSettings(progress_every=1.5, stall_after=60.0)
    notifier = make_notifier(every, runtime=runtime, start=True)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        done = wait_for(store, job.id, ("succeeded", "failed"), timeout=60)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    delivery = notifier.delivery
    notifier.stop()  # waits for a sweep under way
    assert delivery.flush(timeout=10)

    thread = slack.thread(CHANNEL_ID, root)
    posts = [m for m in thread if m.get("text", "").startswith(f"Train #{job.id}: step")]
    assert len(posts) >= 2, [m.get("text") for m in slack.thread(CHANNEL_ID, root)]
    steps = [int(m["text"].split("step ")[1].split("/")[0]) for m in posts]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and all(0 < n <= 24 for n in steps)
    assert all("/24" in m["text"] for m in posts)
    assert "since the last post" in str(posts[-1]["blocks"])
    # the story's other uploads (its config, the final plot) are not progress plots
    plots = [u for u in slack.uploads() if u.thread_ts == root and "loss at step" in u.title]
    assert len(plots) == len(posts)
    assert all(u.content[:8] == b"\x89PNG\r\n\x1a\n" for u in plots)
    assert len({u.content for u in plots}) == len(plots)  # each plot drawn anew
    assert [int(u.title.split("step ")[1].split("/")[0]) for u in plots] == steps
    # each plot follows its post in the thread
    thread = slack.thread(CHANNEL_ID, root)
    progress_plots = [m for m in thread if "loss at step" in str(m.get("files"))]
    kinds = ["plot" if m in progress_plots else "post" for m in thread if m in progress_plots or m in posts]
    assert kinds == ["post", "plot"] * len(posts)


def _running_job(store, *, root: str, started_at: float) -> Job:
    """A running train job asked in the channel whose root message the notifier has posted."""
    job, _ = store.add_job(
        Job(kind="train", state="running", model="/models/tiny", user=HUMAN_USER_ID,
            origin=slack_origin(CHANNEL_ID), started_at=started_at)
    )
    record_root(store, job.id, root)
    return job


def _age_events(store, job_id: int, at: float) -> None:
    """The job's events so far happened at `at` (the runner wrote them then)."""
    with store.engine.begin() as conn:
        conn.execute(sa_update(JobEvent).where(JobEvent.job_id == job_id).values(at=at))


def test_a_stalled_job_is_reported_once_in_its_thread_with_its_last_log_lines(
    store, client, slack, make_notifier
):
    old = time.time() - 20 * 60
    job = _running_job(store, root="1700000000.000100", started_at=old - 60)
    for n in (10, 20):
        store.add_event(job.id, EventKind.PROGRESS, {"step": n, "total": 100, "loss": 2 - n / 100,
                                                    "percent": float(n)})
    # the runner's periodic word on the process log: last written 20 minutes ago, and how it ended
    tail = "loading\n[rank0]: NCCL watchdog waiting <!here>\n"
    store.add_event(job.id, EventKind.ACTIVITY, events.activity(old, 100, tail))
    _age_events(store, job.id, old)
    notifier = make_notifier(ScheduleSettings(progress_every=3600, stall_after=900))
    assert notifier.sweep_progress() == 1
    assert notifier.sweep_progress() == 0  # said once
    [post] = slack.thread(CHANNEL_ID, "1700000000.000100")
    text = str(post["blocks"])
    assert f"<@{HUMAN_USER_ID}>" in text and "looks stalled* at step 20/100" in text
    assert "NCCL watchdog waiting &lt;!here&gt;" in text
    # it moves again, then falls silent again: reported again
    store.add_event(job.id, EventKind.ACTIVITY, events.activity(time.time(), 120, tail + "step 21\n"))
    assert notifier.sweep_progress() == 0
    store.add_event(job.id, EventKind.ACTIVITY, events.activity(old, 120, tail + "step 21\n"))
    assert notifier.sweep_progress() == 1


def test_a_job_running_on_another_host_is_followed_through_the_database_not_its_files(
    store, client, slack, make_notifier
):
    job = _running_job(store, root="1700000000.000200", started_at=time.time() - 3600)
    for step in (10, 20, 30):
        store.add_event(job.id, EventKind.PROGRESS, {"step": step, "total": 100, "loss": 2 - step / 100,
                                                     "percent": float(step)})
    # a plot the store no longer has is not posted; the bot opens no path of the runner's
    store.add_event(job.id, EventKind.PLOT, events.plot(f"{job.id}/gone.png", final=False, points=3))
    notifier = make_notifier(ScheduleSettings(progress_every=600, stall_after=900))
    assert notifier.sweep_progress() == 1
    assert notifier.delivery.flush(5)
    [post] = slack.thread(CHANNEL_ID, "1700000000.000200")
    assert post["text"].startswith(f"Train #{job.id}: step 30/100") and "stalled" not in post["text"]
    assert slack.uploads() == []
    assert notifier.sweep_progress() == 0  # nothing new, and not stalled
    # the runner's plot reaches Slack through the job store: its bytes, whatever host drew it
    png = b"\x89PNG\r\n\x1a\n" + b"plot of step 40"
    key = store.put_file(job.id, "loss.png", png)
    store.add_event(job.id, EventKind.PROGRESS, {"step": 40, "total": 100, "loss": 1.6, "percent": 40.0})
    store.add_event(job.id, EventKind.PLOT, events.plot(key, final=False, points=4))
    notifier.progress.settings = ScheduleSettings(progress_every=0.001, stall_after=900)
    assert notifier.sweep_progress() == 1
    assert notifier.delivery.flush(5)
    [upload] = slack.uploads()
    assert upload.content == png and upload.thread_ts == "1700000000.000200"
    assert upload.title == f"#{job.id} loss at step 40/100"
