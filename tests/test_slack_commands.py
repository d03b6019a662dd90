"""`/tune` over signed HTTP into the real app: every subcommand, its mistakes, who may, redeliveries."""

from __future__ import annotations

import sys
import types

import pytest

from bot.auth import Access
from bot.threads import asked_in, channel_of, root_ts, slack_origin
from runners.queue import Requester
from tests.slack_fixtures import (
    ADMIN_ID,
    OTHER_USER_ID,
    OUTSIDER_ID,
    ack_json,
    bot,
    bot_settings,
    db_url,
    runtime,
    slack,
    start_bot,
    texts,
    wait_job,
)
from tests.slack_signing import (
    CHANNEL_ID,
    HUMAN_USER_ID,
    new_trigger_id,
    post,
    signed_slash_command,
    stale_timestamp,
)

__all__ = ["bot", "bot_settings", "db_url", "runtime", "slack"]  # fixtures


def queued_train(bot, user: str = HUMAN_USER_ID, **pairs: str):
    return bot.runtime.queue.submit_train(
        preset="tiny", pairs=pairs, requester=Requester(user=user, origin=slack_origin(CHANNEL_ID))
    )


def trained(bot, user: str = HUMAN_USER_ID):
    """A train job that ran to success (fake CLI) and has its root message, as the notifier leaves it."""
    job = queued_train(bot, user)
    bot.post_job_message(job)
    bot.runtime.start(web=False)
    done = wait_job(bot.runtime, job.id)
    assert done.state == "succeeded", done.error
    return done


# --- help and mistakes: answered in the ack itself ------------------------------------------


def test_help_is_the_ack_and_says_who_may_start_jobs(bot) -> None:
    for text in ("help", ""):
        answer = ack_json(bot.command(text))
        shown = texts(answer)
        assert "/tune train" in shown and "/tune dataset add NAME" in shown
        assert "You may start jobs here." in shown
    outsider = texts(ack_json(bot.command("help", user=OUTSIDER_ID)))
    assert "You may not start jobs here." in outsider
    assert "/tune eval JOB" in texts(ack_json(bot.command("help eval")))
    assert bot.responses() == []  # nothing more was said


def test_a_mistyped_command_is_answered_at_once_with_a_corrected_example(bot) -> None:
    shown = texts(ack_json(bot.command("trian tiny")))
    assert "`trian` is not a tunebot command. Did you mean `train`?" in shown
    assert "Fix:" in shown
    shown = texts(ack_json(bot.command('train tiny dataset="alpaca zh')))
    assert "A quote is not closed" in shown
    assert bot.runtime.store.list_jobs() == []


# --- train ----------------------------------------------------------------------------------


def test_train_acks_at_once_then_queues_one_job_for_the_requester(bot) -> None:
    trigger = new_trigger_id()
    ack = bot.command("train tiny epochs=2", trigger_id=trigger)
    assert ack.elapsed_s < 3.0
    assert "Checking" in texts(ack_json(ack))
    answer = bot.wait_response()
    assert answer["response_type"] == "ephemeral"
    assert "Train #1" in answer["text"] and "is queued (1st in line)" in answer["text"]
    [job] = bot.runtime.store.list_jobs()
    assert (job.kind, job.user, job.request_key) == ("train", HUMAN_USER_ID, trigger)
    assert channel_of(job) == CHANNEL_ID
    assert job.args["num_train_epochs"] == 2.0
    assert asked_in(job) == ""  # its own root message and thread (the notifier posts it)
    entry = bot.runtime.store.audit_log()[0]
    assert (entry.user, entry.action, entry.job_id) == (HUMAN_USER_ID, "submit train", job.id)


def test_a_redelivered_command_makes_one_job(bot) -> None:
    request = signed_slash_command(
        "train tiny", response_url=bot.slack.new_response_url(), trigger_id=new_trigger_id()
    )
    assert post(bot.url, request).status == 200
    assert post(bot.url, request).status == 200
    bot.wait_response(2)
    assert len(bot.runtime.store.list_jobs()) == 1
    assert {r["text"].split(" (")[0] for r in bot.responses()} == {":inbox_tray: Train #1"}


def test_the_engines_refusal_is_shown_word_for_word_and_nothing_is_queued(bot) -> None:
    bot.command("train tiny foo=1 lr=fast")
    answer = bot.wait_response()
    assert "Unknown key `foo`" in answer["text"] or "must be a number" in answer["text"]
    assert answer["blocks"][0]["text"]["text"].startswith(":warning:")
    bot.command("train nosuchpreset")
    assert "nosuchpreset" in bot.wait_response(2)["text"]
    assert bot.runtime.store.list_jobs() == []


