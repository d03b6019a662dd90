import json
import math
import os

import pytest

from runners.llamafactory.progress import (
    Progress,
    TrainerLogFollower,
    format_eta,
    parse_duration_text,
    parse_trainer_log_line,
    progress_bar,
    read_trainer_log,
)

# Lines from a real LLaMA-Factory 0.9.5 run (tiny Llama, LoRA, eval every 4 steps, tokens counted).
TRAIN_LINE = (
    '{"current_steps": 7, "total_steps": 32, "loss": 6.0987091064453125, "lr": 0.0008125000000000001, '
    '"epoch": 0.4375, "percentage": 21.88, "elapsed_time": "0:00:04", "remaining_time": "0:00:14", '
    '"throughput": 146.25, "total_tokens": 592}'
)
EVAL_LINE = (
    '{"current_steps": 8, "total_steps": 32, "eval_loss": 6.088894844055176, "epoch": 0.5, '
    '"percentage": 25.0, "elapsed_time": "0:00:05", "remaining_time": "0:00:16", "throughput": 127.56, '
    '"total_tokens": 688}'
)
FINAL_LINE = (
    '{"current_steps": 32, "total_steps": 32, "epoch": 2.0, "percentage": 100.0, "elapsed_time": "0:00:12", '
    '"remaining_time": "0:00:00", "throughput": 214.75, "total_tokens": 2688}'
)
# Without include_num_input_tokens_seen there is no throughput (the README's example line).
PLAIN_LINE = (
    '{"current_steps": 1, "total_steps": 8, "loss": 7.62, "lr": 0.0, "epoch": 0.125, "percentage": 12.5, '
    '"elapsed_time": "0:00:00", "remaining_time": "0:00:00"}'
)


def line(step: int, loss: float = 1.0, total: int = 10) -> str:
    return (
        json.dumps(
            {
                "current_steps": step,
                "total_steps": total,
                "loss": loss,
                "lr": 1e-4,
                "epoch": step / total,
                "percentage": round(step / total * 100, 2),
                "elapsed_time": "0:00:01",
                "remaining_time": "0:00:09",
            }
        )
        + "\n"
    )


# --- parsing -----------------------------------------------------------------------------------


def test_train_line_is_parsed_in_full():
    point = parse_trainer_log_line(TRAIN_LINE)
    assert point == Progress(
        step=7,
        total=32,
        loss=6.0987091064453125,
        eval_loss=None,
        lr=0.0008125000000000001,
        epoch=0.4375,
        percent=21.88,
        elapsed_s=4.0,
        remaining_s=14.0,
        tokens_per_s=146.25,
        total_tokens=592,
    )
    assert not point.is_eval


def test_eval_line_has_eval_loss_and_no_loss():
    point = parse_trainer_log_line(EVAL_LINE)
    assert point.eval_loss == pytest.approx(6.0889, abs=1e-4) and point.loss is None and point.lr is None
    assert point.is_eval and point.step == 8


def test_final_summary_line_has_neither_loss():
    point = parse_trainer_log_line(FINAL_LINE)
    assert (point.step, point.loss, point.eval_loss, point.percent) == (32, None, None, 100.0)


def test_line_without_throughput_leaves_tokens_unknown():
    point = parse_trainer_log_line(PLAIN_LINE)
    assert point.tokens_per_s is None and point.total_tokens is None and point.loss == 7.62


def test_nan_loss_is_kept_as_nan():
    # json.dumps writes float("nan") as NaN, and LLaMA-Factory writes its logs with json.dumps.
    point = parse_trainer_log_line(json.dumps({"current_steps": 3, "total_steps": 8, "loss": float("nan")}))
    assert math.isnan(point.loss)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00:00", 0),
        ("0:01:02", 62),
        ("12:34:56", 45296),
        ("1 day, 2:03:04", 93784),
        ("3 days, 0:00:01", 259201),
        ("0:00:07.250000", 7),
    ],
)
def test_timedelta_strings_become_seconds(text, seconds):
    assert parse_duration_text(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1:2", None, 12, "1 fortnight, 0:00:00"])
def test_other_durations_are_unknown(text):
    assert parse_duration_text(text) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "not json",
        "[1, 2]",
        '"a string"',
        "null",
        '{"loss": 1.0}',
        '{"current_steps": "seven"}',
        '{"current_steps": true}',
        '{"current_steps": 1, "total_steps": 8, "loss": 7.6',
        "{" * 100000,
        '{"current_steps": NaN}',
    ],
)
def test_garbage_lines_give_none(garbage):
    assert parse_trainer_log_line(garbage) is None


def test_wrong_typed_fields_are_dropped_not_raised():
    point = parse_trainer_log_line(
        '{"current_steps": 2, "total_steps": "x", "loss": "high", "elapsed_time": 5}'
    )
    assert point == Progress(step=2)


def test_progress_round_trips_through_a_dict():
    point = parse_trainer_log_line(TRAIN_LINE)
    assert Progress.from_dict(json.loads(json.dumps(point.to_dict()))) == point
    assert Progress.from_dict({**point.to_dict(), "added_later": 1}) == point


