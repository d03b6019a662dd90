"""bot/story/posts.py: which posts each job event calls for (pure: no Slack, no database)."""

from __future__ import annotations

import json

import pytest

from bot.story.posts import (
    EDIT_ROOT,
    EPHEMERAL,
    THREAD,
    UPLOAD,
    Post,
    export_location,
    previous_eval_of,
    redact_config,
    root_message,
    thread_posts,
)
from runners.job import Job, JobEvent

from .slack_standin import block_kit_problems

T0 = 1_790_000_000.0


def job(**values) -> Job:
    base = dict(
        id=12,
        kind="train",
        state="running",
        model="/models/Meta-Llama-3-8B-Instruct",
        dataset="alpaca_zh",
        method="lora",
        user="U0ALICE01",
        origin={"channel": "C1"},
        work_dir="/data/jobs/12",
        created_at=T0,
        started_at=T0 + 5,
        host="gpu1",
        slots=["0"],
        progress={"step": 80, "total": 80, "loss": 1.234, "percent": 100.0, "tokens_per_s": 1893.2},
    )
    base.update(values)
    return Job(**base)


def event(type_: str, **data) -> JobEvent:
    return JobEvent(id=100, job_id=12, at=T0 + 60, type=type_, data=data)


def text_of(post: Post) -> str:
    return json.dumps(post.blocks) + post.text


def only(posts: list[Post], action: str) -> list[Post]:
    return [p for p in posts if p.action == action]


def check_blocks(posts: list[Post]) -> None:
    for post in posts:
        if post.blocks is not None:
            assert block_kit_problems(post.blocks) == [], post


@pytest.mark.parametrize("state", ["queued", "running", "starting"])
def test_states_on_the_way_only_edit_the_root(state):
    assert thread_posts(job(state=state), event("state", state=state)) == [Post(EDIT_ROOT)]


def test_progress_edits_the_root_only():
    assert thread_posts(job(), event("progress", step=3, total=80, loss=2.0)) == [Post(EDIT_ROOT)]


def test_started_posts_in_the_thread_with_the_exact_config_attached():
    posts = thread_posts(job(), event("started", slots=["0"], attempt=1, config="12/config.yaml"))
    [started] = only(posts, THREAD)
    assert "Train #12 started" in started.text
    assert "attached below" in text_of(started) and "gpu1" in text_of(started)
    [config] = only(posts, UPLOAD)
    assert config.file == "12/config.yaml" and config.filename.endswith(".yaml") and config.redact
    assert posts.index(started) < posts.index(config)
    check_blocks(posts)


def test_only_the_final_loss_plot_is_uploaded():
    assert thread_posts(job(), event("plot", file="12/loss.png", final=False, points=40)) == []
    [plot] = thread_posts(job(), event("plot", file="12/loss.png", final=True, points=80))
    assert plot.action == UPLOAD and plot.file == "12/loss.png"
    assert plot.filename == "loss-12.png" and "#12" in plot.title


def test_train_finished_mentions_the_requester_with_metrics_and_tokens_per_second():
    done = job(
        state="succeeded",
        finished_at=T0 + 125,
        metrics={"train_loss": 1.5, "train_runtime": 118.2, "train_samples_per_second": 3.4},
    )
    posts = thread_posts(done, event("state", state="succeeded", exit_code=0, finished_at=T0 + 125))
    assert posts[0] == Post(EDIT_ROOT)
    [finished] = only(posts, THREAD)
    body = text_of(finished)
    assert "<@U0ALICE01>" in body and "finished" in finished.text
    assert "1,893 tokens/s" in body and "final loss 1.234" in body.lower()
    assert "Average train loss 1.5" in body and "3.40 samples/s" in body
    assert "job_eval" in body  # the next steps as buttons
    check_blocks(posts)


def test_a_trainer_result_that_is_not_a_number_is_left_out():
    done = job(state="succeeded", finished_at=T0 + 125,
               metrics={"train_loss": float("nan"), "train_runtime": 118.2, "total_tokens": float("inf")})
    [finished] = only(thread_posts(done, event("state", state="succeeded", exit_code=0)), THREAD)
    body = text_of(finished).lower()
    assert "nan" not in body and "inf" not in body and "train loss" not in body
    assert "trainer time 118 s" in body


