"""End to end: a signed `/tune train tiny` -> real CPU training with LLaMA-Factory -> the job's
root message edited with its progress, and its thread: the started post with the config, the loss
plot, the final state. The app, the runner, the notifier and the outbox are the real ones."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from bot.threads import root_ts
from runners.hardware import Hardware
from runners.runtime import Runtime
from tests.slack_fixtures import FINAL, SlackBot, bot_settings, db_url, slack, start_story, texts, wait_job
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID

__all__ = ["bot_settings", "db_url", "slack"]  # fixtures

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def story(settings, slack, bot_settings) -> Iterator[SlackBot]:
    runtime = Runtime(settings, hardware=Hardware(host="cpuhost", gpus=(), cpu_count=os.cpu_count() or 2))
    yield from start_story(slack, bot_settings, runtime)


def test_train_tiny_from_slack_tells_its_story_in_its_message_and_thread(story) -> None:
    bot = story
    ack = bot.command("train tiny epochs=4")
    assert ack.status == 200 and ack.elapsed_s < 3.0
    assert "Train #1" in bot.wait_response(timeout=60)["text"]
    [job] = bot.runtime.store.list_jobs()
    done = wait_job(bot.runtime, job.id, FINAL, timeout=300)
    assert done.state == "succeeded", f"{done.error}\n{done.log_tail}"
    job = bot.runtime.store.get(job.id)

    def root_message_ts() -> str:  # the ts of the job's root message, once the notifier recorded it
        return root_ts(bot.runtime.store, job)

    def told() -> bool:
        plot = [u for u in bot.slack.uploads() if u.content.startswith(PNG)]
        thread = bot.slack.thread(CHANNEL_ID, root_message_ts())
        finished = any("finished" in m.get("text", "") for m in thread)
        root = bot.slack.message(CHANNEL_ID, root_message_ts()) or {}
        return bool(plot) and finished and "succeeded" in root.get("text", "")

    bot.slack.wait_for(told, timeout=60, what="the plot, the final post and the root's final state")
    root = bot.slack.message(CHANNEL_ID, root_message_ts())
    assert f"Train #{job.id}" in root["text"] and root.get("edited")
    assert ":white_check_mark: succeeded" in texts(root)
    # The root was edited with live progress on the way (a text progress bar with the step).
    edits = [c for c in bot.slack.calls("chat.update") if c.params.get("ts") == root_message_ts()]
    shown = [texts(c.params) for c in edits]
    assert any(re.search(r"step \d+/\d+", s) for s in shown), shown
    assert any("running" in s for s in shown)

    thread = bot.slack.thread(CHANNEL_ID, root_message_ts())
    thread_text = "\n".join(texts(m) for m in thread)
    assert f"Train #{job.id} started" in thread_text
    assert f"<@{HUMAN_USER_ID}>" in thread_text and "finished" in thread_text
    uploads = {u.filename: u for u in bot.slack.uploads()}
    plot = next(u for u in uploads.values() if u.content.startswith(PNG))
    config = next(u for name, u in uploads.items() if name.endswith((".yaml", ".yml")))
    assert plot.thread_ts == config.thread_ts == root_message_ts()
    assert b"num_train_epochs: 4" in config.content
    # In Slack's order: the started post before the plot and the final post.
    order = [m.get("text", "") for m in thread]
    started = next(i for i, t in enumerate(order) if "started" in t)
    finished = next(i for i, t in enumerate(order) if "finished" in t)
    assert started < finished
