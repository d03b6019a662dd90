"""bot.render: Block Kit that Slack accepts, shows what matters, escapes, and never leaks a key."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from bot.chat import render_chat_answer
from bot.parsing import SUBCOMMANDS, parse_command
from bot.render import (
    ACTION_CANCEL,
    ACTION_DEPLOY,
    ACTION_EVAL,
    ACTION_EXPORT,
    ACTION_RESUME,
    ACTION_UNDEPLOY,
    FORM_FIELDS,
    MAX_BLOCKS,
    SECTION_TEXT_MAX,
    code_block,
    escape,
    form_defaults,
    job_actions,
    message,
    modal_values,
    render_deploy,
    render_deploy_key,
    render_error,
    render_eval_result,
    render_export,
    render_failure,
    render_finished,
    render_help,
    render_job_message,
    render_jobs,
    render_modal_errors,
    render_started,
    render_train_modal,
    slack_len,
    truncate,
    truncate_tail,
)
from bot.render.replies import render_dataset_added
from runners.errors import UserError
from runners.job import Job
from runners.llamafactory.recipes import PRESETS, train_recipe
from tests.slack_signing import fill_view_state
from tests.slack_standin import block_kit_problems, view_problems

SECRET = "tb-SECRET-api-key-never-render-me"
ALICE = "U0ALICE01"
KINDS = ("train", "eval", "export", "deploy")
STATES = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
    "starting",
    "serving",
    "stopped",
)


def make_job(**changes: Any) -> Job:
    now = time.time()
    values: dict[str, Any] = dict(
        id=12,
        kind="train",
        state="running",
        model="/models/Meta-Llama-3-8B-Instruct",
        dataset="alpaca_zh",
        method="lora",
        preset="seed",
        user=ALICE,
        origin={"channel": "C0TUNEBOT"},
        created_at=now - 900,
        started_at=now - 600,
        progress={
            "step": 40,
            "total": 100,
            "loss": 1.23456,
            "eval_loss": None,
            "lr": 9.5e-5,
            "epoch": 1.2,
            "percent": 40.0,
            "elapsed_s": 600.0,
            "remaining_s": 905.0,
            "tokens_per_s": 1893.2,
        },
        api_key=SECRET,
        url="http://gpu-1:8001/v1",
        chat_url="http://gpu-1:8080/chat/15/",
        port=8001,
        error="CUDA out of memory.",
        advice="Lower per_device_train_batch_size or cutoff_len.",
        log_tail="line 1\nline 2\ntorch.OutOfMemoryError: CUDA out of memory.",
        exit_code=1,
    )
    values.update(changes)
    return Job(**values)


def assert_valid(payload: dict[str, Any]) -> None:
    assert isinstance(payload["text"], str) and payload["text"].strip()
    assert slack_len(payload["text"]) <= 3000
    problems = block_kit_problems(payload["blocks"])
    assert not problems, problems


def all_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False)


def buttons(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]


def section_texts(payload: dict[str, Any]) -> str:
    """The mrkdwn a person reads (plain_text, e.g. a header, is shown as is: Slack parses no markup there)."""
    texts = []
    for block in payload["blocks"]:
        objects = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
        texts.extend(o["text"] for o in objects if isinstance(o, dict) and o.get("type") == "mrkdwn")
    return "\n".join(texts)


def every_rendering(job: Job) -> list[dict[str, Any]]:
    samples = [{"prompt": "hi", "predict": "hello", "label": "hello"}]
    return [
        render_job_message(job),
        render_job_message(job, queue_position=2),
        render_started(job),
        render_finished(job),
        render_failure(job, job.error, job.advice, job.log_tail),
        render_eval_result(job, {"rouge-1": 40.0}, {"rouge-1": 38.0}, samples),
        render_export(job, "oss://bucket/exports/12/"),
        render_deploy(job, job.url, job.chat_url),
        render_jobs([job]),
    ]


# -- the job message ------------------------------------------------------------------------------


def test_a_running_job_shows_who_what_and_live_progress() -> None:
    payload = render_job_message(make_job())
    assert_valid(payload)
    text = section_texts(payload)
    assert payload["blocks"][0]["type"] == "header"
    assert "Train #12" in payload["blocks"][0]["text"]["text"]
    assert "Meta-Llama-3-8B-Instruct" in payload["blocks"][0]["text"]["text"]
    for expected in (
        f"<@{ALICE}>",
        "`/models/Meta-Llama-3-8B-Instruct`",
        "`alpaca_zh`",
        "lora",
        ":gear: running",
        "▓▓▓▓▓▓▓▓░░░░░░░░░░░░ 40%",
        "step 40/100",
        "loss 1.235",
        "ETA 15m 05s",
        "1,893 tokens/s",
    ):
        assert expected in text, expected
    assert "40%" in payload["text"] and "Train #12" in payload["text"]
    assert [b["action_id"] for b in buttons(payload)] == [ACTION_CANCEL]


def test_a_queued_job_says_its_place_in_line_and_has_no_progress() -> None:
    payload = render_job_message(make_job(state="queued", progress={}, started_at=None), queue_position=3)
    assert "3rd in line" in section_texts(payload)
    assert "step" not in section_texts(payload)


@pytest.mark.parametrize(
    ("kind", "state", "expected"),
    [
        ("train", "queued", [ACTION_CANCEL]),
        ("train", "running", [ACTION_CANCEL]),
        ("train", "succeeded", [ACTION_EVAL, ACTION_EXPORT, ACTION_DEPLOY]),
        ("train", "failed", [ACTION_RESUME]),
        ("train", "cancelled", [ACTION_RESUME]),
        ("train", "interrupted", [ACTION_RESUME]),
        ("eval", "running", [ACTION_CANCEL]),
        ("eval", "succeeded", []),
        ("eval", "failed", []),
        ("export", "running", [ACTION_CANCEL]),
        ("export", "succeeded", [ACTION_DEPLOY]),
        ("deploy", "queued", [ACTION_CANCEL]),
        ("deploy", "starting", [ACTION_CANCEL]),
        ("deploy", "serving", [ACTION_UNDEPLOY]),
        ("deploy", "stopped", []),
        ("deploy", "failed", []),
    ],
)
def test_buttons_fit_the_kind_and_state(kind: str, state: str, expected: list[str]) -> None:
    job = make_job(kind=kind, state=state)
    assert job_actions(job) == expected
    payload = render_job_message(job)
    assert_valid(payload)
    found = buttons(payload)
    assert [b["action_id"] for b in found] == expected
    assert all(b["value"] == "12" for b in found)


def test_cancel_and_undeploy_ask_for_confirmation() -> None:
    [cancel] = buttons(render_job_message(make_job()))
    assert cancel["style"] == "danger" and "Cancel Train #12?" in cancel["confirm"]["title"]["text"]
    assert "resumed" in cancel["confirm"]["text"]["text"]
    [undeploy] = buttons(render_job_message(make_job(kind="deploy", state="serving", id=15)))
    assert undeploy["confirm"]["confirm"]["text"] == "Undeploy" and undeploy["value"] == "15"


def test_a_serving_deployment_shows_its_urls_but_not_its_key() -> None:
    payload = render_job_message(make_job(kind="deploy", state="serving", id=15, parent_id=12))
    text = section_texts(payload)
    assert "<http://gpu-1:8080/chat/15/>" in text and "`http://gpu-1:8001/v1`" in text
    assert "#12" in text
    assert SECRET not in all_text(payload)


def test_a_failed_job_message_gives_the_reason_briefly() -> None:
    payload = render_job_message(make_job(state="failed", error="x" * 5000))
    assert_valid(payload)
    assert "*Failed:*" in section_texts(payload)


def test_every_state_and_kind_renders_valid_block_kit() -> None:
    for kind in KINDS:
        for state in STATES:
            for payload in every_rendering(make_job(kind=kind, state=state)):
                assert_valid(payload)


def test_no_rendering_ever_contains_the_api_key() -> None:
    for kind in KINDS:
        for state in STATES:
            for payload in every_rendering(make_job(kind=kind, state=state, parent_id=3, cancelled_by=ALICE)):
                assert SECRET not in all_text(payload)
    view = render_train_modal({**PRESETS["seed"].values, "api_key": SECRET})
    assert SECRET not in all_text(view)


def test_only_the_deploy_key_message_shows_the_key_it_is_given() -> None:
    job = make_job(kind="deploy", state="serving", id=15)
    payload = render_deploy_key(job, SECRET, model_name="tunebot-12")
    assert_valid(payload)
    assert SECRET in section_texts(payload)
    assert "http://gpu-1:8001/v1/chat/completions" in section_texts(payload)
    assert "tunebot-12" in section_texts(payload)
    assert SECRET not in payload["text"]  # the fallback shows in notifications


# -- escaping and limits ------------------------------------------------------------------------


def test_what_people_and_logs_wrote_is_escaped() -> None:
    job = make_job(model="<!channel> & co", dataset="<@U999>", state="failed", error="<!here> broke")
    for payload in every_rendering(job):
        text = section_texts(payload)
        assert "<!channel>" not in text and "<!here>" not in text and "<@U999>" not in text
    assert "&lt;!channel&gt; &amp; co" in section_texts(render_job_message(job))


def test_fallback_texts_are_escaped_once_and_keep_the_mentions_tunebot_meant() -> None:
    job = make_job(model="<!channel> & co", dataset="<@U999>", state="failed", error="<!here> broke")
    answer = render_chat_answer("hi <!channel>", make_job(kind="deploy", state="serving"))
    payloads = [
        *every_rendering(job),
        render_export(job, "<!everyone>"),
        render_error(UserError("<!channel> is not a model", fix="model=<!here>")),
        answer,
        render_dataset_added(SimpleNamespace(name="x", rows=1, format="<!channel>", samples=[])),
    ]
    for payload in payloads:
        for ping in ("<!channel>", "<!here>", "<!everyone>", "<@U999>"):
            assert ping not in payload["text"], payload["text"]
        assert "&amp;amp;" not in payload["text"] and "&amp;lt;" not in payload["text"]
    assert answer["text"] == "hi &lt;!channel&gt;"
    assert "&lt;!channel&gt; &amp; co" in render_job_message(job)["text"]
    cancelled = render_finished(make_job(state="cancelled", cancelled_by="ops&dev"))
    assert f"<@{ALICE}>" in cancelled["text"] and "by ops&amp;dev" in cancelled["text"]


def test_a_huge_log_tail_is_cut_to_its_last_lines_within_a_block() -> None:
    tail = "\n".join(f"log line {i} " + "x" * 80 for i in range(5000)) + "\nRuntimeError: the real cause"
    payload = render_failure(make_job(state="failed"), "reason " * 1000, "advice " * 1000, tail)
    assert_valid(payload)
    block = payload["blocks"][-2]["text"]["text"]  # the code block, before the Resume button
    assert block.startswith("```\n…") and block.endswith("\n```") and block.count("```") == 2
    assert "RuntimeError: the real cause" in block and "log line 0 " not in block
    assert slack_len(block) <= SECTION_TEXT_MAX


def test_failure_mentions_the_requester_with_reason_and_advice() -> None:
    job = make_job(state="failed")
    payload = render_failure(job, "CUDA ran out of memory.", "Lower the batch size.", job.log_tail)
    text = section_texts(payload)
    assert text.startswith(f":x: <@{ALICE}> *Train #12 failed:* CUDA ran out of memory.")
    assert "*What to try:* Lower the batch size." in text
    assert "```\nline 1\nline 2\ntorch.OutOfMemoryError" in text
    assert [b["action_id"] for b in buttons(payload)] == [ACTION_RESUME]
    bare = render_failure(make_job(state="failed", kind="eval"), None, None, None)
    assert "exited with code 1" in section_texts(bare) and len(bare["blocks"]) == 1


def test_code_blocks_cannot_be_closed_early_by_the_log() -> None:
    block = code_block("before ``` after")
    assert block.count("```") == 2


def test_truncation_counts_like_slack_and_marks_the_cut() -> None:
    assert slack_len("a😀") == 3
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 4) == "abc"
    assert slack_len(truncate("😀" * 100, 11)) <= 11
    assert truncate_tail("one\ntwo\nthree", 8) == "…\nthree"
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"


def test_more_than_fifty_blocks_are_capped_with_a_note() -> None:
    payload = message("x", [{"type": "divider"}] * 120)
    assert len(payload["blocks"]) == MAX_BLOCKS
    assert "71 more" in payload["blocks"][-1]["elements"][0]["text"]


# -- thread posts -------------------------------------------------------------------------------


def test_started_post_says_where_and_what_and_that_the_config_is_attached() -> None:
    job = make_job(host="gpu-1", slots=["0", "1"], attempt=2)
    payload = render_started(job)
    assert_valid(payload)
    text = section_texts(payload)
    assert "*Train #12 started* on gpu-1 (2 GPUs: 0,1)" in text
    assert "Resuming from its last checkpoint" in text and "config" in text
    assert "config" not in section_texts(render_started(job, config_attached=False))


def test_finished_post_mentions_the_requester_with_duration_and_final_loss() -> None:
    job = make_job(state="succeeded", finished_at=time.time())
    payload = render_finished(job)
    assert_valid(payload)
    text = section_texts(payload)
    assert f"<@{ALICE}> *Train #12 finished* in 10m 00s." in text
    assert "Final loss 1.235" in text and "40 steps" in text
    assert [b["action_id"] for b in buttons(payload)] == [ACTION_EVAL, ACTION_EXPORT, ACTION_DEPLOY]


def test_finished_post_for_cancelled_interrupted_stopped_and_failed() -> None:
    cancelled = section_texts(render_finished(make_job(state="cancelled", cancelled_by="U0BOB0001")))
    assert "was cancelled* by <@U0BOB0001> after" in cancelled and "`resume`" in cancelled
    assert "interrupted" in section_texts(render_finished(make_job(state="interrupted")))
    stopped = section_texts(render_finished(make_job(kind="deploy", state="stopped")))
    assert "stopped" in stopped and "no longer answers" in stopped
    failed = render_finished(make_job(state="failed"))
    assert "failed:* CUDA out of memory." in section_texts(failed)


def test_eval_result_is_a_table_with_changes_and_three_samples() -> None:
    job = make_job(kind="eval", state="succeeded", id=13, parent_id=12, dataset="eval_zh")
    metrics = {
        "predict_rouge-1": 45.2112,
        "predict_rouge-2": 20.0,
        "predict_rouge-l": 30.5,
        "predict_bleu-4": 15.2,
    }
    previous = {"rouge-1": 43.1, "rouge-2": 20.5, "rouge-l": 30.5}
    samples = [{"prompt": f"question {i}", "predict": f"answer {i}", "label": f"truth {i}"} for i in range(5)]
    payload = render_eval_result(job, metrics, previous, samples, previous_job_id=9)
    assert_valid(payload)
    text = section_texts(payload)
    assert "Eval #13 of #12* on `eval_zh`" in text
    assert "ROUGE-1    45.21    +2.11" in text
    assert "ROUGE-2    20.00    -0.50" in text
    assert "ROUGE-L    30.50    +0.00" in text
    assert "BLEU-4     15.20      new" in text
    assert "against #9" in text
    assert text.count("*Sample ") == 3 and "question 3" not in text
    assert "*Model:* answer 0" in text and "*Expected:* truth 0" in text
    assert "ROUGE-1 45.21" in payload["text"]


def test_a_first_eval_has_no_change_column() -> None:
    payload = render_eval_result(make_job(kind="eval", state="succeeded"), {"rouge-1": 1.0}, None, [])
    text = section_texts(payload)
    assert "Change" not in text and "first eval" in text


def test_an_eval_on_a_gpu_says_how_it_generated() -> None:
    metrics = {"rouge-1": 4.7, "samples_per_s": 1.149, "runtime_s": 55.7, "eval_sorted": True,
               "eval_plan": {"gpu": "NVIDIA H200", "batch": 64, "n_batches": 1}}
    payload = render_eval_result(make_job(kind="eval", state="succeeded"), metrics, None, [])
    assert_valid(payload)
    text = all_text(payload)
    assert "1.15 samples/s (56 s generating)" in text
    assert "batch 64 fitted to the H200's memory" in text and "sorted by length" in text
    unrestored = all_text(render_eval_result(make_job(kind="eval", state="succeeded"),
                                             {**metrics, "eval_order_restored": False}, None, []))
    assert "stays in that order" in unrestored and "kept in their order" not in unrestored
    cpu = all_text(render_eval_result(make_job(kind="eval", state="succeeded"), {"rouge-1": 4.7}, None, []))
    assert "Generated:" not in cpu
    odd = {"rouge-1": 4.7, "samples_per_s": True, "eval_plan": {"batch": "many"}, "eval_sorted": "yes"}
    assert "Generated:" not in all_text(render_eval_result(make_job(kind="eval"), odd, None, []))


def test_long_samples_are_cut_to_fit() -> None:
    samples = [{"prompt": "p" * 9000, "predict": "模" * 9000, "label": "l" * 9000}] * 3
    assert_valid(render_eval_result(make_job(kind="eval"), {"rouge-1": 1.0}, None, samples))


def test_export_shows_a_link_or_a_path_and_offers_deploy() -> None:
    job = make_job(kind="export", state="succeeded", id=14, parent_id=12)
    url = "https://bucket.oss-cn-hangzhou.aliyuncs.com/exports/14/?Signature=a&Expires=1"
    linked = render_export(job, url)
    assert_valid(linked)
    assert "Signature=a&amp;Expires=1" in section_texts(linked)
    assert "`/data/exports/14`" in section_texts(render_export(job, "/data/exports/14"))
    assert [b["action_id"] for b in buttons(linked)] == [ACTION_DEPLOY]


def test_deploy_post_gives_the_urls_and_says_the_key_went_privately() -> None:
    job = make_job(kind="deploy", state="serving", id=15, parent_id=12)
    payload = render_deploy(job, job.url, job.chat_url)
    assert_valid(payload)
    text = section_texts(payload)
    assert "<http://gpu-1:8080/chat/15/>" in text and "`http://gpu-1:8001/v1`" in text
    assert "sent to <@U0ALICE01> privately" in text and "chat with the model" in text
    assert [b["action_id"] for b in buttons(payload)] == [ACTION_UNDEPLOY]


# -- lists, help, errors ------------------------------------------------------------------------


def test_jobs_list_fits_slack_however_many_jobs() -> None:
    jobs = [make_job(id=i, state=STATES[i % len(STATES)], model="/m/" + "x" * 200) for i in range(300)]
    payload = render_jobs(jobs)
    assert_valid(payload)
    assert "#0" in section_texts(payload)
    empty = render_jobs([])
    assert "No jobs yet" in empty["text"]


def test_help_lists_every_command_and_who_may_use_gpus() -> None:
    payload = render_help("Nobody but admins may start jobs: TUNEBOT_ALLOWED_USERS is empty.")
    assert_valid(payload)
    text = section_texts(payload)
    for spec in SUBCOMMANDS.values():
        if spec.name != "help":
            assert escape(spec.usage) in text, spec.usage
    assert "TUNEBOT_ALLOWED_USERS is empty" in text
    assert "chat turn" in text
    topic = section_texts(render_help("ok", "deploy"))
    assert "/tune deploy JOB [mode=api|webchat]" in topic and "/tune deploy 12 mode=api" in topic


def test_error_shows_the_problem_and_a_corrected_example() -> None:
    try:
        parse_command("trian seed")
    except UserError as error:
        payload = render_error(error)
    assert_valid(payload)
    text = section_texts(payload)
    assert ":warning: `trian` is not a tunebot command. Did you mean `train`?" in text
    assert "*Fix:* `/tune train seed" in text
    multi = render_error(UserError("Bad YAML.", fix="```\nlearning_rate: 1.0e-4\n```"))
    assert "ˋˋˋ" in section_texts(multi) and section_texts(multi).count("```") == 2


# -- the train form -----------------------------------------------------------------------------


def seed_defaults() -> dict[str, Any]:
    return {
        **PRESETS["seed"].values,
        "model_name_or_path": "/models/Meta-Llama-3-8B-Instruct",
        "dataset": "train",
    }


def test_the_train_form_mirrors_the_webui_and_starts_at_the_seed_preset() -> None:
    view = render_train_modal(seed_defaults(), private_metadata='{"channel": "C1"}')
    assert not view_problems(view), view_problems(view)
    assert view["callback_id"] == "train_form" and view["private_metadata"] == '{"channel": "C1"}'
    inputs = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert list(inputs) == [f.key for f in FORM_FIELDS]
    initial = {
        key: b["element"].get("initial_value") or (b["element"].get("initial_option") or {}).get("value")
        for key, b in inputs.items()
    }
    assert initial == {
        "model": "/models/Meta-Llama-3-8B-Instruct",
        "method": "lora",
        "dataset": "train",
        "learning_rate": "0.0001",
        "compute": "bf16",
        "gradient_accumulation_steps": "2",
        "loraplus_lr_ratio": "16",
        "lora_target": "all",
        "num_train_epochs": "3",
        "cutoff_len": "2048",
        "per_device_train_batch_size": "2",
        "yaml": None,
    }
    assert inputs["yaml"]["element"]["multiline"] is True
    methods = [o["value"] for o in inputs["method"]["element"]["options"]]
    assert methods == ["lora", "qlora", "freeze", "full"]
    assert [o["value"] for o in inputs["compute"]["element"]["options"]][:3] == ["bf16", "fp16", "fp32"]


def test_form_defaults_understand_llamafactory_names() -> None:
    assert form_defaults({"finetuning_type": "lora", "quantization_bit": 4})["method"] == "qlora"
    assert form_defaults({"fp16": True})["compute"] == "fp16"
    assert form_defaults({"bf16": False})["compute"] == "fp32"
    assert form_defaults({"lr": 2e-5, "epochs": 1.5})["learning_rate"] == "2e-05"


def test_the_form_round_trip_gives_pairs_the_engine_accepts() -> None:
    view = render_train_modal(seed_defaults())
    submitted = {**view, "state": fill_view_state(view, {"learning_rate": "2e-4", "method": "qlora"})}
    values = modal_values(submitted)
    assert values["learning_rate"] == "2e-4" and values["method"] == "qlora" and values["compute"] == "bf16"
    assert "yaml" not in values
    assert modal_values(submitted["state"]) == values
    recipe = train_recipe(pairs=values)
    assert recipe.args["learning_rate"] == "2e-4" and recipe.method == "qlora"
    assert recipe.args["model_name_or_path"] == "/models/Meta-Llama-3-8B-Instruct"
    assert recipe.args["gradient_accumulation_steps"] == "2"


def test_with_a_pasted_yaml_only_changed_fields_go_on_top() -> None:
    view = render_train_modal(seed_defaults())
    pasted = "```yaml\nmodel_name_or_path: /models/qwen\nlearning_rate: 5.0e-5\n```"
    state = fill_view_state(view, {"yaml": pasted, "num_train_epochs": "1"})
    values = modal_values({**view, "state": state})
    assert values == {"yaml": pasted, "num_train_epochs": "1"}


def test_a_cleared_field_is_left_out() -> None:
    view = render_train_modal(seed_defaults())
    values = modal_values({**view, "state": fill_view_state(view, {"lora_target": ""})})
    assert "lora_target" not in values


def test_engine_errors_land_under_their_field() -> None:
    def block_of(field: str | None, values: dict[str, str] | None = None) -> str:
        answer = render_modal_errors(UserError("bad", field=field, fix="x"), values)
        assert answer["response_action"] == "errors"
        [(block, text)] = answer["errors"].items()
        assert text == "bad\nFix: x"
        return block

    assert block_of("learning_rate") == "learning_rate"
    assert block_of("lr") == "learning_rate"
    assert block_of("model_name_or_path") == "model"
    assert block_of("compute") == "compute"
    assert block_of("finetuning_type") == "method"
    assert block_of("stage", {"yaml": "stage: pt"}) == "yaml"
    assert block_of(None) == "model"


def test_form_labels_and_hints_fit_slack() -> None:
    view = render_train_modal({"model": "m" * 5000})
    assert not view_problems(view)
    for block in view["blocks"]:
        if block["type"] == "input":
            assert len(block["label"]["text"]) <= 150
            assert len(block.get("hint", {}).get("text", "")) <= 150
    assert re.fullmatch(r".{1,24}", view["title"]["text"])


def test_an_eval_with_base_scores_shows_the_gain_over_the_base_model() -> None:
    job = make_job(kind="eval", state="succeeded", id=13, parent_id=12, dataset="eval_zh")
    metrics = {"rouge-l": 41.2, "bleu-4": 10.0, "base": {"rouge-l": 28.9, "bleu-4": 12.5}}
    payload = render_eval_result(job, metrics, None, [])
    assert_valid(payload)
    text = section_texts(payload)
    assert "ROUGE-L 41.2 (base 28.9, *+12.3*)" in text
    assert "BLEU-4 10.0 (base 12.5, *-2.5*)" in text
    assert "ROUGE-L    41.20    28.90   +12.30" in text  # the table's Base and Gain columns
    assert "ROUGE-L 41.2 (base 28.9, +12.3)" in payload["text"]


def test_the_terminal_shows_the_gain_over_the_base_model_too() -> None:
    from bot.cli.terminal import metrics_table

    table = metrics_table({"rouge-l": 41.2, "rouge-1": 50.0, "base": {"rouge-l": 28.9}})
    assert "ROUGE-L 41.2 (base 28.9, +12.3)" in table
    assert "ROUGE-1 50.0" in table and "ROUGE-1 50.0 (" not in table


@pytest.mark.parametrize("state", ["succeeded", "cancelled", "failed", "interrupted"])
def test_a_finished_job_keeps_no_live_eta(state: str) -> None:
    progress = {"step": 40, "total": 100, "percent": 40.0, "remaining_s": 403.0, "loss": 1.2}
    now = time.time()
    job = make_job(state=state, progress=progress, started_at=now - 60, finished_at=now)
    text = all_text(render_job_message(job))
    assert "ETA" not in text and "step 40/100" in text and "ran 1m 00s" in text
    running = all_text(render_job_message(make_job(state="running", progress=progress, started_at=now - 60)))
    assert "ETA 6m 43s" in running


def test_a_deploy_of_a_merged_model_says_merged() -> None:
    from runners.llamafactory.recipes import source_from_job

    export = make_job(kind="export", state="succeeded", artifacts={"model": "/data/jobs/3/model"},
                      args={"template": "llama3"})
    assert source_from_job(export, "deploy").finetuning_type == "merged"


def test_an_eval_whose_base_run_failed_says_there_is_no_comparison() -> None:
    job = make_job(kind="eval", state="succeeded", id=13, spec={"base": {"key": "k", "run": True}})
    text = all_text(render_eval_result(job, {"rouge-l": 41.2}, None, []))
    assert "The base model's eval failed" in text and "base 2" not in text
