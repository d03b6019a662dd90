"""Progress posts in a running job's thread: when to post, and what.

Pure decisions and rendering: `decide_progress_post` looks at a running job, its trainer-log
points and what was last posted (`PostedState`) and answers post / stalled / nothing;
`render_progress_post` and `render_stall_post` build the messages. `bot.schedules` runs the
sweep that reads the job's progress from the database and posts, with the runner's loss plot.

The rules, from the issue:
- every `every_s` (TUNEBOT_PROGRESS_EVERY) and when the run passes 25/50/75%;
- a job shorter than the period gets none (its root message already shows live progress);
- no post when nothing changed since the last one;
- a job with no new log line for `stall_after_s` (TUNEBOT_STALL_AFTER) is reported once as
  stalled, @-mentioning the requester; a new line clears that, so a later stall is reported again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.render import (
    code_block,
    context,
    escape,
    finite_number,
    kind_label,
    mention,
    message,
    progress_text,
    section,
    short_model,
    slack_date,
)
from runners.job import Job, JobKind, JobState
from runners.llamafactory.progress import Progress, format_eta
from runners.speed.throughput import sane_rate

MILESTONES: tuple[int, ...] = (25, 50, 75)
# Kinds whose runs write trainer_log.jsonl (eval runs write bare step/percentage lines).
PROGRESS_KINDS: tuple[str, ...] = (JobKind.TRAIN.value, JobKind.EVAL.value)
STALL_TAIL_LINES = 15

NOTHING = "nothing"
PROGRESS = "progress"
STALLED = "stalled"


@dataclass(frozen=True)
class PostedState:
    """What was last posted in a job's thread (kept in the database between sweeps)."""

    attempt: int = 1
    posts: int = 0
    last_post_at: float | None = None
    last_step: int | None = None
    last_loss: float | None = None
    milestones: tuple[int, ...] = ()
    stalled_at: float | None = None  # when a stall was reported; None while the job moves
    last_plot: int | None = None  # the event id of the runner's loss plot last posted

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "posts": self.posts,
            "last_post_at": self.last_post_at,
            "last_step": self.last_step,
            "last_loss": self.last_loss,
            "milestones": list(self.milestones),
            "stalled_at": self.stalled_at,
            "last_plot": self.last_plot,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PostedState:
        data = data or {}
        return cls(
            attempt=int(data.get("attempt") or 1),
            posts=int(data.get("posts") or 0),
            last_post_at=data.get("last_post_at"),
            last_step=data.get("last_step"),
            last_loss=data.get("last_loss"),
            milestones=tuple(int(m) for m in data.get("milestones") or ()),
            stalled_at=data.get("stalled_at"),
            last_plot=data.get("last_plot"),
        )

    def for_attempt(self, attempt: int) -> PostedState:
        """A resumed job starts a new attempt: what was posted for the old one no longer counts."""
        return self if self.attempt == attempt else PostedState(attempt=attempt)


@dataclass(frozen=True)
class Decision:
    action: str  # NOTHING | PROGRESS | STALLED
    why: str = ""
    milestones: tuple[int, ...] = field(default_factory=tuple)  # milestones this post announces

    @property
    def posts(self) -> bool:
        return self.action != NOTHING


def latest_point(points: Sequence[Progress]) -> Progress | None:
    """The furthest step logged (eval lines share their step with a train line)."""
    return max(points, key=lambda p: (p.step, p.loss is not None)) if points else None


def percent_of(point: Progress | None) -> float | None:
    if point is None:
        return None
    percent = finite_number(point.percent)
    if percent is None and point.total:
        percent = 100.0 * point.step / point.total
    return percent


def latest_loss(points: Sequence[Progress]) -> float | None:
    for point in reversed(points):
        loss = finite_number(point.loss)
        if loss is not None:
            return loss
    return None


def first_loss(points: Sequence[Progress]) -> float | None:
    for point in points:
        loss = finite_number(point.loss)
        if loss is not None:
            return loss
    return None


