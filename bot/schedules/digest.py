"""A channel's digest: what the GPUs did for the jobs asked for in that channel.

`build_digest` reads the store (nothing else: no clock, no Slack) and `render_digest` turns the
result into Block Kit, so a digest is tested without time passing. Scoping: the jobs requested
from the channel (the bot's thread table, bot/threads.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import select

from bot.render import (
    METRIC_LABELS,
    SECTION_TEXT_MAX,
    STATE_EMOJI,
    code,
    context,
    escape,
    estimate_text,
    finite_number,
    header,
    link,
    mention,
    message,
    ordinal,
    progress_text,
    section,
    short_model,
    slack_date,
    slack_len,
    speed_text,
    truncate,
)
from bot.render.scores import base_gain
from runners.job import Job, JobKind, JobState
from runners.llamafactory.progress import format_eta
from runners.store import Store

from ..threads import BotThread, sync

RUNNING_STATES = (JobState.RUNNING.value, JobState.STARTING.value)
DONE_STATES = (JobState.SUCCEEDED.value, JobState.CANCELLED.value, JobState.STOPPED.value)
FAILED_STATES = (JobState.FAILED.value, JobState.INTERRUPTED.value)
# A digest lists at most this many jobs per part; the rest are counted.
MAX_LISTED = 15


@dataclass(frozen=True)
class Usage:
    """Slot time one user's jobs held in the period (a serving deployment holds its GPU too)."""

    user: str
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    jobs: int = 0


@dataclass
class DigestData:
    channel: str
    since: float | None
    until: float
    now: float
    running: list[Job] = field(default_factory=list)
    queued: list[tuple[Job, int | None]] = field(default_factory=list)  # (job, place in the whole queue)
    finished: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    serving: list[Job] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)
    title: str = "tunebot digest"
    # Evals of the period that set the best ROUGE-L on their eval set: (eval, the best before it).
    new_bests: list[tuple[Job, float | None]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.running or self.queued or self.finished or self.failed or self.serving or self.usage)


def _finished_between(since: float | None, until: float):
    clause = Job.finished_at < until
    return and_(Job.finished_at >= since, clause) if since is not None else clause


def slot_hours(job: Job, *, since: float | None, until: float, now: float) -> tuple[float, float]:
    """(GPU hours, CPU-slot hours) the job held within [since, until): its run time clipped to the
    period, times its slots. Slots named `cpuN` are CPU slots; a job with none recorded counts
    `n_slots` GPUs."""
    if job.started_at is None:
        return 0.0, 0.0
    end = job.finished_at if job.finished_at is not None else min(now, until)
    start = job.started_at if since is None else max(job.started_at, since)
    seconds = max(0.0, min(end, until) - start)
    if seconds <= 0:
        return 0.0, 0.0
    slots = list(job.slots or [])
    cpu = sum(1 for s in slots if str(s).startswith("cpu"))
    gpu = len(slots) - cpu if slots else max(1, job.n_slots or 1)
    return gpu * seconds / 3600.0, cpu * seconds / 3600.0


def usage_by_user(jobs: Iterable[Job], *, since: float | None, until: float, now: float) -> list[Usage]:
    totals: dict[str, list[float]] = {}
    for job in jobs:
        gpu, cpu = slot_hours(job, since=since, until=until, now=now)
        if gpu <= 0 and cpu <= 0:
            continue
        row = totals.setdefault(job.user or "", [0.0, 0.0, 0])
        row[0] += gpu
        row[1] += cpu
        row[2] += 1
    rows = [Usage(user, gpu, cpu, int(n)) for user, (gpu, cpu, n) in totals.items()]
    return sorted(rows, key=lambda r: (-(r.gpu_hours + r.cpu_hours), r.user))


