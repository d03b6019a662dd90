"""Which job a Slack thread is about, and which thread a new job's story goes into.

A job's root message is its thread: the notifier records the message's ts as `job.message_ts`.
Eval, export and deploy jobs of a trained model are asked with `thread_ts` of their train job's
thread, so one thread tells the model's whole story.
"""

from __future__ import annotations

from sqlmodel import select

from runners.job import Job
from runners.store import Store


def story_thread(job: Job) -> str:
    """The thread a job's story is told in: the thread it was posted into, or its own message's."""
    return job.thread_ts or job.message_ts or ""


def job_of_thread(store: Store, channel: str, thread_ts: str) -> Job | None:
    """The job whose root message started the thread `thread_ts` in `channel`, if any."""
    if not channel or not thread_ts:
        return None
    with store.session() as s:
        root = s.exec(
            select(Job).where(Job.channel == channel, Job.message_ts == thread_ts).order_by(Job.id)
        ).first()
        if root is not None:
            return root
        # The notifier may not have recorded the root yet; a job asked into this thread knows its parent.
        child = s.exec(
            select(Job).where(Job.channel == channel, Job.thread_ts == thread_ts).order_by(Job.id)
        ).first()
    if child is not None and child.parent_id:
        parent = store.find(child.parent_id)
        if parent is not None and parent.channel == channel and parent.message_ts in ("", thread_ts):
            return parent
    return child


def jobs_in_thread(store: Store, channel: str, thread_ts: str) -> list[Job]:
    """Every job whose story is told in this thread (the root job first, then the rest by id)."""
    with store.session() as s:
        jobs = list(s.exec(
            select(Job).where(Job.channel == channel)
            .where((Job.message_ts == thread_ts) | (Job.thread_ts == thread_ts))
            .order_by(Job.id)
        ).all())
    return jobs

