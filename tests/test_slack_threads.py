"""Replies in a job's thread, mentions, and datasets shared in Slack (signed Events API deliveries)."""

from __future__ import annotations

import json

from bot import uploads
from bot.threads import asked_in, channel_of, slack_origin
from runners import datasets
from runners.queue import Requester
from tests.slack_fixtures import (
    OTHER_USER_ID,
    OUTSIDER_ID,
    bot,
    bot_settings,
    db_url,
    runtime,
    slack,
    texts,
    wait_job,
)
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID, message_event

__all__ = ["bot", "bot_settings", "db_url", "runtime", "slack"]  # fixtures

ALPACA_ROWS = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(5)]


def job_thread(bot, *, run: bool = False):
    job = bot.runtime.queue.submit_train(
        preset="tiny", requester=Requester(user=HUMAN_USER_ID, origin=slack_origin(CHANNEL_ID))
    )
    ts = bot.post_job_message(job)
    if run:
        bot.runtime.start(web=False)
        assert wait_job(bot.runtime, job.id).state == "succeeded"
        bot.runtime.worker.stop()
    return bot.runtime.store.get(job.id), ts


def test_status_and_cancel_replies_act_on_the_threads_job(bot) -> None:
    job, ts = job_thread(bot)
    bot.reply(ts, "status")
    status = bot.wait_ephemeral()
    assert status["thread_ts"] == ts and f"Train #{job.id}" in status["text"]
    bot.reply(ts, "cancel", user=OTHER_USER_ID)
    assert "or an admin may cancel #" in bot.wait_ephemeral(OTHER_USER_ID)["text"]
    bot.reply(ts, f"<@{bot.slack.bot_user_id}> cancel")
    bot.wait_ephemeral(count=2)
    assert bot.runtime.store.get(job.id).state == "cancelled"
    bot.reply(ts, "resume")
    assert "is queued again" in bot.wait_ephemeral(count=3)["text"]


def test_eval_reply_queues_into_the_thread_and_a_redelivery_queues_nothing_more(bot) -> None:
    job, ts = job_thread(bot, run=True)
    bot.reply(ts, "eval dataset=demo-eval", event_id="Ev0EVAL0001")
    told = bot.wait_ephemeral()
    assert "It reports in" in told["text"]
    # Slack redelivers the same event (X-Slack-Retry-Num): acknowledged, not handled again.
    event = message_event("eval dataset=demo-eval", ts=told.get("message_ts"), thread_ts=ts)
    assert bot.event(event, event_id="Ev0EVAL0001", retry_num=1).status == 200
    bot.reply(ts, "status")  # handled after the redelivery would have been
    bot.wait_ephemeral(count=2)
    evals = [j for j in bot.runtime.store.list_jobs() if j.kind == "eval"]
    assert len(evals) == 1 and (evals[0].parent_id, asked_in(evals[0])) == (job.id, ts)
    assert len(bot.slack.ephemerals()) == 2


def test_an_outsider_reply_is_refused_and_plain_talk_is_left_alone(bot) -> None:
    job, ts = job_thread(bot, run=True)
    bot.reply(ts, "export", user=OUTSIDER_ID)
    assert "Sorry, you may not start jobs here" in bot.wait_ephemeral(OUTSIDER_ID)["text"]
    bot.reply(ts, "nice loss curve!")
    bot.reply(ts, "status?", user=OTHER_USER_ID)  # a command word with punctuation still counts
    bot.wait_ephemeral(OTHER_USER_ID)
    assert [j.kind for j in bot.runtime.store.list_jobs()] == ["train"]
    assert bot.slack.ephemerals(HUMAN_USER_ID) == []  # the remark got no answer


