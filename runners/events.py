"""What can happen to a job: one enum of event kinds, each with a structured payload.

The engine records facts, never sentences: a front end (Slack, the terminal) turns an event into
words when it renders it, so nothing has to match text. `Store.add_event(job_id, kind, payload)`
writes one; `Store.events_since(cursor)` reads them in order. The payload builders below are the
one place each kind's fields are named.

A change of state (queued, running, starting, serving, succeeded, failed, cancelled, interrupted,
stopped) is one `STATE` event whose `state` is a `JobState`, carrying the fields that moved with it
(error, advice, exit_code, url, …): one event per transition, not a second kind per state.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class EventKind(str, Enum):
    STATE = "state"  # {"state": JobState value, ...public fields set by the same transition}
    STARTED = "started"  # {"slots": [...], "attempt": n, "config": file key | None}
    PROGRESS = "progress"  # runners.llamafactory.progress.Progress.to_dict()
    PLOT = "plot"  # {"file": file key, "final": bool, "points": n}
    ACTIVITY = "activity"  # {"log_at": time of the last log write | None, "log_bytes": n, "tail": str}
    CANCEL_REQUESTED = "cancel_requested"  # {"by": who}
    RESUMED = "resumed"  # {"checkpoint": "checkpoint-40" | None, "attempt": n}
    REATTACHED = "reattached"  # {}: a restarted runner follows a process that kept running
    FETCHING = "fetching"  # {}: inputs are being copied from the artifact store before the start
    ESTIMATE = "estimate"  # runners.speed.estimate.Estimate.to_dict(): a train job's time, before it runs
    RESULT = "result"  # {"kind": job kind, "metrics": {...}, "artifacts": {...}}
    UPLOAD = "upload"  # {"name", "location", "size", "link"?} or {"name", "error", "local"}
    NOTE = "note"  # {"text"}: only in databases older than typed events (free text of that time)


def kind_of(value: str) -> EventKind | None:
    """The kind of a stored event's type, or None for one this release does not know."""
    try:
        return EventKind(value)
    except ValueError:
        return None


def started(slots: list[str], attempt: int, config: str | None) -> dict[str, Any]:
    return {"slots": list(slots), "attempt": attempt, "config": config}


def plot(file: str, *, final: bool, points: int) -> dict[str, Any]:
    return {"file": file, "final": final, "points": points}


def activity(log_at: float | None, log_bytes: int, tail: str) -> dict[str, Any]:
    return {"log_at": log_at, "log_bytes": log_bytes, "tail": tail}


def cancel_requested(by: str) -> dict[str, Any]:
    return {"by": by}


def resumed(checkpoint: str | None, attempt: int) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "attempt": attempt}


def result(kind: str, metrics: dict[str, Any], artifacts: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "metrics": metrics, "artifacts": artifacts}


def from_legacy_message(data: dict[str, Any]) -> tuple[EventKind, dict[str, Any]]:
    """A free-text `message` event of a database older than typed events, as a typed one (run once,
    by the schema migration; the texts are those the engine wrote then)."""
    data = data or {}
    text = str(data.get("text") or "")
    if text == "started":
        return EventKind.STARTED, {"slots": list(data.get("slots") or []), "attempt": None, "config": None}
    if text == "cancel requested":
        return EventKind.CANCEL_REQUESTED, {"by": None}
    if text.startswith("tunebot restarted"):
        return EventKind.REATTACHED, {}
    if text.startswith("resuming from "):
        return EventKind.RESUMED, {"checkpoint": text[len("resuming from ") :], "attempt": None}
    if text.startswith("no checkpoint yet"):
        return EventKind.RESUMED, {"checkpoint": None, "attempt": None}
    if text.startswith("fetching its inputs"):
        return EventKind.FETCHING, {}
    return EventKind.NOTE, {"text": text}