def build_digest(
    store: Store,
    *,
    channel: str,
    since: float | None,
    until: float,
    now: float,
    title: str = "tunebot digest",
) -> DigestData:
    """What happened to `channel`'s jobs in [since, until), and what runs, waits and serves at `now`."""
    sync(store)
    with store.session() as s:
        mine = Job.id.in_(select(BotThread.job_id).where(BotThread.channel == channel))

        def jobs(*where: Any, newest_first: bool = False) -> list[Job]:
            order = Job.id.desc() if newest_first else Job.id.asc()
            return list(s.exec(select(Job).where(mine, *where).order_by(order)).all())

        running = jobs(Job.state.in_(RUNNING_STATES))
        queued = jobs(Job.state == JobState.QUEUED.value)
        finished = jobs(Job.state.in_(DONE_STATES), _finished_between(since, until))
        failed = jobs(Job.state.in_(FAILED_STATES), _finished_between(since, until))
        serving = jobs(Job.state == JobState.SERVING.value)
        overlap = [Job.started_at.is_not(None), Job.started_at < until]
        if since is not None:
            overlap.append(or_(Job.finished_at.is_(None), Job.finished_at > since))
        used = jobs(*overlap)
    return DigestData(
        new_bests=_new_bests(store, finished),
        channel=channel,
        since=since,
        until=until,
        now=now,
        running=running,
        queued=[(job, store.queue_position(job.id)) for job in queued],  # in the whole queue
        finished=finished,
        failed=failed,
        serving=serving,
        usage=usage_by_user(used, since=since, until=until, now=now),
        title=title,
    )


def _new_bests(store: Store, finished: list[Job]) -> list[tuple[Job, float | None]]:
    """The period's evals that beat every earlier score on their eval set (base models included)."""
    from runners.compare.leaderboard import is_new_best

    evals = [j for j in finished if j.kind == JobKind.EVAL.value and j.state == JobState.SUCCEEDED.value]
    if not evals:
        return []
    every = store.list_jobs(kinds=[JobKind.EVAL.value], states=[JobState.SUCCEEDED.value])
    found = []
    for job in evals:
        best, before = is_new_best(job, every)
        if best:
            found.append((job, before))
    return found


def _best_line(job: Job, before: float | None) -> str:
    score = _metric(job, "rouge-l")
    was = f" (the best before: {before:.1f})" if before is not None else " (the first score on it)"
    who = f"*#{job.parent_id or job.id}*"
    return f":trophy: New best on {code(job.dataset or '')}: {who} ROUGE-L {score:.1f}{was}"


# -- rendering ------------------------------------------------------------------------------------


def _metric(job: Job, name: str) -> float | None:
    metrics = job.metrics or {}
    return finite_number(metrics.get(name, metrics.get(f"predict_{name}")))


def _what(job: Job) -> str:
    bits = [f"*#{job.id}* {escape(job.kind)}", code(short_model(job.model))]
    if job.dataset:
        bits.append(f"on {code(job.dataset)}")
    if job.parent_id:
        bits.append(f"from #{job.parent_id}")
    return " ".join(bits)


def results_text(job: Job) -> str:
    """ROUGE/BLEU of an eval, the loss of a training, the size of an export — what it achieved."""
    bits = [
        f"{label} {_metric(job, key):.2f}" for key, label in METRIC_LABELS if _metric(job, key) is not None
    ]
    gain = base_gain(job.metrics or {})
    if gain is not None:
        bits.append(f"ROUGE-L {gain:+.1f} over the base model")
    if job.kind == JobKind.TRAIN.value:
        progress = job.progress or {}
        final = finite_number(progress.get("loss"))
        mean = finite_number((job.metrics or {}).get("train_loss"))
        if final is not None:
            bits.append(f"final loss {final:.4g}")
        if mean is not None:
            bits.append(f"mean loss {mean:.4g}")
        eval_loss = finite_number(progress.get("eval_loss"))
        if eval_loss is not None:
            bits.append(f"eval loss {eval_loss:.4g}")
        speed = speed_text(job)
        if speed:
            bits.append(speed)
    size = finite_number((job.metrics or {}).get("size_bytes"))
    if size:
        bits.append(f"{size / 1e9:.2f} GB")
    return ", ".join(bits)


def _running_line(job: Job) -> str:
    line = f"{STATE_EMOJI.get(job.state, '')} {_what(job)} · {mention(job.user)}"
    if job.state == JobState.STARTING.value:
        return line + " · starting"
    if job.progress:
        line += "\n      " + progress_text(job.progress)
    return line


def _queued_line(job: Job, place: int | None) -> str:
    where = f" · {ordinal(place)} in line" if place else ""
    estimate = estimate_text(job)
    where += f" · {estimate}" if estimate else ""
    return f"{STATE_EMOJI[JobState.QUEUED.value]} {_what(job)} · {mention(job.user)}{where}"


def _finished_line(job: Job) -> str:
    took = job.duration()
    bits = [f"{STATE_EMOJI.get(job.state, '')} {_what(job)}"]
    if job.state != JobState.SUCCEEDED.value:
        bits.append(escape(job.state))
    results = results_text(job)
    if results:
        bits.append(results)
    estimate = estimate_text(job)
    if estimate:
        bits.append(estimate)
    elif took is not None:
        bits.append(f"took {format_eta(took)}")
    bits.append(mention(job.user))
    return " · ".join(bits)