def expected_duration(job: Job, point: Progress | None, *, now: float) -> float | None:
    """How long the whole run will take: time so far plus LLaMA-Factory's estimate of the rest."""
    if job.started_at is None:
        return None
    elapsed = max(0.0, now - job.started_at)
    remaining = finite_number(point.remaining_s) if point else None
    if remaining is None:
        percent = percent_of(point)
        if not percent:
            return None
        remaining = elapsed * (100.0 - percent) / percent
    return elapsed + max(0.0, remaining)


def quiet_since_of(job: Job, last_line_at: float | None, *, now: float) -> float:
    """When the job last showed life: its last log line, else its start."""
    known = [t for t in (last_line_at, job.started_at) if t is not None]
    return min(now, max(known)) if known else now


def decide_progress_post(
    job: Job,
    points: Sequence[Progress],
    state: PostedState,
    *,
    now: float,
    last_line_at: float | None,
    every_s: float,
    stall_after_s: float,
) -> Decision:
    """Whether to post in the job's thread now; `state` is what was posted for this attempt.

    `last_line_at` is when the job last wrote a log line (trainer log or its process log).
    """
    if job.state != JobState.RUNNING.value or job.kind not in PROGRESS_KINDS or job.started_at is None:
        return Decision(NOTHING, "not a running train/eval job")
    quiet_since = quiet_since_of(job, last_line_at, now=now)
    if now - quiet_since >= stall_after_s:
        if state.stalled_at is None:
            return Decision(STALLED, f"no new log line for {format_eta(now - quiet_since)}")
        return Decision(NOTHING, "stall already reported")
    point = latest_point(points)
    if point is None:
        return Decision(NOTHING, "no progress logged yet")
    if state.last_step is not None and point.step <= state.last_step:
        return Decision(NOTHING, "nothing changed since the last post")
    percent = percent_of(point) or 0.0
    crossed = tuple(m for m in MILESTONES if percent >= m and m not in state.milestones)
    since = state.last_post_at if state.last_post_at is not None else job.started_at
    if now - since >= every_s:
        return Decision(PROGRESS, "period", crossed)
    if crossed:
        total = expected_duration(job, point, now=now)
        if total is not None and total >= every_s:
            return Decision(PROGRESS, f"passed {crossed[-1]}%", crossed)
        return Decision(NOTHING, "shorter than the period")
    return Decision(NOTHING, "not yet time")


def after_post(
    state: PostedState, decision: Decision, points: Sequence[Progress], *, now: float
) -> PostedState:
    """The state once `decision`'s post went out."""
    if decision.action == STALLED:
        return replace(state, stalled_at=now)
    if decision.action != PROGRESS:
        return state
    point = latest_point(points)
    return replace(
        state,
        posts=state.posts + 1,
        last_post_at=now,
        last_step=point.step if point else state.last_step,
        last_loss=latest_loss(points),
        milestones=tuple(sorted({*state.milestones, *decision.milestones})),
        stalled_at=None,
    )


def moving_again(state: PostedState, stalled: bool) -> PostedState:
    """Clear a reported stall once the job writes again, so a later stall is reported too."""
    return replace(state, stalled_at=None) if state.stalled_at is not None and not stalled else state


def _trend(before: float | None, after: float | None, since_what: str) -> str | None:
    if after is None:
        return None
    if before is None:
        return f"loss {after:.4g}"
    change = after - before
    arrow = "↓" if change < 0 else "↑" if change > 0 else "→"
    relative = f" ({change / before:+.0%})" if before else ""
    return f"loss {before:.4g} → {after:.4g} {arrow}{relative} {since_what}"


def steps_per_minute(job: Job, point: Progress | None, *, now: float) -> float | None:
    if point is None or job.started_at is None:
        return None
    elapsed = finite_number(point.elapsed_s) or max(0.0, now - job.started_at)
    return 60.0 * point.step / elapsed if elapsed > 0 and point.step > 0 else None


