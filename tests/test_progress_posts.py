"""When progress posts go out in a job's thread, and what they say (pure: no clock, no Slack)."""

from __future__ import annotations

import json

from bot.story import progress as pp
from runners.job import Job
from runners.llamafactory.progress import Progress, parse_trainer_log_line
from tests.slack_standin import block_kit_problems

T0 = 1_800_000_000.0
MIN = 60.0
EVERY = 10 * MIN
STALL = 15 * MIN


def running_job(**fields) -> Job:
    return Job(
        **{
            "id": 12,
            "kind": "train",
            "state": "running",
            "model": "/models/Meta-Llama-3-8B-Instruct",
            "dataset": "support_tickets",
            "method": "lora",
            "user": "U0ALICE01",
            "origin": {"channel": "C0TUNEBOT", "message_ts": "1800000000.000100"},
            "started_at": T0,
            "attempt": 1,
            **fields,
        }
    )


def trainer_log(total: int, duration: float, until: float, *, every_steps: int = 10) -> list[Progress]:
    """The lines LLaMA-Factory's LogCallback has written by `until` for a run of `total` steps
    taking `duration` seconds (loss falling from 2.4), parsed the way the sweep reads them."""
    points = []
    for step in range(every_steps, total + 1, every_steps):
        at = duration * step / total
        if at > until:
            break
        line = {
            "current_steps": step,
            "total_steps": total,
            "loss": round(2.4 * (1 - 0.6 * step / total), 4),
            "lr": 5e-05,
            "epoch": round(3 * step / total, 2),
            "percentage": round(100 * step / total, 2),
            "elapsed_time": _hms(at),
            "remaining_time": _hms(duration - at),
            "throughput": 1893.2,
            "total_tokens": 1200 * step,
        }
        points.append(parse_trainer_log_line(json.dumps(line)))
    return points


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def simulate(
    job: Job, duration: float, *, sweep: float = 30.0, total: int = 480
) -> list[tuple[float, pp.Decision]]:
    """Run the sweep every `sweep` seconds over a whole run; the posts it made, at minutes since start."""
    state = pp.PostedState()
    posts = []
    t = 0.0
    while t <= duration:
        points = trainer_log(total, duration, t)
        last_line = T0 + max([duration * p.step / total for p in points], default=0.0)
        decision = pp.decide_progress_post(
            job, points, state, now=T0 + t, last_line_at=last_line, every_s=EVERY, stall_after_s=STALL
        )
        if decision.posts:
            posts.append((t / MIN, decision))
        state = pp.after_post(state, decision, points, now=T0 + t)
        t += sweep
    return posts


def test_a_job_shorter_than_the_period_gets_no_progress_posts():
    # 8 minutes, crossing 25/50/75% along the way: its root message shows that already
    assert simulate(running_job(), 8 * MIN) == []


def test_a_long_job_gets_a_post_every_period_and_at_25_50_75_percent():
    posts = simulate(running_job(), 60 * MIN)
    assert [(minute, d.why) for minute, d in posts] == [
        (10.0, "period"),
        (15.0, "passed 25%"),
        (25.0, "period"),
        (30.0, "passed 50%"),
        (40.0, "period"),
        (45.0, "passed 75%"),
        (55.0, "period"),
    ]


def test_a_period_post_that_passes_a_milestone_announces_it_and_it_is_not_posted_again():
    posts = simulate(running_job(), 120 * MIN)
    assert [minute for minute, _ in posts] == [10.0 * i for i in range(1, 13)]
    milestones = [(minute, d.milestones) for minute, d in posts if d.milestones]
    assert milestones == [(30.0, (25,)), (60.0, (50,)), (90.0, (75,))]
    # a run whose milestones come faster than the period: each gets its own post, once
    posts = simulate(running_job(), 36 * MIN)
    assert [(minute, d.why) for minute, d in posts] == [
        (9.0, "passed 25%"),
        (18.0, "passed 50%"),
        (27.0, "passed 75%"),
    ]


def test_no_post_when_nothing_changed_since_the_last_one():
    job = running_job()
    points = trainer_log(480, 60 * MIN, 20 * MIN)
    state = pp.after_post(pp.PostedState(), pp.Decision(pp.PROGRESS, "period"), points, now=T0 + 20 * MIN)
    # 11 minutes later the same last step (say an evaluation pass), but the process log still moves
    decision = pp.decide_progress_post(
        job, points, state, now=T0 + 31 * MIN, last_line_at=T0 + 30 * MIN, every_s=EVERY, stall_after_s=STALL
    )
    assert decision.action == pp.NOTHING and decision.why == "nothing changed since the last post"


def test_a_stalled_job_is_reported_once_and_again_only_after_it_moved():
    job = running_job()
    points = trainer_log(480, 60 * MIN, 20 * MIN)
    last_line = T0 + 20 * MIN
    state = pp.PostedState()
    decide = lambda now, last: pp.decide_progress_post(  # noqa: E731
        job, points, state, now=now, last_line_at=last, every_s=EVERY, stall_after_s=STALL
    )

    assert decide(T0 + 34 * MIN, last_line).action != pp.STALLED  # 14 min of silence: not yet
    stalled = decide(T0 + 35 * MIN, last_line)
    assert stalled.action == pp.STALLED and stalled.why == "no new log line for 15m 00s"
    state = pp.after_post(state, stalled, points, now=T0 + 35 * MIN)
    assert decide(T0 + 50 * MIN, last_line).why == "stall already reported"
    # it writes again: the stall is forgotten, so a second stall is reported too
    state = pp.moving_again(state, stalled=False)
    assert state.stalled_at is None
    assert decide(T0 + 80 * MIN, T0 + 60 * MIN).action == pp.STALLED


