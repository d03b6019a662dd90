"""What the runner keeps in memory about a job whose process it follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..backends import Handle


@dataclass
class Running:
    job_id: int
    handle: Handle
    follower: Any = None  # TrainerLogFollower for kinds that write a trainer log
    term_sent_at: float | None = None
    killed: bool = False
    stop_reason: str | None = None  # why tunebot stopped it (idle deployment, start-up timeout)
    last_plot_at: float = 0.0
    new_points: bool = False
    seen_step: int = 0
    last_activity_at: float = 0.0
    backlog: list = field(default_factory=list)  # trainer_log points read but not yet recorded
    final_plot_done: bool = False
    succeeded_with: dict[str, Any] | None = None  # the values its success was recorded with
    measured: tuple[dict[str, Any], dict[str, Any]] | None = None  # its measured metrics, progress
    trouble_logged: bool = False  # a follow error of this job was logged once already
    # The first training step this runner saw logged: live tokens/s and time left are measured
    # from it, so compiling in the first step reads as start-up (speed/throughput.true_progress).
    first_point: dict[str, Any] | None = None
    # What its launch recorded beside the handle (a deployment's port, API key): written again if
    # the launch's own write met a database outage.
    launch_values: dict[str, Any] = field(default_factory=dict)


def checkpoint_step(path: Any) -> int:
    """`.../checkpoint-40` -> 40; no checkpoint (starting over) -> 0."""
    try:
        return int(str(path).rstrip("/").rsplit("-", 1)[1]) if path else 0
    except (IndexError, ValueError):
        return 0