def render_progress_post(
    job: Job, points: Sequence[Progress], state: PostedState, decision: Decision, *, now: float
) -> dict[str, Any]:
    """The thread post: step/total, loss trend since the last post, ETA, tokens/s.

    `state` is what was posted before this one (for the trend); the loss plot is uploaded right after.
    """
    point = latest_point(points)
    percent = percent_of(point)
    step = f"step {point.step}/{point.total or '?'}" if point else "no step yet"
    pct = f" ({percent:.0f}%)" if percent is not None else ""
    head = f":chart_with_upwards_trend: *{kind_label(job)}* · {escape(short_model(job.model))} · {step}{pct}"
    if decision.milestones:
        head += f" — past {decision.milestones[-1]}%"
    lines = [head]
    if point is not None:
        progress = point.to_dict()
        progress["loss"] = latest_loss(points)
        lines.append(progress_text(progress))
    since_what = "since the last post" if state.last_post_at is not None else "since the start"
    before = state.last_loss if state.last_post_at is not None else first_loss(points)
    trend = _trend(before, latest_loss(points), since_what)
    details = []
    if trend:
        details.append(f"*Loss:* {escape(trend)}")
    evals = [p.eval_loss for p in points if finite_number(p.eval_loss) is not None]
    if evals:
        was = f" (was {evals[-2]:.4g})" if len(evals) > 1 else ""
        details.append(f"*Eval loss:* {evals[-1]:.4g}{was}")
    remaining = finite_number(point.remaining_s) if point else None
    if remaining is not None:
        details.append(f"*ETA:* {format_eta(remaining)} (around {slack_date(now + remaining, '{time}')})")
    speed = sane_rate(point.tokens_per_s) if point else None  # never a broken (negative) count
    details.append(f"*Tokens/s:* {speed:,.0f}" if speed else "*Tokens/s:* not counted by this run")
    rate = steps_per_minute(job, point, now=now)
    if rate is not None:
        details.append(f"*Steps/min:* {rate:.3g}")
    blocks = [section("\n".join(lines)), section(" · ".join(details))]
    blocks.append(context(f"Progress post {state.posts + 1} · updated loss plot below"))
    fallback = f"{kind_label(job)}: {step}{pct}" + (f", {trend}" if trend else "")
    return message(fallback, blocks)


def log_tail(text: str, lines: int = STALL_TAIL_LINES) -> str:
    """The last lines of a process log; a tqdm bar redrawn with \\r counts as its last drawing."""
    kept = [chunk.split("\r")[-1].rstrip() for chunk in text.split("\n")]
    kept = [line for line in kept if line.strip()]
    return "\n".join(kept[-lines:])


def render_stall_post(
    job: Job, points: Sequence[Progress], *, now: float, last_line_at: float | None, tail: str
) -> dict[str, Any]:
    """A job that wrote nothing for a while: said once, to the requester, with the last log lines."""
    quiet_since = quiet_since_of(job, last_line_at, now=now)
    quiet = format_eta(now - quiet_since)
    point = latest_point(points)
    where = f" at step {point.step}/{point.total or '?'}" if point else " before its first step"
    text = (
        f":warning: {mention(job.user)} *{kind_label(job)} looks stalled*{where}: no new log line for "
        f"{quiet} (last at {slack_date(quiet_since, '{time}')})."
    )
    blocks = [section(text)]
    if tail.strip():
        blocks.append(section("*Last log lines:*\n" + code_block(tail, 2800)))
    then = " It can be resumed from its last checkpoint." if job.kind == JobKind.TRAIN.value else ""
    blocks.append(
        context(
            f"`cancel` in this thread stops it.{then} I will not repeat this unless it moves "
            "and stalls again."
        )
    )
    return message(f"{kind_label(job)} looks stalled{where}: no new log line for {quiet}", blocks)