def test_a_job_silent_from_its_start_is_reported_stalled_before_its_first_step():
    job = running_job()
    decision = pp.decide_progress_post(
        job, [], pp.PostedState(), now=T0 + 16 * MIN, last_line_at=None, every_s=EVERY, stall_after_s=STALL
    )
    assert decision.action == pp.STALLED
    payload = pp.render_stall_post(job, [], now=T0 + 16 * MIN, last_line_at=None, tail="Loading checkpoint")
    assert "before its first step" in payload["text"]


def test_only_running_train_and_eval_jobs_get_posts():
    points = trainer_log(480, 60 * MIN, 30 * MIN)
    for job in (
        running_job(state="succeeded"),
        running_job(kind="deploy", state="serving"),
        running_job(started_at=None),
    ):
        decision = pp.decide_progress_post(
            job,
            points,
            pp.PostedState(),
            now=T0 + 30 * MIN,
            last_line_at=T0 + 30 * MIN,
            every_s=EVERY,
            stall_after_s=STALL,
        )
        assert decision.action == pp.NOTHING


def test_a_resumed_job_starts_its_posts_afresh():
    state = pp.PostedState(attempt=1, posts=3, last_step=200, milestones=(25,), last_post_at=T0)
    assert state.for_attempt(1) is state
    assert state.for_attempt(2) == pp.PostedState(attempt=2)
    assert pp.PostedState.from_dict(state.to_dict()) == state


def test_the_progress_post_shows_step_loss_trend_eta_and_tokens_per_second():
    job = running_job()
    duration = 60 * MIN
    before = trainer_log(480, duration, 10 * MIN)
    state = pp.after_post(pp.PostedState(), pp.Decision(pp.PROGRESS, "period"), before, now=T0 + 10 * MIN)
    points = trainer_log(480, duration, 20 * MIN)
    decision = pp.Decision(pp.PROGRESS, "period")
    payload = pp.render_progress_post(job, points, state, decision, now=T0 + 20 * MIN)

    assert block_kit_problems(payload["blocks"]) == []
    text = json.dumps(payload["blocks"], ensure_ascii=False)
    assert "Train #12" in text and "step 160/480 (33%)" in text
    assert "loss 2.16 → 1.92 ↓ (-11%) since the last post" in text
    assert "ETA:* 40m 00s" in text and "<!date^" in text
    assert "Tokens/s:* 1,893" in text and "Steps/min:* 8" in text
    assert "Progress post 2" in text
    assert payload["text"] == "Train #12: step 160/480 (33%), loss 2.16 → 1.92 ↓ (-11%) since the last post"


def test_the_first_post_compares_with_the_first_logged_loss_and_names_a_milestone():
    job = running_job()
    points = trainer_log(480, 60 * MIN, 15 * MIN)
    decision = pp.Decision(pp.PROGRESS, "passed 25%", (25,))
    payload = pp.render_progress_post(job, points, pp.PostedState(), decision, now=T0 + 15 * MIN)
    text = json.dumps(payload["blocks"], ensure_ascii=False)
    assert "past 25%" in text and "since the start" in text and "loss 2.37 → 2.04" in text


def test_a_run_that_counts_no_tokens_says_so():
    job = running_job()
    points = [Progress(step=10, total=100, loss=1.5, percent=10.0, elapsed_s=60.0, remaining_s=540.0)]
    payload = pp.render_progress_post(
        job, points, pp.PostedState(), pp.Decision(pp.PROGRESS, "period"), now=T0 + 60
    )
    assert "not counted by this run" in json.dumps(payload["blocks"])


def test_the_stall_post_mentions_the_requester_with_the_last_log_lines_escaped():
    job = running_job()
    bar = "".join(f"\r 45%|████▌ | {i}/480" for i in range(3))
    log = f"step 1\nstep 2\n{bar}\nNCCL WARN <!channel> timeout\n"
    tail = pp.log_tail(log)
    assert tail.splitlines() == ["step 1", "step 2", " 45%|████▌ | 2/480", "NCCL WARN <!channel> timeout"]
    payload = pp.render_stall_post(
        job, trainer_log(480, 60 * MIN, 20 * MIN), now=T0 + 40 * MIN, last_line_at=T0 + 20 * MIN, tail=tail
    )
    assert block_kit_problems(payload["blocks"]) == []
    text = json.dumps(payload["blocks"], ensure_ascii=False)
    assert "<@U0ALICE01>" in text and "looks stalled* at step 160/480" in text
    assert "no new log line for 20m 00s" in text
    assert "NCCL WARN &lt;!channel&gt; timeout" in text and "<!channel>" not in text
    assert "resumed from its last checkpoint" in text


def test_log_tail_keeps_the_last_lines():
    text = "\n".join(f"line {i}" for i in range(100))
    assert pp.log_tail(text, 3) == "line 97\nline 98\nline 99"
    assert pp.log_tail("") == ""