def test_messages_from_bots_and_outside_job_threads_are_ignored(bot) -> None:
    job, ts = job_thread(bot)
    bot.event(message_event("cancel", thread_ts=ts, bot_id="B0OTHERBOT", user="U0OTHERBOT"))
    own = bot.slack.add_message(CHANNEL_ID, "cancel", thread_ts=ts, bot=True)
    bot.event(
        message_event(
            "cancel", ts=own["ts"], thread_ts=ts, user=bot.slack.bot_user_id, bot_id=bot.slack.bot_id
        )
    )
    root = bot.slack.add_message(CHANNEL_ID, "lunch?")
    bot.reply(root["ts"], "cancel")
    bot.reply(ts, "status")  # a handled one, to know the ones before were processed
    bot.wait_ephemeral()
    assert bot.runtime.store.get(job.id).state == "queued"
    assert len(bot.slack.ephemerals()) == 1


def test_mention_help_answers_in_place_and_mentions_run_commands(bot) -> None:
    bot.mention(f"<@{bot.slack.bot_user_id}> help")
    posted = bot.slack.wait_for_call("chat.postMessage")
    assert "tunebot help" in posted.params["text"]
    mention_ts = bot.slack.messages(CHANNEL_ID)[0]["ts"]
    assert posted.params["thread_ts"] == mention_ts
    job, ts = job_thread(bot)
    bot.mention(f"<@{bot.slack.bot_user_id}> help", thread_ts=ts)
    in_thread = bot.slack.wait_for_call("chat.postMessage", lambda c: c.params.get("thread_ts") == ts)
    assert "tunebot help" in in_thread.params["text"]
    bot.mention(f"<@{bot.slack.bot_user_id}> train tiny epochs=1")
    assert "Train #2" in bot.wait_ephemeral()["text"]
    bot.mention(f"<@{bot.slack.bot_user_id}> jobs")
    listed = bot.slack.wait_for_call("chat.postMessage", lambda c: "Jobs" in c.params["text"])
    assert "#2 train queued" in listed.params["text"]


def test_train_asked_in_a_thread_tells_its_story_in_that_thread(bot) -> None:
    top = bot.slack.add_message(CHANNEL_ID, "shall we fine-tune?", user=OTHER_USER_ID)
    bot.mention(f"<@{bot.slack.bot_user_id}> train tiny epochs=1", thread_ts=top["ts"])
    assert "Train #1" in bot.wait_ephemeral()["text"]
    bot.mention(f"<@{bot.slack.bot_user_id}> train tiny epochs=1")  # at the top level: a root of its own
    assert "Train #2" in bot.wait_ephemeral(count=2)["text"]
    in_thread, top_level = bot.runtime.store.list_jobs(newest_first=False)
    assert (channel_of(in_thread), asked_in(in_thread)) == (CHANNEL_ID, top["ts"])
    assert asked_in(top_level) == ""


# --- datasets shared in Slack ----------------------------------------------------------------


def test_a_file_shared_with_dataset_add_is_checked_and_registered(bot) -> None:
    body = "\n".join(json.dumps(r) for r in ALPACA_ROWS).encode()
    event = bot.slack.share_file(CHANNEL_ID, "support.jsonl", body, text="/tune dataset add support")
    assert bot.event(event).status == 200
    posted = bot.slack.wait_for_call("chat.postMessage", timeout=10)
    assert posted.params["thread_ts"] == event["ts"]
    assert "*5 rows*, alpaca format" in texts(posted.params)
    info = datasets.get_dataset(bot.runtime.settings.data_dir, "support")
    assert (info.rows, info.format, info.source_filename) == (5, "alpaca", "support.jsonl")
    assert [c for c in bot.slack.calls("download") if c.token == bot.slack.bot_token]
    entry = bot.runtime.store.audit_log()[0]
    assert (entry.user, entry.action, entry.detail["name"]) == (HUMAN_USER_ID, "dataset add", "support")


