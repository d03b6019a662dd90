"""A job's family — the evals, exports and deployments made from it (and from its exports), with
their states and scores — as lines for `tunebot show` and `/tune status JOB`. Pure; the jobs come
from `bot.use_cases.family_of`."""

from __future__ import annotations

from typing import Any

from runners.job import Job, JobKind

from .blocks import escape, section
from .job import STATE_EMOJI
from .scores import scores_line


def member_line(job: Job, *, slack: bool) -> str:
    """`#13 eval ✓ succeeded on demo-eval: ROUGE-L 41.2 (base 28.9, +12.3)`."""
    bits = [f"#{job.id} {job.kind} {job.state}"]
    if job.kind == JobKind.EVAL.value:
        if job.dataset:
            bits.append(f"on {job.dataset}")
        scores = scores_line(job.metrics or {})
        if scores:
            bits[-1] += ":"
            bits.append(scores)
    if job.parent_id:
        bits.append(f"(from #{job.parent_id})")
    if job.kind == JobKind.EXPORT.value and job.artifacts.get("model"):
        bits.append(f"→ {job.artifacts['model']}")
    if job.kind == JobKind.DEPLOY.value and job.chat_url and job.state == "serving":
        bits.append(f"chat page {job.chat_url}")
    text = " ".join(bits)
    return f"{STATE_EMOJI.get(job.state, '')} {escape(text)}" if slack else text


def render_family(family: list[Job]) -> list[dict[str, Any]]:
    if not family:
        return []
    lines = ["*Made from it*", *(member_line(j, slack=True) for j in family)]
    return [section("\n".join(lines))]


def family_lines(family: list[Job]) -> list[str]:
    if not family:
        return []
    return ["  made from it:", *(f"    {member_line(j, slack=False)}" for j in family)]
