"""`/tune train tiny` from Slack with the runner on the Ray backend: the same story in the job's
message and thread as with the local backend, the training a Ray job on the test session's head."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from bot.threads import root_ts
from runners.runtime import Runtime
from tests.slack_fixtures import FINAL, SlackBot, bot_settings, db_url, slack, start_story, texts, wait_job
from tests.slack_signing import CHANNEL_ID

__all__ = ["bot_settings", "db_url", "slack"]  # fixtures

pytestmark = pytest.mark.ray

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def story(settings, slack, bot_settings, ray_head, tmp_path) -> Iterator[SlackBot]:
    on_ray = replace(
        settings,
        backend="ray",
        ray_address=ray_head.dashboard,
        ray_namespace=f"s{time.monotonic_ns() % 10**12}",
        ray_shared_dir=tmp_path / "shared-artifacts",
    )
    runtime = Runtime(on_ray)
    yield from start_story(slack, bot_settings, runtime)


def test_tune_train_tiny_from_slack_runs_as_a_ray_job_and_tells_the_same_story(story) -> None:
    bot = story
    ack = bot.command("train tiny epochs=2")
    assert ack.status == 200 and ack.elapsed_s < 3.0
    assert "Train #1" in bot.wait_response(timeout=120)["text"]  # the Ray cluster's capacity was asked
    [job] = bot.runtime.store.list_jobs()
    done = wait_job(bot.runtime, job.id, FINAL, timeout=300)
    assert done.state == "succeeded", f"{done.error}\n{done.log_tail}"
    assert done.handle["backend"] == "ray"

    def told() -> bool:
        thread = bot.slack.thread(CHANNEL_ID, root_ts(bot.runtime.store, done))
        root = bot.slack.message(CHANNEL_ID, root_ts(bot.runtime.store, done)) or {}
        plot = [u for u in bot.slack.uploads() if u.content.startswith(PNG)]
        return bool(plot) and any("finished" in m.get("text", "") for m in thread) and (
            "succeeded" in root.get("text", "")
        )

    bot.slack.wait_for(told, timeout=60, what="the plot, the final post and the root's final state")
    root_message_ts = root_ts(bot.runtime.store, done)
    thread_text = "\n".join(texts(m) for m in bot.slack.thread(CHANNEL_ID, root_message_ts))
    assert f"Train #{job.id} started" in thread_text and "finished" in thread_text
    edits = [c for c in bot.slack.calls("chat.update") if c.params.get("ts") == root_message_ts]
    assert any("step " in texts(c.params) for c in edits)  # live progress, from the Ray job's log