def _failed_line(job: Job) -> str:
    reason = job.error or (
        f"exit code {job.exit_code}" if job.exit_code is not None else "stopped with an error"
    )
    why = escape(truncate(reason, 300))
    line = f"{STATE_EMOJI.get(job.state, '')} {_what(job)} · {mention(job.user)}: {why}"
    if job.advice:
        line += f"\n      :bulb: {escape(truncate(job.advice, 300))}"
    return line


def _serving_line(job: Job) -> str:
    line = f"{STATE_EMOJI[JobState.SERVING.value]} {_what(job)} · {mention(job.user)}"
    if job.chat_url:
        line += f" · chat: {link(job.chat_url)}"
    if job.url and job.url != job.chat_url:
        line += f" · API: {code(job.url)}"
    return line


def _hours(value: float) -> str:
    return f"{value:.2f} h" if value < 10 else f"{value:.1f} h"


def _usage_line(row: Usage) -> str:
    bits = []
    if row.gpu_hours > 0:
        bits.append(f"{_hours(row.gpu_hours)} GPU")
    if row.cpu_hours > 0:
        bits.append(f"{_hours(row.cpu_hours)} CPU slot")
    jobs = f"{row.jobs} job{'s' if row.jobs != 1 else ''}"
    return f"{mention(row.user)}: {' + '.join(bits)} ({jobs})"


def _part(title: str, lines: list[str]) -> list[dict[str, Any]]:
    """A titled list as one or more sections within Slack's 3000-character limit."""
    shown = lines[:MAX_LISTED]
    if len(lines) > MAX_LISTED:
        shown.append(f"…and {len(lines) - MAX_LISTED} more.")
    blocks: list[dict[str, Any]] = []
    chunk = [f"*{title}*"]
    for line in shown:
        line = truncate(line, SECTION_TEXT_MAX - 100)
        if slack_len("\n".join([*chunk, line])) > SECTION_TEXT_MAX:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    blocks.append(section("\n".join(chunk)))
    return blocks


def period_text(data: DigestData) -> str:
    if data.since is None:
        return f"until {slack_date(data.until)}"
    return f"{slack_date(data.since)} – {slack_date(data.until)}"


def render_digest(data: DigestData) -> dict[str, Any]:
    """The digest message; an empty period is one line, not silence."""
    period = period_text(data)
    if data.is_empty:
        text = (
            f":zzz: *{escape(data.title)}* ({period}): no jobs ran, none are waiting and nothing is deployed."
        )
        return message(f"{data.title}: nothing ran, nothing queued, nothing deployed.", [section(text)])
    blocks: list[dict[str, Any]] = [
        header(f":clipboard: {data.title}"),
        context(f"This channel's jobs, {period}"),
    ]
    counts = []
    if data.running:
        blocks += _part(f"Running ({len(data.running)})", [_running_line(j) for j in data.running])
        counts.append(f"{len(data.running)} running")
    if data.queued:
        blocks += _part(f"Queued ({len(data.queued)})", [_queued_line(j, p) for j, p in data.queued])
        counts.append(f"{len(data.queued)} queued")
    if data.new_bests:
        blocks += _part("Leaderboards", [_best_line(j, b) for j, b in data.new_bests])
    if data.finished:
        blocks += _part(f"Finished ({len(data.finished)})", [_finished_line(j) for j in data.finished])
        counts.append(f"{len(data.finished)} finished")
    if data.failed:
        blocks += _part(f"Failed ({len(data.failed)})", [_failed_line(j) for j in data.failed])
        counts.append(f"{len(data.failed)} failed")
    if data.serving:
        blocks += _part(f"Serving ({len(data.serving)})", [_serving_line(j) for j in data.serving])
        counts.append(f"{len(data.serving)} serving")
    if data.usage:
        gpu = sum(r.gpu_hours for r in data.usage)
        title = f"GPU hours in the period ({_hours(gpu)} in all)" if gpu > 0 else "Slot hours in the period"
        blocks += _part(title, [_usage_line(r) for r in data.usage])
    else:
        blocks.append(context("No GPU time used in the period."))
    fallback = f"{data.title}: " + (", ".join(counts) if counts else "no jobs now; GPU time was used")
    return message(fallback, blocks)