def test_eval_result_is_a_table_with_the_change_since_the_previous_eval_and_three_samples():
    samples = [{"prompt": f"q{i}", "predict": f"a{i}", "label": f"b{i}"} for i in range(5)]
    ev = job(id=15, kind="eval", state="succeeded", parent_id=12, dataset="alpaca_eval")
    previous = job(
        id=13,
        kind="eval",
        state="succeeded",
        parent_id=12,
        metrics={"rouge-1": 40.0, "rouge-2": 20.0, "rouge-l": 30.0, "bleu-4": 10.0},
    )
    metrics = {"rouge-1": 42.5, "rouge-2": 19.0, "rouge-l": 31.0, "bleu-4": 10.0}
    assert thread_posts(ev, event("state", state="succeeded")) == [Post(EDIT_ROOT)]  # the result has it
    [post] = thread_posts(
        ev,
        event("result", kind="eval", metrics=metrics, artifacts={"samples": samples}),
        previous_eval=previous,
    )
    body = text_of(post)
    for row in (
        "ROUGE-1    42.50    +2.50",
        "ROUGE-2    19.00    -1.00",
        "ROUGE-L    31.00    +1.00",
        "BLEU-4     10.00    +0.00",
    ):
        assert row in body
    assert "Change against #13" in body and "<@U0ALICE01>" in body
    assert "Sample 3" in body and "Sample 4" not in body
    check_blocks([post])


def test_first_eval_says_there_is_nothing_to_compare():
    ev = job(id=15, kind="eval", state="succeeded", parent_id=12)
    [post] = thread_posts(ev, event("result", kind="eval", metrics={"rouge-1": 42.5}, artifacts={}))
    assert "nothing to compare" in text_of(post) and "+" not in json.dumps(post.blocks[1])


def test_previous_eval_is_the_newest_earlier_one_of_the_same_model_on_the_same_dataset():
    current = job(id=20, kind="eval", state="succeeded", parent_id=12, dataset="d1")
    candidates = [
        job(id=14, kind="eval", state="succeeded", parent_id=12, dataset="d1"),
        job(id=16, kind="eval", state="succeeded", parent_id=12, dataset="d1"),
        job(id=17, kind="eval", state="succeeded", parent_id=12, dataset="other"),
        job(id=18, kind="eval", state="succeeded", parent_id=99, dataset="d1"),
        job(id=19, kind="eval", state="failed", parent_id=12, dataset="d1"),
        job(id=21, kind="eval", state="succeeded", parent_id=12, dataset="d1"),
    ]
    assert previous_eval_of(current, candidates).id == 16
    assert previous_eval_of(job(id=14, kind="eval", parent_id=12, dataset="d1"), candidates) is None


def test_export_names_the_location_and_prefers_a_remote_copy():
    ex = job(
        id=16, kind="export", state="succeeded", parent_id=12, artifacts={"model": "/data/jobs/16/model"}
    )
    [local] = thread_posts(
        ex, event("result", kind="export", metrics={}, artifacts={"model": "/data/jobs/16/model"})
    )
    assert "/data/jobs/16/model" in text_of(local) and "<@U0ALICE01>" in text_of(local)
    remote = {"model": "/data/jobs/16/model", "remote": {"url": "https://bucket.oss.example.com/16/export/"}}
    [post] = thread_posts(ex, event("result", kind="export", metrics={}, artifacts=remote))
    body = text_of(post)
    assert "<https://bucket.oss.example.com/16/export/|" in body and "Also on the runner at" in body
    assert export_location(ex, {"remote": "oss://bucket/16/export/"}) == (
        "oss://bucket/16/export/",
        "/data/jobs/16/model",
    )
    check_blocks([local, post])


def test_serving_deployment_posts_its_urls_and_sends_the_key_to_the_requester_alone():
    secret = "sk-tb-0123456789abcdef"
    dep = job(
        id=17,
        kind="deploy",
        state="serving",
        parent_id=12,
        mode="api",
        api_key=secret,
        url="http://gpu1:8001/v1",
        chat_url="http://gpu1:7860/chat/17/",
    )
    posts = thread_posts(dep, event("state", state="serving", url=dep.url, chat_url=dep.chat_url))
    [public] = only(posts, THREAD)
    assert "http://gpu1:8001/v1" in text_of(public) and "http://gpu1:7860/chat/17/" in text_of(public)
    assert secret not in text_of(public) and "<@U0ALICE01>" in text_of(public)
    [key] = only(posts, EPHEMERAL)
    assert key.user == "U0ALICE01" and secret in text_of(key) and "tunebot-12" in text_of(key)
    assert secret not in repr(key)
    check_blocks(posts)
    # Nobody to send it to (a CLI job), or no key: no ephemeral.
    assert (
        only(thread_posts(dep.model_copy(update={"user": ""}), event("state", state="serving")), EPHEMERAL)
        == []
    )
    assert (
        only(
            thread_posts(dep.model_copy(update={"api_key": None}), event("state", state="serving")), EPHEMERAL
        )
        == []
    )


def test_failure_gives_the_reason_advice_and_last_log_lines_mentioning_the_requester():
    failed = job(
        state="failed",
        error="The dataset alpaca_x is not registered.",
        advice="`datasets` lists them",
        log_tail="line 1\nValueError: Undefined dataset alpaca_x in dataset_info.json.",
    )
    posts = thread_posts(failed, event("state", state="failed", error=failed.error, advice=failed.advice))
    [post] = only(posts, THREAD)
    body = text_of(post)
    assert "<@U0ALICE01>" in body and "alpaca_x is not registered" in body and "What to try" in body
    assert "```\\nline 1\\nValueError: Undefined dataset" in body
    check_blocks(posts)


