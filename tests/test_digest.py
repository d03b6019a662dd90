"""Channel digests from a real store (SQLite and PostgreSQL): what is listed, GPU hours, rendering."""

from __future__ import annotations

import json

import pytest

from bot.schedules.digest import build_digest, render_digest, slot_hours, usage_by_user
from runners.job import Job
from tests.slack_standin import block_kit_problems

CHANNEL = "C0TUNEBOT"
OTHER = "C0ELSEWHERE"
NOW = 1_800_000_000.0  # a fixed clock: digests are built without time passing
HOUR = 3600.0
SINCE = NOW - 24 * HOUR


def add(store, **fields) -> Job:
    job, _ = store.add_job(
        Job(**{"kind": "train", "model": "/models/Meta-Llama-3-8B-Instruct", "origin": {"channel": CHANNEL},
               **fields})
    )
    return job


@pytest.fixture
def busy_channel(store):
    """A day of a team's jobs, shaped like what the worker stores."""
    jobs = {}
    jobs["trained"] = add(
        store,
        state="succeeded",
        user="U0ALICE01",
        dataset="support_tickets",
        method="lora",
        created_at=NOW - 10 * HOUR,
        started_at=NOW - 9 * HOUR,
        finished_at=NOW - 6 * HOUR,
        slots=["0", "1"],
        n_slots=2,
        progress={
            "step": 480,
            "total": 480,
            "loss": 0.8731,
            "eval_loss": 0.9412,
            "percent": 100.0,
            "tokens_per_s": 1893.2,
        },
        metrics={"train_loss": 1.2046, "train_runtime": 10800.0, "step": 480},
        artifacts={"adapter": "/data/jobs/1/output", "plot": "/data/jobs/1/loss.png"},
    )
    jobs["evaluated"] = add(
        store,
        kind="eval",
        state="succeeded",
        user="U0ALICE01",
        dataset="support_eval",
        parent_id=jobs["trained"].id,
        created_at=NOW - 6 * HOUR,
        started_at=NOW - 5.5 * HOUR,
        finished_at=NOW - 5 * HOUR,
        slots=["0"],
        n_slots=1,
        metrics={
            "rouge-1": 45.1032,
            "rouge-2": 22.3051,
            "rouge-l": 30.2194,
            "bleu-4": 18.7329,
            "runtime_s": 1790.2,
            "samples_per_s": 0.56,
        },
    )
    jobs["oom"] = add(
        store,
        state="failed",
        user="U0BOB0001",
        dataset="long_docs",
        method="full",
        created_at=NOW - 4 * HOUR,
        started_at=NOW - 4 * HOUR,
        finished_at=NOW - 3.9 * HOUR,
        slots=["2", "3"],
        n_slots=2,
        exit_code=1,
        error="The GPU ran out of memory (CUDA out of memory: tried to allocate 3.50 GiB).",
        advice="lower per_device_train_batch_size or cutoff_len, or use method=qlora",
        log_tail="torch.OutOfMemoryError: CUDA out of memory.",
    )
    jobs["running"] = add(
        store,
        state="running",
        user="U0BOB0001",
        dataset="support_tickets",
        method="lora",
        created_at=NOW - 2 * HOUR,
        started_at=NOW - 1.5 * HOUR,
        slots=["2"],
        n_slots=1,
        progress={
            "step": 120,
            "total": 480,
            "loss": 1.8214,
            "percent": 25.0,
            "epoch": 0.75,
            "remaining_s": 16200.0,
            "tokens_per_s": 1712.4,
        },
    )
    jobs["queued"] = add(store, state="queued", user="U0CAROL01", dataset="alpaca_zh", created_at=NOW - HOUR)
    jobs["serving"] = add(
        store,
        kind="deploy",
        state="serving",
        user="U0ALICE01",
        mode="api",
        parent_id=jobs["trained"].id,
        created_at=NOW - 4.5 * HOUR,
        started_at=NOW - 4.5 * HOUR,
        slots=["3"],
        n_slots=1,
        port=8001,
        url="http://gpu1.example.com:8001/v1",
        chat_url="http://gpu1.example.com:7860/chat/6/",
        api_key="sk-tunebot-secret-0123456789",
    )
    # Another channel's job, and an old one of this channel: neither is this digest's news.
    jobs["elsewhere"] = add(
        store,
        origin={"channel": OTHER},
        state="succeeded",
        user="U0DAVE001",
        created_at=NOW - 3 * HOUR,
        started_at=NOW - 3 * HOUR,
        finished_at=NOW - 2 * HOUR,
        slots=["4"],
        n_slots=1,
    )
    jobs["last_week"] = add(
        store,
        state="succeeded",
        user="U0ALICE01",
        created_at=NOW - 8 * 24 * HOUR,
        started_at=NOW - 8 * 24 * HOUR,
        finished_at=NOW - 7 * 24 * HOUR,
        slots=["0"],
        n_slots=1,
        metrics={"train_loss": 2.0},
    )
    # Started before the period and finished inside it: only its hours inside count.
    jobs["overnight"] = add(
        store,
        state="cancelled",
        user="U0CAROL01",
        created_at=SINCE - 3 * HOUR,
        started_at=SINCE - 2 * HOUR,
        finished_at=SINCE + HOUR,
        slots=["1"],
        n_slots=1,
        cancelled_by="U0CAROL01",
        error="Cancelled by U0CAROL01.",
    )
    return jobs