def test_a_bad_row_is_named_and_nothing_is_registered(bot) -> None:
    rows = [*ALPACA_ROWS[:2], {"instruction": "no output here"}]
    event = bot.slack.share_file(
        CHANNEL_ID,
        "broken.jsonl",
        "\n".join(json.dumps(r) for r in rows).encode(),
        text=f"<@{bot.slack.bot_user_id}> dataset add broken",
    )
    bot.event(event)
    told = bot.wait_ephemeral()
    assert "row 3" in told["text"].lower() and told["thread_ts"] == event["ts"]
    assert datasets.list_datasets(bot.runtime.settings.data_dir) == []
    bad_type = bot.slack.share_file(CHANNEL_ID, "notes.txt", b"hello", text="/tune dataset add notes")
    bot.event(bad_type)
    assert "I need a .json or .jsonl file" in bot.wait_ephemeral(count=2)["text"]


def test_dataset_add_prompts_for_the_file_and_a_reply_with_it_registers_it(bot) -> None:
    bot.command("dataset add faq")
    prompt = bot.slack.wait_for_call("chat.postMessage", timeout=10)
    assert prompt.params["text"] == "Reply in this thread with the file for dataset faq"
    assert f"<@{HUMAN_USER_ID}>" in texts(prompt.params)
    assert "Reply to my message" in bot.wait_response()["text"]
    prompt_ts = prompt.response["ts"]
    shared = bot.slack.share_file(
        CHANNEL_ID, "faq.json", json.dumps(ALPACA_ROWS).encode(), thread_ts=prompt_ts
    )
    bot.event(shared)
    done = bot.slack.wait_for_call("chat.postMessage", count=2, timeout=10)
    assert done.params["thread_ts"] == prompt_ts
    assert done.params["text"] == "Dataset faq added: 5 rows, alpaca format"
    assert datasets.get_dataset(bot.runtime.settings.data_dir, "faq").rows == 5
    # Files shared for other reasons are left alone.
    bot.event(bot.slack.share_file(CHANNEL_ID, "photo.png", b"\x89PNG", text="our team lunch"))
    bot.command("datasets")
    assert "faq" in bot.wait_response(2)["text"]
    assert len(bot.slack.calls("chat.postMessage")) == 2


def test_dataset_add_asked_twice_in_one_thread_prompts_again_for_the_latest_name(bot) -> None:
    top = bot.slack.add_message(CHANNEL_ID, "where do datasets go?", user=HUMAN_USER_ID)
    for n, name in enumerate(("faq", "faq2"), start=1):
        bot.mention(f"<@{bot.slack.bot_user_id}> dataset add {name}", thread_ts=top["ts"])
        bot.slack.wait_for_call("chat.postMessage", count=n, timeout=10)
    prompts = bot.slack.calls("chat.postMessage")
    assert [c.params["thread_ts"] for c in prompts] == [top["ts"], top["ts"]]
    assert "file for dataset faq2" in prompts[-1].params["text"]
    bot.slack.wait_for(lambda: uploads.prompt_of(bot.runtime.store, CHANNEL_ID, top["ts"]).name == "faq2",
                       what="the second prompt to be remembered")
    assert bot.slack.ephemerals(HUMAN_USER_ID) == []  # no "something went wrong"


def test_dataset_add_where_the_bot_is_not_a_member_says_to_invite_it(bot) -> None:
    bot.slack.add_channel("C0ELSEWHERE", "elsewhere", is_member=False)
    bot.command("dataset add faq", channel="C0ELSEWHERE")
    assert "/invite @tunebot" in bot.wait_response()["text"]
    assert bot.slack.calls("chat.postMessage") == []


def test_only_allowed_people_add_datasets_from_a_shared_file(bot) -> None:
    event = bot.slack.share_file(
        CHANNEL_ID,
        "x.jsonl",
        json.dumps(ALPACA_ROWS[0]).encode(),
        user=OUTSIDER_ID,
        text="/tune dataset add sneaky",
    )
    bot.event(event)
    assert "Sorry, you may not add datasets here" in bot.wait_ephemeral(OUTSIDER_ID)["text"]
    assert datasets.list_datasets(bot.runtime.settings.data_dir) == []
    assert bot.slack.calls("download") == []
