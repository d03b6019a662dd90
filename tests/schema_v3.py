"""A job store as release 3 of the schema left it (before the architecture change): the job row
held Slack's channel/thread/root message and the process's pid. Built with SQLAlchemy Core so the
same upgrade is proven on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
)


def _tables(meta: MetaData) -> dict[str, Table]:
    job = Table(
        "job", meta,
        Column("id", Integer, primary_key=True),
        Column("kind", String, nullable=False, index=True),
        Column("state", String, nullable=False, index=True),
        Column("preset", String),
        Column("spec", JSON, nullable=False),
        Column("args", JSON, nullable=False),
        Column("parent_id", Integer, index=True),
        Column("model", String, nullable=False),
        Column("dataset", String),
        Column("method", String),
        Column("mode", String),
        Column("user", String, nullable=False, index=True),
        Column("channel", String, nullable=False),
        Column("thread_ts", String, nullable=False),
        Column("message_ts", String, nullable=False),
        Column("request_key", Text, unique=True),
        Column("created_at", Float, nullable=False),
        Column("started_at", Float),
        Column("finished_at", Float),
        Column("attempt", Integer, nullable=False),
        Column("runner_id", String),
        Column("host", String),
        Column("pid", Integer),
        Column("proc_start", Float),
        Column("n_slots", Integer, nullable=False),
        Column("slots", JSON, nullable=False),
        Column("work_dir", String, nullable=False),
        Column("log_path", String, nullable=False),
        Column("exit_code", Integer),
        Column("cancel_requested", Boolean, nullable=False),
        Column("cancelled_by", String),
        Column("progress", JSON, nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("artifacts", JSON, nullable=False),
        Column("error", Text),
        Column("advice", Text),
        Column("log_tail", Text),
        Column("port", Integer),
        Column("url", String),
        Column("chat_url", String),
        Column("api_key", String),
        Column("last_activity", Float),
        Index("ix_job_channel_message_ts", "channel", "message_ts"),
        Index("ix_job_channel_thread_ts", "channel", "thread_ts"),
    )
    event = Table(
        "job_event", meta,
        Column("id", Integer, primary_key=True),
        Column("job_id", Integer, nullable=False, index=True),
        Column("at", Float, nullable=False),
        Column("type", String, nullable=False, index=True),
        Column("data", JSON, nullable=False),
    )
    Table(
        "runner", meta,
        Column("id", String, primary_key=True),
        Column("host", String, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("started_at", Float, nullable=False),
        Column("seen_at", Float, nullable=False),
        Column("hardware", JSON),
    )
    version = Table(
        "schema_version", meta,
        Column("id", Integer, primary_key=True),
        Column("version", Integer, nullable=False),
        Column("applied_at", Float, nullable=False),
        UniqueConstraint("version"),
    )
    return {"job": job, "job_event": event, "schema_version": version}


def make_v3_database(url: str, jobs: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> None:
    """A version-3 database at `url` holding `jobs` (v3 column values over defaults) and `events`."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    meta = MetaData()
    tables = _tables(meta)
    meta.create_all(engine)
    defaults = {
        "kind": "train", "state": "queued", "spec": {}, "args": {}, "model": "m", "user": "",
        "channel": "", "thread_ts": "", "message_ts": "", "created_at": time.time(), "attempt": 1,
        "n_slots": 1, "slots": [], "work_dir": "", "log_path": "", "cancel_requested": False,
        "progress": {}, "metrics": {}, "artifacts": {},
    }
    with engine.begin() as conn:
        for version in (1, 2, 3):
            conn.execute(tables["schema_version"].insert().values(version=version, applied_at=time.time()))
        for job in jobs:
            conn.execute(tables["job"].insert().values(**{**defaults, **job}))
        for event in events:
            conn.execute(tables["job_event"].insert().values(**{"at": time.time(), **event}))
    engine.dispose()