def test_a_state_event_read_late_tells_what_happened_then():
    resumed = job(state="queued", attempt=2, error=None)  # it failed, and was resumed since
    [_, post] = thread_posts(resumed, event("state", state="failed", error="The run ran out of GPU memory."))
    assert "failed" in post.text and "ran out of GPU memory" in text_of(post)


@pytest.mark.parametrize(
    ("kind", "state", "values", "words"),
    [
        ("train", "cancelled", {"cancelled_by": "U0BOB0001"}, ["was cancelled", "by <@U0BOB0001>", "resume"]),
        ("train", "interrupted", {}, ["was interrupted", "resume"]),
        ("eval", "cancelled", {"cancelled_by": "U0ALICE01"}, ["Eval #12 was cancelled"]),
        (
            "deploy",
            "stopped",
            {"cancelled_by": "U0BOB0001"},
            ["stopped", "by <@U0BOB0001>", "no longer answers"],
        ),
        ("deploy", "stopped", {"error": "Stopped: idle for 2 h (TUNEBOT_DEPLOY_IDLE)."}, ["idle for 2 h"]),
    ],
)
def test_cancelled_interrupted_and_stopped_jobs_say_so_to_the_requester(kind, state, values, words):
    ended = job(kind=kind, state=state, finished_at=T0 + 30, **values)
    posts = thread_posts(ended, event("state", state=state))
    [post] = only(posts, THREAD)
    for word in words:
        assert word in text_of(post)
    assert "<@U0ALICE01>" in text_of(post)
    check_blocks(posts)


def test_engine_events_become_short_notes():
    cancelling = job(cancel_requested=True, cancelled_by="U0BOB0001")
    [note] = thread_posts(cancelling, event("cancel_requested", by="U0BOB0001"))
    assert "Stopping Train #12" in note.text and "<@U0BOB0001>" in text_of(note)
    [note] = thread_posts(job(), event("reattached"))
    assert "following Train #12 again" in note.text
    queued_again = job(state="queued", attempt=2)
    [note] = thread_posts(queued_again, event("resumed", checkpoint="checkpoint-40", attempt=2))
    assert "attempt 2" in note.text and "checkpoint-40" in note.text
    [note] = thread_posts(job(state="queued", attempt=2), event("resumed", checkpoint=None, attempt=2))
    assert "no checkpoint yet: starting over" in note.text
    # A free-text event of an old database (schema version 3) is still shown, escaped.
    [note] = thread_posts(job(), event("note", text="<!channel> something new"))
    assert "&lt;!channel&gt;" in text_of(note)  # pings nobody
    check_blocks([note])


def test_every_event_type_and_state_yields_valid_block_kit():
    for kind in ("train", "eval", "export", "deploy"):
        for state in (
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "interrupted",
            "starting",
            "serving",
            "stopped",
        ):
            j = job(
                kind=kind,
                state=state,
                parent_id=None if kind == "train" else 12,
                url="http://h:1/v1",
                api_key="k",
                error="e" * 5000,
                log_tail="x\n" * 3000,
            )
            for ev in (
                event("state", state=state),
                event("progress", step=1),
                event("started", slots=["0"], attempt=1, config="12/config.yaml"),
                event("cancel_requested", by="U0BOB0001"),
                event("resumed", checkpoint=None, attempt=2),
                event("reattached"),
                event("fetching"),
                event("activity", log_at=T0, log_bytes=10, tail="x"),
                event("upload", name="adapter", location="oss://b/k", size=1),
                event("note", text="old"),
                event("result", kind=kind, metrics={"rouge-1": 1.0}, artifacts={}),
                event("plot", file="12/loss.png", final=True, points=3),
            ):
                posts = thread_posts(j, ev)
                check_blocks(posts)
                assert all(p.action in (EDIT_ROOT, THREAD, UPLOAD, EPHEMERAL) for p in posts)
            check_blocks([Post(THREAD, "", root_message(j)["blocks"])])


def test_root_message_carries_metadata_naming_the_job_and_its_step():
    message = root_message(job(), queue_position=None)
    assert message["metadata"] == {
        "event_type": "tunebot_job",
        "event_payload": {"job_id": 12, "kind": "train", "state": "running", "step": 80},
    }
    assert "step 80/80" in json.dumps(message["blocks"])
    queued = root_message(job(state="queued", progress={}), queue_position=3)
    assert "3rd in line" in json.dumps(queued["blocks"]) and "step" not in queued["metadata"]["event_payload"]


def test_config_secrets_are_masked_and_nothing_else_changes():
    text = "model_name_or_path: m\nhf_hub_token: hf_abcdef\nmax_new_tokens: 512\nom_hub_token: x\n"
    assert redact_config(text) == (
        "model_name_or_path: m\nhf_hub_token: '<redacted>'\nmax_new_tokens: 512\nom_hub_token: '<redacted>'\n"
    )