def test_read_trainer_log_skips_bad_lines(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text(TRAIN_LINE + "\n" + "oops\n" + EVAL_LINE + "\n" + '{"current_steps": 9, "tot')
    assert [p.step for p in read_trainer_log(path)] == [7, 8]
    assert read_trainer_log(tmp_path / "missing.jsonl") == []


# --- following a growing file ------------------------------------------------------------------


def test_follower_waits_for_the_file(tmp_path):
    follower = TrainerLogFollower(tmp_path / "output" / "trainer_log.jsonl")
    assert follower.poll() == []
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "trainer_log.jsonl").write_text(line(1))
    assert [p.step for p in follower.poll()] == [1]


def test_follower_returns_only_new_lines(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text(line(1) + line(2))
    follower = TrainerLogFollower(path)
    assert [p.step for p in follower.poll()] == [1, 2]
    assert follower.poll() == []
    with open(path, "a") as handle:
        handle.write(line(3))
    assert [p.step for p in follower.poll()] == [3]
    assert [p.step for p in follower.points] == [1, 2, 3]


def test_follower_holds_back_a_partial_last_line(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    full = line(2)
    path.write_text(line(1) + full[:25])
    follower = TrainerLogFollower(path)
    assert [p.step for p in follower.poll()] == [1]
    assert follower.poll() == []
    with open(path, "a") as handle:
        handle.write(full[25:])
    assert [p.step for p in follower.poll()] == [2]


def test_follower_starts_over_when_the_file_is_recreated(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text(line(1) + line(2) + line(3))
    follower = TrainerLogFollower(path)
    assert len(follower.poll()) == 3
    # LLaMA-Factory deletes trainer_log.jsonl when a run restarts with overwrite_output_dir.
    os.remove(path)
    assert follower.poll() == []
    path.write_text(line(1, loss=9.0))
    assert [(p.step, p.loss) for p in follower.poll()] == [(1, 9.0)]
    assert follower.restarts == 1
    assert [p.step for p in follower.points] == [1]


def test_follower_starts_over_on_a_new_file_with_the_same_first_line(tmp_path):
    # A restarted deterministic run writes the same first line; only the new inode tells them apart.
    path = tmp_path / "trainer_log.jsonl"
    path.write_text(line(1))
    follower = TrainerLogFollower(path)
    follower.poll()
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(line(1) + line(2) + line(3))  # created while the old file exists: a new inode
    os.replace(replacement, path)
    assert [p.step for p in follower.poll()] == [1, 2, 3]
    assert follower.restarts == 1


def test_follower_starts_over_when_truncated_in_place(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text(line(1) + line(2) + line(3))
    follower = TrainerLogFollower(path)
    follower.poll()
    with open(path, "r+") as handle:
        handle.truncate(0)
        handle.write(line(1, loss=5.0))
    assert [(p.step, p.loss) for p in follower.poll()] == [(1, 5.0)]
    assert follower.restarts == 1


def test_follower_notices_a_rewrite_that_grew_past_the_old_offset(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text(line(1))
    follower = TrainerLogFollower(path)
    follower.poll()
    with open(path, "r+") as handle:  # same inode, different content, longer than before
        handle.truncate(0)
        handle.write(line(1, loss=4.0) + line(2, loss=3.0) + line(3, loss=2.0))
    assert [(p.step, p.loss) for p in follower.poll()] == [(1, 4.0), (2, 3.0), (3, 2.0)]


def test_follower_skips_garbage_between_lines(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_bytes(line(1).encode() + b"\xff\xfe broken\n" + line(2).encode())
    assert [p.step for p in TrainerLogFollower(path).poll()] == [1, 2]


# --- text for Slack ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (59.6, "1m 00s"),
        (725, "12m 05s"),
        (7380, "2h 03m"),
        (93784, "1d 2h"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        (-5, "unknown"),
    ],
)
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


@pytest.mark.parametrize(
    ("percent", "width", "bar"),
    [
        (50, 10, "▓▓▓▓▓░░░░░ 50%"),
        (0, 10, "░░░░░░░░░░ 0%"),
        (100, 10, "▓▓▓▓▓▓▓▓▓▓ 100%"),
        (99.6, 10, "▓▓▓▓▓▓▓▓▓░ 99%"),
        (21.88, 20, "▓▓▓▓░░░░░░░░░░░░░░░░ 21%"),
        (150, 4, "▓▓▓▓ 100%"),
        (-3, 4, "░░░░ 0%"),
        (None, 5, "░░░░░ ?%"),
    ],
)
def test_progress_bar(percent, width, bar):
    assert progress_bar(percent, width=width) == bar


def test_progress_bar_default_width_is_twenty():
    assert len(progress_bar(12.5).split(" ")[0]) == 20


def test_a_diverged_loss_is_stored_as_no_figure(store):
    """The job store writes NaN/inf as null on both engines (PostgreSQL refuses NaN in JSON: a nan
    loss line would otherwise never be recorded, and the runner would retry it for ever)."""
    from runners.job import Job

    point = parse_trainer_log_line(json.dumps({"current_steps": 3, "total_steps": 8, "loss": float("nan"),
                                               "epoch": 0.4, "grad_norm": float("inf")}))
    job, _ = store.add_job(Job(kind="train"))
    store.add_event(job.id, "progress", point.to_dict())
    store.update(job.id, progress=point.to_dict(), metrics={"rates": [1.0, float("-inf")]})
    stored = store.get(job.id)
    assert stored.progress["step"] == 3 and stored.progress["loss"] is None
    assert stored.metrics == {"rates": [1.0, None]}
    assert [e.data["loss"] for e in store.events_since(0, job_id=job.id) if e.type == "progress"] == [None]
