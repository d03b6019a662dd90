"""Chat with a really deployed tiny model in its thread (`llamafactory-cli api` on CPU)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from bot.chat import ANSWER_MARKER, conversation
from bot.render import render_deploy
from runners.hardware import Hardware
from runners.job import Job
from runners.runtime import Runtime
from tests.slack_fixtures import FINAL, bot, bot_settings, db_url, slack, wait_job
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID

__all__ = ["bot", "bot_settings", "db_url", "slack"]  # fixtures


@pytest.fixture
def runtime(settings) -> Iterator[Runtime]:
    """The engine with the real llamafactory-cli (this module only)."""
    rt = Runtime(settings, hardware=Hardware(host="cpuhost", gpus=(), cpu_count=os.cpu_count() or 2))
    yield rt
    rt.stop()


def test_a_reply_in_a_deployed_models_thread_is_a_chat_turn_with_its_history(bot) -> None:
    model = bot.runtime.settings.models_dir / "tiny-llama3"
    bot.command(f"deploy model={model} template=llama3")
    assert "Deploy #1" in bot.wait_response(timeout=60)["text"]
    [deployment] = bot.runtime.store.list_jobs()
    thread = bot.post_job_message(deployment)
    bot.runtime.start(web=False)
    sent: list[list[dict]] = []
    real_chat = bot.runtime.chat

    def spy(job_ref, messages, **kwargs):
        sent.append([dict(m) for m in messages])
        return real_chat(job_ref, messages, **kwargs)

    bot.runtime.chat = spy
    try:
        serving = wait_job(bot.runtime, deployment.id, ("serving", *FINAL), timeout=180)
        assert serving.state == "serving", f"{serving.error}\n{serving.log_tail}"
        # The notifier's post about it: a status post, not part of the conversation.
        bot.slack.add_message(
            CHANNEL_ID,
            render_deploy(serving, serving.url, serving.chat_url)["text"],
            thread_ts=thread,
            bot=True,
        )

        bot.reply(thread, "Hello there, model")
        first = bot.slack.wait_for_call(
            "chat.postMessage", lambda c: c.params.get("thread_ts") == thread, timeout=120
        )
        assert first.params["blocks"][0]["block_id"] == f"{ANSWER_MARKER}_{deployment.id}"
        bot.reply(thread, "status")  # a command to the bot, not a chat turn
        bot.wait_ephemeral()
        bot.reply(thread, f"<@{bot.slack.bot_user_id}> And a second question?")
        bot.slack.wait_for_call(
            "chat.postMessage", lambda c: c.params.get("thread_ts") == thread, count=2, timeout=120
        )
    finally:
        bot.runtime.chat = real_chat
        bot.runtime.queue.undeploy(deployment.id, by=HUMAN_USER_ID)
        wait_job(bot.runtime, deployment.id, FINAL, timeout=60)
    assert [m["role"] for m in sent[0]] == ["user"]
    assert sent[0][0]["content"] == "Hello there, model"
    assert [m["role"] for m in sent[1]] == ["user", "assistant", "user"]
    assert sent[1][2]["content"] == "And a second question?"
    answer_text = bot.slack.thread(CHANNEL_ID, thread)
    assert any(m.get("blocks", [{}])[0].get("block_id", "").startswith(ANSWER_MARKER) for m in answer_text)
    chats = [e for e in bot.runtime.store.audit_log() if e.action == "chat"]
    assert [(e.user, e.job_id) for e in chats] == [(HUMAN_USER_ID, deployment.id)] * 2


def test_the_conversation_is_human_turns_and_the_models_answers_only() -> None:
    bot_user, bot_id = "U0TUNEBOT", "B0TUNEBOT"

    def human(ts: str, text: str, user: str = HUMAN_USER_ID) -> dict:
        return {"ts": ts, "user": user, "text": text}

    def ours(ts: str, text: str, answer: bool) -> dict:
        blocks = [
            {
                "type": "section",
                "block_id": f"{ANSWER_MARKER}_3" if answer else "x",
                "text": {"type": "mrkdwn", "text": text},
            }
        ]
        return {"ts": ts, "user": bot_user, "bot_id": bot_id, "text": text, "blocks": blocks}

    thread = [
        ours("1.0", "Deploy #3 serving", answer=False),  # the root
        ours("2.0", "Deploy #3 is serving at http://…", answer=False),
        human("3.0", "hi &amp; hello"),
        human("3.5", "still there?"),
        ours("4.0", "Hello &lt;friend&gt;", answer=True),
        human("5.0", "status"),
        {"ts": "5.5", "user": "U0OTHERBOT", "bot_id": "B0OTHER", "text": "I am another bot"},
        {"ts": "5.7", "user": HUMAN_USER_ID, "subtype": "channel_join", "text": "joined"},
        human("6.0", f"<@{bot_user}> tell me more"),
        human("7.0", "later message"),
    ]
    turns = conversation(thread, bot_user_id=bot_user, bot_id=bot_id, root_ts="1.0", until_ts="6.0")
    assert turns == [
        {"role": "user", "content": "hi & hello\n\nstill there?"},
        {"role": "assistant", "content": "Hello <friend>"},
        {"role": "user", "content": "tell me more"},
    ]
    assert conversation(thread[:2], bot_user_id=bot_user, bot_id=bot_id, root_ts="1.0") == []


def test_a_model_answer_that_says_channel_pings_nobody_even_sent_as_plain_text(bot) -> None:
    deployment, _ = bot.runtime.store.add_job(
        Job(kind="deploy", state="serving", model="/models/tiny", user=HUMAN_USER_ID,
            origin={"channel": CHANNEL_ID})
    )
    thread = bot.post_job_message(deployment)
    bot.runtime.chat = lambda job_ref, messages, **kwargs: "hi <!channel>"
    bot.slack.fail_next("chat.postMessage", 200, error="invalid_blocks")  # sent again as plain text
    bot.reply(thread, "say something")
    bot.slack.wait_for_call("chat.postMessage", lambda c: c.ok and c.params.get("thread_ts") == thread)
    calls = [c for c in bot.slack.calls("chat.postMessage") if c.params.get("thread_ts") == thread]
    assert [c.ok for c in calls] == [False, True] and "blocks" not in calls[1].params
    for call in calls:
        assert "<!channel>" not in call.params["text"] + json.dumps(call.params.get("blocks") or [])
    assert calls[1].params["text"] == "hi &lt;!channel&gt;"
