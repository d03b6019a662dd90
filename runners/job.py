"""The job model: what a job is, the states it moves through, and its event stream.

Times are seconds since the epoch (floats): the same on SQLite and PostgreSQL, no time zones.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Integer, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class JobKind(str, Enum):
    TRAIN = "train"
    EVAL = "eval"
    EXPORT = "export"
    DEPLOY = "deploy"


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    # deployments
    STARTING = "starting"
    SERVING = "serving"
    STOPPED = "stopped"


# A job in one of these holds a slot and has (or is about to have) a process.
ACTIVE_STATES = (JobState.RUNNING.value, JobState.STARTING.value, JobState.SERVING.value)
FINAL_STATES = (
    JobState.SUCCEEDED.value,
    JobState.FAILED.value,
    JobState.CANCELLED.value,
    JobState.INTERRUPTED.value,
    JobState.STOPPED.value,
)
# Train jobs in these may be resumed from their last checkpoint.
RESUMABLE_STATES = (JobState.INTERRUPTED.value, JobState.FAILED.value, JobState.CANCELLED.value)


def now() -> float:
    return time.time()


def _json(default_factory):
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


class Job(SQLModel, table=True):
    __tablename__ = "job"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)
    state: str = Field(default=JobState.QUEUED.value, index=True)
    preset: str | None = None
    # What the user asked for (key=value pairs, preset, YAML) and the full LLaMA-Factory arguments.
    spec: dict[str, Any] = _json(dict)
    args: dict[str, Any] = _json(dict)
    # eval/export/deploy: the job whose adapter or merged model they use.
    parent_id: int | None = Field(default=None, index=True)
    model: str = ""
    dataset: str | None = None
    method: str | None = None
    mode: str | None = None  # deploy: api | webchat
    # Who asked (empty for the CLI), and where the answers go: `origin` is the front end's own
    # JSON (Slack keeps its channel and thread there), stored and returned, never read, by the engine.
    user: str = Field(default="", index=True)
    origin: dict[str, Any] = _json(dict)
    # De-duplicates redelivered requests (Slack trigger_id / event_id).
    request_key: str | None = Field(default=None, sa_column=Column(Text, unique=True, nullable=True))
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 1
    # The process, once running. `handle` is the backend's own JSON (runners.backends): only the
    # backend that started the job reads it, e.g. to re-attach after a restart.
    runner_id: str | None = None
    host: str | None = None
    handle: dict[str, Any] = _json(dict)
    n_slots: int = 1
    slots: list[str] = _json(list)
    work_dir: str = ""
    log_path: str = ""
    exit_code: int | None = None
    cancel_requested: bool = False
    cancelled_by: str | None = None
    # Results.
    progress: dict[str, Any] = _json(dict)
    metrics: dict[str, Any] = _json(dict)
    artifacts: dict[str, Any] = _json(dict)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    advice: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    log_tail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Deployments.
    port: int | None = None
    url: str | None = None
    chat_url: str | None = None
    api_key: str | None = None  # secret: shown to the requester only, never posted or logged
    last_activity: float | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def label(self) -> str:
        return f"#{self.id}"

    def duration(self, at: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or at or now()
        return max(0.0, end - self.started_at)


class JobEvent(SQLModel, table=True):
    """One thing that happened to a job; front ends read these from a cursor (the id)."""

    __tablename__ = "job_event"

    # BIGINT on PostgreSQL; SQLite only auto-increments a plain INTEGER primary key.
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    job_id: int = Field(index=True)
    at: float = Field(default_factory=now)
    type: str = Field(index=True)  # a runners.events.EventKind value
    data: dict[str, Any] = _json(dict)


class AuditEntry(SQLModel, table=True):
    """Who did what, when."""

    __tablename__ = "audit"

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now, index=True)
    user: str = ""
    action: str = ""
    job_id: int | None = None
    detail: dict[str, Any] = _json(dict)


class SlotLease(SQLModel, table=True):
    """A GPU (or CPU slot) of one host held by one job: the primary key makes a lease exclusive."""

    __tablename__ = "slot_lease"

    host: str = Field(primary_key=True)
    slot: str = Field(primary_key=True)
    job_id: int = Field(index=True)
    at: float = Field(default_factory=now)


class RunnerBeat(SQLModel, table=True):
    """A live runner process says so here every few seconds."""

    __tablename__ = "runner"

    id: str = Field(primary_key=True)
    host: str = ""
    pid: int = 0
    started_at: float = Field(default_factory=now)
    seen_at: float = Field(default_factory=now)
    # What it can run (runners.hardware.Hardware.to_dict() plus its slots): front ends on other
    # hosts judge requests against this, not against their own machine.
    hardware: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class JobFile(SQLModel, table=True):
    """A small file the runner made for a job (a loss plot, the exact config), kept in the database
    so a front end on another host can post it without reading the runner's disk."""

    __tablename__ = "job_file"

    key: str = Field(primary_key=True)
    job_id: int = Field(index=True)
    name: str = ""
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    at: float = Field(default_factory=now)


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "schema_version"
    __table_args__ = (UniqueConstraint("version"),)

    id: int | None = Field(default=None, primary_key=True)
    version: int
    applied_at: float = Field(default_factory=now)
