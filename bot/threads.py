"""Which job a Slack thread is about, and which thread a new job's story goes into.

The engine keeps a job's origin as opaque JSON (`Job.origin`): Slack puts the channel and the thread
it was asked in there (`slack_origin`). The bot keeps its own mapping in the `bot_thread` table: per
job its channel, the thread it was asked in, and its root message once the notifier has posted it
(`record_root`). A job's root message is its thread; eval, export and deploy jobs of a trained model
are asked with the thread of their train job, so one thread tells the model's whole story.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import Index, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, select

from bot.state.tables import BotModel, BotTables, ensure_tables
from runners.job import Job
from runners.store import Store


class BotThread(BotModel, table=True):
    """Where a Slack job's story is told."""

    __tablename__ = "bot_thread"
    __table_args__ = (
        Index("ix_bot_thread_channel_message_ts", "channel", "message_ts"),
        Index("ix_bot_thread_channel_thread_ts", "channel", "thread_ts"),
    )

    job_id: int = Field(primary_key=True)
    channel: str = ""
    thread_ts: str = ""  # the thread it was asked in; "" = a new message in the channel
    message_ts: str = ""  # its root message, once Slack took it


THREAD_TABLES = BotTables("thread", (BotThread.__table__,))


def slack_origin(channel: str, thread_ts: str = "") -> dict[str, Any]:
    """The origin a Slack request gives its job (`Requester.origin`)."""
    return {"channel": channel, "thread_ts": thread_ts} if channel else {}


def channel_of(job: Job) -> str:
    """The channel a job came from; "" for jobs not asked in Slack (the CLI)."""
    return str((job.origin or {}).get("channel") or "")


def asked_in(job: Job) -> str:
    """The thread the job was asked in ("" if it was asked at the channel's top level)."""
    return str((job.origin or {}).get("thread_ts") or "")


_ready: weakref.WeakSet = weakref.WeakSet()
_ready_lock = threading.Lock()


def ensure_table(store: Store) -> None:
    with _ready_lock:
        if store.engine not in _ready:
            ensure_tables(store.engine, THREAD_TABLES)
            _ready.add(store.engine)


def sync(store: Store) -> None:
    """Rows for Slack jobs that have none yet (new jobs; jobs of a database from before the table,
    whose origin also carries the root message the job row used to)."""
    ensure_table(store)
    with store.session() as s:
        newest = s.exec(select(func.max(BotThread.job_id))).one() or 0
        jobs = s.exec(select(Job.id, Job.origin).where(Job.id > newest).order_by(Job.id)).all()
        for job_id, origin in jobs:
            if (origin or {}).get("channel"):
                _insert(s, job_id, origin)


def _insert(session, job_id: int, origin: dict[str, Any]) -> None:
    row = BotThread(job_id=job_id, channel=str(origin.get("channel") or ""),
                    thread_ts=str(origin.get("thread_ts") or ""),
                    message_ts=str(origin.get("message_ts") or ""))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # another process recorded it first
        session.rollback()


def remember(store: Store, job: Job) -> BotThread | None:
    """The job's row, made from its origin if it has none yet; None for a job not from Slack."""
    if not channel_of(job):
        return None
    ensure_table(store)
    with store.session() as s:
        row = s.get(BotThread, job.id)
        if row is None:
            _insert(s, job.id, job.origin)
            row = s.get(BotThread, job.id)
    return row


def root_ts(store: Store, job: Job) -> str:
    """The ts of the job's root message; "" until the notifier has it."""
    row = remember(store, job)
    return row.message_ts if row is not None else ""


def record_root(store: Store, job_id: int, ts: str) -> None:
    """Slack took the job's root message: its ts is the job's thread from now on."""
    ensure_table(store)
    job = store.find(job_id)
    if job is not None:
        remember(store, job)
    with store.session() as s:
        s.exec(update(BotThread).where(BotThread.job_id == job_id).values(message_ts=ts))
        s.commit()


def story_thread(store: Store, job: Job) -> str:
    """The thread a job's story is told in: the thread it was posted into, or its own message's."""
    return asked_in(job) or root_ts(store, job)


def job_of_thread(store: Store, channel: str, thread_ts: str) -> Job | None:
    """The job whose root message started the thread `thread_ts` in `channel`, if any."""
    if not channel or not thread_ts:
        return None
    sync(store)
    with store.session() as s:
        root = s.exec(select(BotThread.job_id).where(BotThread.channel == channel,
                                                     BotThread.message_ts == thread_ts)
                      .order_by(BotThread.job_id)).first()
        if root is not None:
            return store.find(root)
        # The notifier may not have recorded the root yet; a job asked into this thread knows its parent.
        child_id = s.exec(select(BotThread.job_id).where(BotThread.channel == channel,
                                                         BotThread.thread_ts == thread_ts)
                          .order_by(BotThread.job_id)).first()
    child = store.find(child_id) if child_id is not None else None
    if child is not None and child.parent_id:
        parent = store.find(child.parent_id)
        if parent is not None and channel_of(parent) == channel and root_ts(store, parent) in ("", thread_ts):
            return parent
    return child


def jobs_in_thread(store: Store, channel: str, thread_ts: str) -> list[Job]:
    """Every job whose story is told in this thread (the root job first, then the rest by id)."""
    sync(store)
    with store.session() as s:
        ids = list(s.exec(
            select(BotThread.job_id).where(BotThread.channel == channel)
            .where((BotThread.message_ts == thread_ts) | (BotThread.thread_ts == thread_ts))
            .order_by(BotThread.job_id)
        ).all())
    return sorted(store.jobs_by_id(ids), key=lambda j: j.id or 0)
