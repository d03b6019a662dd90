"""A job's family: the evals, exports and deployments made from it (and from its exports), with
their states and scores — for `tunebot show` and `/tune status JOB`. Pure but for one store read."""

from __future__ import annotations

from typing import Any

from runners.job import Job, JobKind
from runners.store import Store

from .render import STATE_EMOJI, escape, section
from .scores import scores_line

MAX_SHOWN = 30


def family_of(store: Store, job: Job) -> list[Job]:
    """Jobs made from `job`, then from those (an export's deployments), oldest first."""
    found: list[Job] = []
    frontier = [job.id]
    seen = {job.id}
    while frontier and len(found) < MAX_SHOWN:
        parent = frontier.pop(0)
        for child in store.list_jobs(parent_id=parent, newest_first=False):
            if child.id not in seen:
                seen.add(child.id)
                found.append(child)
                frontier.append(child.id)
    return sorted(found, key=lambda j: j.id or 0)[:MAX_SHOWN]


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