def test_digest_lists_this_channels_running_queued_finished_failed_and_serving_jobs(store, busy_channel):
    jobs = busy_channel
    data = build_digest(store, channel=CHANNEL, since=SINCE, until=NOW, now=NOW)

    assert [j.id for j in data.running] == [jobs["running"].id]
    assert [(j.id, place) for j, place in data.queued] == [(jobs["queued"].id, 1)]
    assert [j.id for j in data.finished] == [jobs["trained"].id, jobs["evaluated"].id, jobs["overnight"].id]
    assert [j.id for j in data.failed] == [jobs["oom"].id]
    assert [j.id for j in data.serving] == [jobs["serving"].id]
    assert not data.is_empty


def test_gpu_hours_per_user_are_run_time_times_slots_clipped_to_the_period(store, busy_channel):
    data = build_digest(store, channel=CHANNEL, since=SINCE, until=NOW, now=NOW)
    usage = {row.user: row for row in data.usage}

    # alice: train 3 h x 2 GPUs + eval 0.5 h x 1 + deployment serving 4.5 h x 1 (last week's: nothing)
    assert usage["U0ALICE01"].gpu_hours == pytest.approx(6 + 0.5 + 4.5)
    assert usage["U0ALICE01"].jobs == 3
    # bob: failed 0.1 h x 2 + running 1.5 h so far x 1
    assert usage["U0BOB0001"].gpu_hours == pytest.approx(0.2 + 1.5)
    # carol: only the hour of the overnight run inside the period; her queued job used nothing
    assert usage["U0CAROL01"].gpu_hours == pytest.approx(1.0)
    assert "U0DAVE001" not in usage  # another channel's
    assert [row.user for row in data.usage] == ["U0ALICE01", "U0BOB0001", "U0CAROL01"]


def test_slot_hours_tell_cpu_slots_from_gpus_and_clip_at_both_ends():
    job = Job(kind="train", started_at=100.0, finished_at=100.0 + 2 * HOUR, slots=["cpu0"], n_slots=1)
    assert slot_hours(job, since=None, until=1e12, now=1e12) == (0.0, pytest.approx(2.0))
    gpu = Job(kind="train", started_at=0.0, finished_at=None, slots=["0", "1", "2", "3"], n_slots=4)
    # still running: counted up to `now`, and never past `until`
    assert slot_hours(gpu, since=HOUR, until=3 * HOUR, now=2 * HOUR)[0] == pytest.approx(4.0)
    assert slot_hours(gpu, since=HOUR, until=3 * HOUR, now=10 * HOUR)[0] == pytest.approx(8.0)
    never = Job(kind="train", started_at=None)
    assert slot_hours(never, since=None, until=NOW, now=NOW) == (0.0, 0.0)
    rows = usage_by_user([job, gpu], since=None, until=3 * HOUR, now=3 * HOUR)
    assert {r.user for r in rows} == {""}