def test_a_pasted_yaml_is_the_config_with_or_without_a_code_block(bot) -> None:
    yaml_text = (
        "model_name_or_path: tiny\ndataset: demo\ntemplate: llama3\nbf16: false\nlearning_rate: 3.0e-3\n"
    )
    bot.command("train\n```\n" + yaml_text + "```")
    bot.wait_response()
    bot.command("train\n" + yaml_text.replace("3.0e-3", "2.0e-3"))
    bot.wait_response(2)
    jobs = sorted(bot.runtime.store.list_jobs(), key=lambda j: j.id)
    assert [j.args["learning_rate"] for j in jobs] == [3e-3, 2e-3]
    assert all(j.spec["yaml"] for j in jobs)


def test_train_with_no_arguments_opens_the_form_with_the_seed_defaults(bot) -> None:
    trigger = new_trigger_id()
    ack = bot.command("train", trigger_id=trigger)
    assert ack.status == 200 and ack.body == b""
    opened = bot.slack.wait_for_call("views.open", timeout=10)
    assert opened.params["trigger_id"] == trigger
    [view] = bot.slack.views()
    assert view["callback_id"] == "train_form"
    initial = {
        b["block_id"]: b["element"].get("initial_value")
        or (b["element"].get("initial_option") or {}).get("value")
        for b in view["blocks"]
        if b["type"] == "input"
    }
    assert initial["learning_rate"] == "0.0001" and initial["loraplus_lr_ratio"] == "16"
    assert initial["compute"] == "fp32"  # this host has no GPU
    assert bot.runtime.store.list_jobs() == []


def test_the_form_opens_while_every_listener_thread_waits_for_the_engine(
    slack, bot_settings, runtime, monkeypatch
) -> None:
    from bot import app as app_module

    monkeypatch.setattr(app_module, "LISTENER_THREADS", 2)
    bots = start_bot(slack, bot_settings, runtime)
    busy = next(bots)
    try:
        slots = busy.services.engine_slots
        for _ in range(2):  # the engine is busy checking other requests
            slots.acquire()
        try:
            for _ in range(2):  # each takes a listener thread and waits for a slot
                busy.command("train tiny")
            trigger = new_trigger_id()
            busy.command("train", trigger_id=trigger)
            opened = slack.wait_for_call("views.open", timeout=2.5)  # the trigger lasts 3 s
            assert opened.params["trigger_id"] == trigger
        finally:
            for _ in range(2):
                slots.release()
        assert len([busy.wait_response(n) for n in (1, 2)]) == 2
    finally:
        bots.close()


# --- who may -------------------------------------------------------------------------------


def test_an_unauthorised_user_is_refused_politely_and_nothing_is_queued(bot) -> None:
    for text in ("train tiny", "train", "dataset add mine"):
        bot.command(text, user=OUTSIDER_ID)
    answers = [bot.wait_response(i)["text"] for i in (1, 2, 3)]
    assert all("Sorry, you may not" in a for a in answers)
    assert bot.runtime.store.list_jobs() == [] and bot.slack.views() == []
    # Reading is open to everyone.
    bot.command("jobs", user=OUTSIDER_ID)
    assert "No jobs yet" in bot.wait_response(4)["text"]


def test_cancel_is_for_the_owner_or_an_admin(bot) -> None:
    job = queued_train(bot)
    bot.command(f"cancel {job.id}", user=OTHER_USER_ID)
    assert (
        f"Only the person who started it or an admin may cancel #{job.id}."
        in bot.wait_response()["text"]
    )
    assert bot.runtime.store.get(job.id).state == "queued"
    bot.command(f"cancel {job.id}", user=ADMIN_ID)
    assert f"Train #{job.id}* is cancelled" in bot.wait_response(2)["blocks"][0]["text"]["text"]
    assert bot.runtime.store.get(job.id).cancelled_by == ADMIN_ID
    bot.command(f"cancel {job.id}")
    assert "has already ended (cancelled)" in bot.wait_response(3)["text"]


# --- the other subcommands -----------------------------------------------------------------


def test_eval_export_deploy_of_a_job_go_into_its_thread(bot) -> None:
    train = trained(bot)
    bot.command(f"eval {train.id} dataset=demo-eval samples=4")
    assert f"It reports in #{train.id}'s thread." in bot.wait_response()["text"]
    bot.command(f"export #{train.id}")
    bot.wait_response(2)
    bot.command(f"deploy {train.id} mode=webchat")
    assert "TUNEBOT_WEBCHAT_CLI" in bot.wait_response(3)["text"]
    bot.command(f"deploy {train.id} mode=api")
    bot.wait_response(4)
    children = [j for j in bot.runtime.store.list_jobs(newest_first=False) if j.parent_id == train.id]
    assert [j.kind for j in children] == ["eval", "export", "deploy"]
    root = root_ts(bot.runtime.store, train)
    assert all((channel_of(j), asked_in(j)) == (CHANNEL_ID, root) for j in children)
    assert children[0].dataset == "demo-eval" and children[2].mode == "api"


