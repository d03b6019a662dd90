"""The train form: `/tune train` opens it, a submit is checked by the engine before the ack."""

from __future__ import annotations

import time

from bot.listeners.views import train_form
from bot.threads import channel_of
from tests.slack_fixtures import OUTSIDER_ID, ack_json, bot, bot_settings, db_url, runtime, slack, texts
from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID

__all__ = ["bot", "bot_settings", "db_url", "runtime", "slack"]  # fixtures


def open_form(bot, user: str = HUMAN_USER_ID) -> dict:
    bot.command("train", user=user)
    bot.slack.wait_for_call("views.open", timeout=10)
    return bot.slack.views()[-1]


def test_a_good_form_closes_and_queues_the_job_in_the_channel_it_came_from(bot) -> None:
    view = open_form(bot)
    result = bot.submit(
        view,
        {
            "model": "tiny",
            "dataset": "demo",
            "learning_rate": "2e-3",
            "num_train_epochs": "2",
            "compute": "fp32",
        },
    )
    assert result.status == 200 and result.body == b""  # an empty ack closes the form
    [job] = bot.runtime.store.list_jobs()
    assert (job.user, channel_of(job), job.preset) == (HUMAN_USER_ID, CHANNEL_ID, "fast")  # the default
    assert job.args["learning_rate"] == 2e-3 and job.args["num_train_epochs"] == 2.0
    assert job.args["loraplus_lr_ratio"] == 16.0  # the seed recipe's (`fast` keeps it), from the form
    told = bot.wait_ephemeral()
    assert told["channel"] == CHANNEL_ID and f"Train #{job.id}" in told["text"]


def test_the_engines_complaint_shows_under_the_field_it_is_about(bot) -> None:
    view = open_form(bot)
    bad_lr = ack_json(bot.submit(view, {"model": "tiny", "dataset": "demo", "learning_rate": "fast"}))
    assert bad_lr["response_action"] == "errors"
    assert "`learning_rate` must be a number, not 'fast'" in bad_lr["errors"]["learning_rate"]
    gpu_only = ack_json(bot.submit(view, {"model": "tiny", "dataset": "demo", "compute": "bf16"}))
    assert "bf16 needs a GPU" in gpu_only["errors"]["compute"]
    no_data = ack_json(bot.submit(view, {"model": "tiny", "dataset": "nosuch", "compute": "fp32"}))
    assert "nosuch" in no_data["errors"]["dataset"]
    assert bot.runtime.store.list_jobs() == []


def test_a_pasted_yaml_in_the_form_is_the_config_and_changed_fields_go_on_top(bot) -> None:
    view = open_form(bot)
    yaml_text = (
        "model_name_or_path: tiny\ndataset: demo\ntemplate: llama3\nbf16: false\nnum_train_epochs: 1\n"
    )
    assert bot.submit(view, {"yaml": yaml_text, "num_train_epochs": "4"}).body == b""
    [job] = bot.runtime.store.list_jobs()
    assert job.args["num_train_epochs"] == 4.0 and job.spec["yaml"] == yaml_text
    assert "loraplus_lr_ratio" not in job.args  # fields left as they were are not applied
    broken = ack_json(bot.submit(view, {"yaml": "model_name_or_path: [tiny"}))
    assert "The YAML could not be read" in broken["errors"]["yaml"]


def test_someone_who_may_not_spend_gpu_time_gets_no_form_and_no_job(bot) -> None:
    bot.command("train", user=OUTSIDER_ID)
    assert "Sorry, you may not start jobs here" in bot.wait_response()["text"]
    assert bot.slack.views() == []
    # A form opened before the rules changed is still refused on submit.
    view = open_form(bot)
    refused = ack_json(
        bot.submit(view, {"model": "tiny", "dataset": "demo", "compute": "fp32"}, user=OUTSIDER_ID)
    )
    assert "Sorry, you may not" in next(iter(refused["errors"].values()))
    assert bot.runtime.store.list_jobs() == []


def test_a_check_slower_than_the_deadline_closes_the_form_and_answers_later(bot, monkeypatch) -> None:
    real = train_form.submit_form

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_form, "submit_form", slow)
    monkeypatch.setattr(train_form, "CHECK_DEADLINE_S", 0.2)
    view = open_form(bot)
    good = bot.submit(view, {"model": "tiny", "dataset": "demo", "compute": "fp32"})
    assert good.body == b"" and good.elapsed_s < 0.6
    assert "Train #1" in bot.wait_ephemeral()["text"]
    late_error = bot.submit(view, {"model": "tiny", "dataset": "demo", "compute": "bf16"})
    assert late_error.body == b""
    told = bot.wait_ephemeral(count=2)
    assert "could not be queued" in texts(told) and "bf16 needs a GPU" in told["text"]
    assert len(bot.runtime.store.list_jobs()) == 1


def test_the_forms_answer_never_holds_the_ack_and_a_second_press_makes_no_second_job(bot) -> None:
    bot.slack.delay_next("chat.postEphemeral", 4.0, times=2)
    view = open_form(bot)
    values = {"model": "tiny", "dataset": "demo", "compute": "fp32"}
    first = bot.submit(view, values)
    assert first.status == 200 and first.body == b"" and first.elapsed_s < 3.0
    second = bot.submit(view, values)  # Train pressed again on the same form
    assert second.status == 200 and second.elapsed_s < 3.0
    assert "Train #1" in bot.wait_ephemeral(count=2, timeout=15)["text"]
    assert [j.id for j in bot.runtime.store.list_jobs()] == [1]