def test_rendered_digest_shows_scores_losses_reasons_urls_and_hours_but_no_secret(store, busy_channel):
    jobs = busy_channel
    data = build_digest(
        store, channel=CHANNEL, since=SINCE, until=NOW, now=NOW, title="Digest · daily at 09:00"
    )
    payload = render_digest(data)
    assert block_kit_problems(payload["blocks"]) == []
    text = json.dumps(payload["blocks"], ensure_ascii=False)

    assert "Digest · daily at 09:00" in text
    # finished: ROUGE/BLEU of the eval, the losses of the training
    assert "ROUGE-1 45.10" in text and "ROUGE-2 22.31" in text and "ROUGE-L 30.22" in text
    assert "BLEU-4 18.73" in text
    assert "final loss 0.8731" in text and "mean loss 1.205" in text and "eval loss 0.9412" in text
    # running: progress and ETA; queued: its place
    assert "step 120/480" in text and "ETA 4h 30m" in text and "1,712 tokens/s" in text
    assert "1st in line" in text
    # failed: the reason in plain words and what to try
    assert "The GPU ran out of memory" in text and "method=qlora" in text
    # serving: its URLs, never its API key
    assert "http://gpu1.example.com:7860/chat/6/" in text and "http://gpu1.example.com:8001/v1" in text
    assert "sk-tunebot-secret" not in json.dumps(payload, ensure_ascii=False)
    # hours per user, with mentions
    assert "<@U0ALICE01>: 11.0 h GPU (3 jobs)" in text
    assert "<@U0BOB0001>: 1.70 h GPU (2 jobs)" in text
    # not this channel's, not this period's
    assert f"*#{jobs['elsewhere'].id}*" not in text and f"*#{jobs['last_week'].id}*" not in text
    assert payload["text"].startswith("Digest · daily at 09:00: 1 running, 1 queued, 3 finished, 1 failed")


def test_an_empty_period_gives_a_one_line_digest(store, busy_channel):
    data = build_digest(store, channel="C0QUIET01", since=SINCE, until=NOW, now=NOW)
    assert data.is_empty
    payload = render_digest(data)
    assert len(payload["blocks"]) == 1 and payload["blocks"][0]["type"] == "section"
    assert "no jobs ran" in payload["blocks"][0]["text"]["text"]
    assert "\n" not in payload["blocks"][0]["text"]["text"]
    assert payload["text"] == "tunebot digest: nothing ran, nothing queued, nothing deployed."


def test_a_channel_with_only_old_jobs_and_nothing_running_is_empty_too(store, busy_channel):
    # the period after all of this channel's jobs ended, with the running/queued/serving ones ended too
    for key in ("running", "queued", "serving"):
        store.update(busy_channel[key].id, state="cancelled", finished_at=NOW)
    data = build_digest(store, channel=CHANNEL, since=NOW + HOUR, until=NOW + 2 * HOUR, now=NOW + 2 * HOUR)
    assert data.is_empty


def test_a_long_digest_stays_within_slacks_limits(store):
    for i in range(60):
        add(
            store,
            state="failed",
            user=f"U0USER{i:03d}",
            created_at=NOW - HOUR,
            started_at=NOW - HOUR,
            finished_at=NOW - HOUR / 2,
            slots=["0"],
            error="x" * 2000,
        )
        add(store, state="queued", user=f"U0USER{i:03d}", created_at=NOW - HOUR)
    payload = render_digest(build_digest(store, channel=CHANNEL, since=SINCE, until=NOW, now=NOW))
    assert block_kit_problems(payload["blocks"]) == []
    assert "…and 45 more." in json.dumps(payload["blocks"], ensure_ascii=False)