def test_eval_asked_from_another_channel_needs_leave_to_start_jobs_where_the_job_reports(bot) -> None:
    train = trained(bot)
    bot.services.access = Access(admins=frozenset({ADMIN_ID}), allowed_users=frozenset({HUMAN_USER_ID}),
                                 allowed_channels=frozenset({"C0ELSEWHERE"}))
    bot.command(f"eval {train.id} dataset=demo-eval", channel="C0ELSEWHERE")
    refused = bot.wait_response()["text"]
    assert "tells its story in another channel" in refused and CHANNEL_ID in refused
    assert [j for j in bot.runtime.store.list_jobs() if j.parent_id == train.id] == []
    bot.command(f"eval {train.id} dataset=demo-eval", channel="C0ELSEWHERE", user=ADMIN_ID)
    assert f"It reports in #{train.id}'s thread." in bot.wait_response(2)["text"]


def test_undeploy_resume_and_the_errors_they_can_meet(bot) -> None:
    job = queued_train(bot)
    bot.command(f"undeploy {job.id}")
    assert f"Job #{job.id} has no running deployment." in bot.wait_response()["text"]
    bot.command(f"resume {job.id}")
    assert "only interrupted, failed or cancelled train jobs can be resumed" in bot.wait_response(2)["text"]
    bot.runtime.queue.cancel(job.id, by=HUMAN_USER_ID)
    bot.command(f"resume {job.id}")
    assert "is queued again" in bot.wait_response(3)["text"]
    assert bot.runtime.store.get(job.id).state == "queued"
    bot.command("resume banana")
    assert "`banana` is not a job id" in texts(ack_json(bot.command("resume banana")))


def test_status_jobs_and_datasets(bot) -> None:
    bot.command("datasets")
    assert "No datasets yet" in bot.wait_response()["text"]
    first, second = queued_train(bot), queued_train(bot, user=OTHER_USER_ID)  # registers the demo sets
    bot.command("datasets")
    assert "`demo-eval`" in texts(bot.wait_response(2))
    bot.reset()
    bot.command(f"status {second.id}")
    status = bot.wait_response()
    assert f"Train #{second.id}" in status["text"] and "(2nd in line)" in texts(status)
    bot.command("status")
    assert "Running and queued" in texts(bot.wait_response(2))
    bot.command("jobs")
    listed = texts(bot.wait_response(3))
    assert f"*#{first.id}*" in listed and f"*#{second.id}*" in listed
    bot.command("status 999")
    assert "There is no job #999." in bot.wait_response(4)["text"]


def test_schedule_commands_go_to_the_schedules_module(bot, monkeypatch) -> None:
    seen = {}

    def handle_schedule_command(command, *, user, channel, runtime, client):
        seen.update(name=command.name, user=user, channel=channel, runtime=runtime)
        return {"text": "2 digests", "blocks": []}

    monkeypatch.setitem(
        sys.modules,
        "bot.schedules.command",
        types.SimpleNamespace(handle_schedule_command=handle_schedule_command),
    )
    bot.command("schedule daily 09:00 Asia/Shanghai")
    assert bot.wait_response()["text"] == "2 digests"
    assert seen == {
        "name": "schedule daily",
        "user": HUMAN_USER_ID,
        "channel": CHANNEL_ID,
        "runtime": bot.runtime,
    }


# --- the HTTP endpoint itself --------------------------------------------------------------


def test_a_wrong_signature_or_a_stale_timestamp_is_refused_with_401(bot) -> None:
    assert post(bot.url, signed_slash_command("train tiny", secret="not-the-secret")).status == 401
    assert post(bot.url, signed_slash_command("train tiny", timestamp=stale_timestamp())).status == 401
    assert bot.runtime.store.list_jobs() == []
    assert bot.responses() == []


@pytest.mark.parametrize("count", [12])
def test_concurrent_commands_are_each_acked_within_slacks_3_seconds(bot, count: int) -> None:
    import concurrent.futures

    def send(i: int):
        return bot.command(f"train tiny epochs={i + 1}")

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(send, range(count)))
    assert all(r.status == 200 for r in results)
    assert max(r.elapsed_s for r in results) < 3.0
    bot.wait_response(count, timeout=60)
    assert len(bot.runtime.store.list_jobs()) == count


def test_slacks_url_check_and_the_health_route_answer(bot) -> None:
    import json
    import urllib.request

    from tests.slack_signing import sign

    check = sign(
        json.dumps({"type": "url_verification", "challenge": "c0ffee", "token": "x"}), "application/json"
    )
    assert post(bot.url, check).json() == {"challenge": "c0ffee"}
    health = bot.url.replace("/slack/events", "/healthz")
    with urllib.request.urlopen(health, timeout=5) as response:
        assert response.read() == b"ok"
