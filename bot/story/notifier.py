"""The job story teller: follows the engine's event stream and tells each Slack job its story.

For every event of a job that came from Slack (its origin has a channel), the notifier makes sure the
job has its root message, then hands `posts.thread_posts` to Delivery. Where things go:

- A train job's root is a new message in its channel, or a reply in the thread it was asked
  in; its posts go into the root's thread.
- Eval, export and deploy jobs of a job tell their part of the same story: their root is a reply
  in the parent's thread (edited in place as they move), and their posts follow it there.

The cursor (the last event handled) is kept in the database, so a restart neither posts twice nor
skips; a first start begins at the newest event. Root messages are posted with the key
`job:<id>:root`: a root Slack has not taken yet (Slack down) is still a place to post into and edit,
and its ts is recorded in the bot's thread table (bot/threads.py) once it is sent. Every other post
has the key `job:<id>:ev:<event id>:<n>`, so a second notifier on the same database (two `tunebot
serve`) cannot post it twice; and only the holder of the notifier's lease (`tunebot_notifier_lease`,
a lease of bot/state/leases.py) follows the stream at all, the others standing by.

Every root post and edit carries Slack message metadata `{"event_type": "tunebot_job",
"event_payload": {"job_id", "kind", "state", "step"}}`: a benchmark can pair the call that shows
step N (the stand-in records when each call arrived) with the trainer_log.jsonl line of step N.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, select

from bot.outbox.delivery import Delivery
from bot.state.leases import DEFAULT_LEASE_TTL_S, Lease, holder_id, make_lease_table
from bot.state.tables import BotModel, BotTables, ensure_tables
from runners.events import EventKind
from runners.job import Job, JobEvent, JobKind, JobState
from runners.recovery.outage import Outage, is_database_error
from runners.runtime import Runtime

from ..threads import asked_in, channel_of, record_root, root_ts
from . import posts
from .running import ProgressPosts

log = logging.getLogger(__name__)

BATCH = 500
# On PostgreSQL two writers' event ids can become visible out of order (id 11 committed before 10):
# a gap younger than this is waited for rather than stepped over. Older gaps are rolled-back ids.
GAP_WAIT = 2.0
EVENT_TRIES = 3  # rounds an event that raised is tried again before the story moves on without it
_ROOT_KEY = re.compile(r"^job:(\d+):root$")
DEPLOY_KEY = "deploy_key"  # the outbox's reference to a deployment's API key message
_lease_meta = MetaData()
notifier_lease_table = make_lease_table("tunebot_notifier_lease", _lease_meta)


class NotifierCursor(BotModel, table=True):
    """How far into the job event stream the Slack notifier has got."""

    __tablename__ = "slack_notifier_cursor"

    name: str = Field(primary_key=True)
    last_event_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: float = Field(default_factory=time.time)


NOTIFIER_TABLES = BotTables("notifier", (NotifierCursor.__table__, notifier_lease_table))


def root_key(job_id: int) -> str:
    return f"job:{job_id}:root"


def post_key(job_id: int, event_id: int, n: int) -> str:
    """The outbox key of the `n`th post an event of the job calls for."""
    return f"job:{job_id}:ev:{event_id}:{n}"


class Notifier:
    def __init__(self, runtime: Runtime, delivery: Delivery, settings: Any = None, *,
                 poll: float | None = None, name: str = "slack", gap_wait: float = GAP_WAIT,
                 lease_ttl: float = DEFAULT_LEASE_TTL_S, progress: Any = None):
        """`settings` (optional, e.g. BotSettings) may carry `notifier_poll`; `poll` wins over it.
        `progress` (a ScheduleSettings: progress_every, stall_after, sweep_every) turns on progress
        posts and stall reports in running jobs' threads (story/running.py)."""
        self.runtime = runtime
        self.store = runtime.store
        self.delivery = delivery
        self.poll = poll if poll is not None else float(getattr(settings, "notifier_poll", None) or 0.5)
        self.name = name
        self.gap_wait = gap_wait
        ensure_tables(self.store.engine, NOTIFIER_TABLES)
        self.progress = ProgressPosts(self.store, delivery, progress) if progress is not None else None
        self._swept = -math.inf
        # One notifier per database tells the stories (the others stand by), as with the scheduler.
        self.lease = Lease(self.store.engine, table=notifier_lease_table, name=name, holder=holder_id(),
                           ttl=lease_ttl)
        self._leading = False
        self._lease_checked = -math.inf
        delivery.on_sent(self._root_sent)
        delivery.add_renderer(DEPLOY_KEY, self._deploy_key)
        self.cursor: int | None = None
        self._shown: dict[int, str] = {}  # job id -> the root content last handed to Delivery
        self._positions: dict[int, int | None] = {}  # queued job id -> its place in line, as shown
        self._tries: dict[int, int] = {}  # event id -> rounds it raised in
        self._gaps: dict[int, float] = {}  # cursor -> when a gap after it was first seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = Outage(log, "Slack notifier")

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> Notifier:
        self.cursor = self._load_cursor()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tunebot-notifier", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._leading:  # the one standing by takes over at its next look, not after the TTL
            self._leading = False
            try:
                self.lease.release()
            except Exception:
                log.exception("Slack notifier: could not give up its lease")

    @property
    def is_leader(self) -> bool:
        return self._leading

    def _lead(self) -> bool:
        """Whether this notifier tells the stories now (the lease is renewed every ttl/3)."""
        if time.monotonic() - self._lease_checked < self.lease.ttl / 3:
            return self._leading
        self._lease_checked = time.monotonic()
        try:
            held = self.lease.acquire()
        except Exception as exc:
            if is_database_error(exc):
                self._outage.failed(exc)
            else:
                log.exception("Slack notifier lease: the database did not answer")
            held = False
        if held and not self._leading:
            # The one that led before moved the cursor on: go on from where it stopped.
            self.cursor = self._load_cursor()
            self._shown.clear()
            self._positions.clear()
            log.info("Slack notifier: this process (%s) tells the jobs' stories", self.lease.holder)
        elif self._leading and not held:
            log.warning("Slack notifier lease lost to another process; standing by")
        self._leading = held
        return held

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._lead():
                self._stop.wait(self.poll)
                continue
            pause = self.poll
            try:
                handled = self.tick()
                self._outage.ok()
            except Exception as exc:  # the next round retries from the saved cursor
                if is_database_error(exc):  # one line per outage, not a traceback a round
                    pause = max(pause, self._outage.failed(exc))
                else:
                    log.exception("Slack notifier round failed")
                handled = 0
            self._sweep_when_due()
            if handled < BATCH:
                self._stop.wait(pause)

    def _sweep_when_due(self) -> None:
        if self.progress is None or time.monotonic() - self._swept < self.progress.settings.sweep_every:
            return
        self._swept = time.monotonic()
        try:
            self.sweep_progress()
        except Exception:
            log.exception("Slack notifier: the progress sweep failed")

    def sweep_progress(self) -> int:
        """Progress posts and stall reports for the running jobs now; how many went out."""
        return self.progress.sweep() if self.progress is not None else 0

    # --- one round ----------------------------------------------------------------------
    def tick(self) -> int:
        """Handle the events that arrived since the cursor; returns how many it handled."""
        if self.cursor is None:
            self.cursor = self._load_cursor()
        cursor = self.cursor  # `self.cursor` moves once the round's edits are out too
        events = self.store.events_since(cursor, limit=BATCH)
        if not events:
            return 0
        jobs: dict[int, Job | None] = {}
        edits: set[int] = set()
        states_moved = False
        handled = 0
        for event in events:
            if event.id != cursor + 1:
                # Timed by our own clock: the writer's may be another host's.
                first_seen = self._gaps.setdefault(cursor, time.monotonic())
                if time.monotonic() - first_seen < self.gap_wait:
                    break  # an earlier event may still be committing: the next round reads it
                self._gaps.pop(cursor, None)
            if event.job_id not in jobs:
                jobs[event.job_id] = self.store.find(event.job_id)
            job = jobs[event.job_id]
            posted = False
            if job is not None and channel_of(job):
                try:
                    posted = self._handle(job, event, edits)
                except Exception:
                    tries = self._tries[event.id] = self._tries.get(event.id, 0) + 1
                    if tries < EVENT_TRIES:  # a database hiccup: the next round tries it again
                        log.warning("Slack notifier: event %s of job #%s failed; trying again",
                                    event.id, event.job_id, exc_info=True)
                        break
                    # One event's trouble must not stop every job's story for good.
                    log.exception("Slack notifier: event %s of job #%s failed %d times; skipped",
                                  event.id, event.job_id, tries)
                self._tries.pop(event.id, None)
                states_moved = states_moved or event.type == EventKind.STATE
            cursor = event.id
            handled += 1
            if posted:
                self._save_cursor(cursor)
        if states_moved:
            edits |= self._moved_in_line()
        for job_id in sorted(edits):
            try:
                self._edit_root(job_id)
            except Exception:
                log.exception("Slack notifier: editing the root of job #%s failed", job_id)
        self._save_cursor(cursor)
        self.cursor = cursor
        self._gaps = {at: seen for at, seen in self._gaps.items() if at >= cursor}
        return handled

    def _handle(self, job: Job, event: JobEvent, edits: set[int]) -> bool:
        """Apply one event; True if it posted something (not just an edit)."""
        new_root = self._ensure_root(job)
        previous = None
        if event.type == EventKind.RESULT and job.kind == JobKind.EVAL.value:
            previous = self._previous_eval(job)
        posted = False
        channel = channel_of(job)
        for n, post in enumerate(posts.thread_posts(job, event, previous_eval=previous)):
            if post.action == posts.EDIT_ROOT:
                if not new_root:
                    edits.add(job.id)
                continue
            thread_ts, thread_key = self._story(job)
            # Another notifier on this database (a second `tunebot serve`) tells the same story: the
            # key makes each post go out once.
            key = post_key(job.id, event.id, n)
            if post.action == posts.THREAD:
                self.delivery.post(channel, text=post.text, blocks=post.blocks, thread_ts=thread_ts,
                                   thread_key=thread_key, key=key)
            elif post.action == posts.UPLOAD:
                self._upload(job, post, thread_ts, thread_key, key)
            elif post.action == posts.EPHEMERAL and post.user and post.secret_of is not None:
                # The key itself never waits in the outbox: it is rendered when the message goes out.
                self.delivery.ephemeral(channel, post.user, thread_ts=thread_ts, thread_key=thread_key,
                                        key=key, render={"name": DEPLOY_KEY, "job_id": post.secret_of})
            elif post.action == posts.EPHEMERAL and post.user:
                self.delivery.ephemeral(channel, post.user, text=post.text, blocks=post.blocks,
                                        thread_ts=thread_ts, thread_key=thread_key, key=key)
            posted = True
        return posted or new_root

    # --- where a job's messages go ------------------------------------------------------
    def _ensure_root(self, job: Job) -> bool:
        """Post the job's root message if it has none; True if it was posted now."""
        if root_ts(self.store, job):
            return False
        key = root_key(job.id)
        known = self.delivery.find(key)
        if known is not None:
            if known.ts:
                record_root(self.store, job.id, known.ts)
            return False
        thread_ts, thread_key = self._root_place(job)
        position = self._position(job)
        content = posts.root_message(job, queue_position=position)
        ts = self.delivery.post(channel_of(job), text=content["text"], blocks=content["blocks"],
                                metadata=content["metadata"], thread_ts=thread_ts, thread_key=thread_key,
                                key=key)
        self._shown[job.id] = _fingerprint(content)
        self._positions[job.id] = position
        if ts:
            record_root(self.store, job.id, ts)
        log.info("job #%s: root message %s in %s", job.id, "posted" if ts else "queued", channel_of(job))
        return True

    def _root_place(self, job: Job) -> tuple[str | None, str | None]:
        """(thread_ts, thread_key) the job's root goes into; (None, None): a new channel message."""
        if asked_in(job):
            return asked_in(job), None
        if job.parent_id:
            parent = self.store.find(job.parent_id)
            if parent is not None and channel_of(parent) == channel_of(job):
                return self._story(parent)
        return None, None

    def _story(self, job: Job) -> tuple[str | None, str | None]:
        """(thread_ts, thread_key) of the thread that tells the job's story."""
        place = self._root_place(job)
        if place != (None, None):
            return place
        root = root_ts(self.store, job)
        if root:
            return root, None
        if self.delivery.find(root_key(job.id)) is not None:
            return None, root_key(job.id)
        return None, None

    def _deploy_key(self, ref: dict[str, Any]) -> dict[str, Any] | None:
        job = self.store.find(int(ref["job_id"]))
        return posts.deploy_key_message(job) if job is not None else None

    def _root_sent(self, key: str, channel: str, ts: str) -> None:
        """Delivery sent a root that had waited in the outbox: record its ts on the job."""
        match = _ROOT_KEY.match(key)
        if match:
            record_root(self.store, int(match.group(1)), ts)

    # --- root edits ---------------------------------------------------------------------
    def _edit_root(self, job_id: int) -> None:
        job = self.store.find(job_id)
        if job is None or not channel_of(job):
            return
        root = root_ts(self.store, job)
        if not root and self.delivery.find(root_key(job.id)) is None:
            return
        position = self._position(job)
        content = posts.root_message(job, queue_position=position)
        self._positions[job.id] = position
        fingerprint = _fingerprint(content)
        if self._shown.get(job.id) == fingerprint:
            return
        self._shown[job.id] = fingerprint
        # By ts once Slack gave one; before that by the key the root waits under in the outbox.
        key = None if root else root_key(job.id)
        self.delivery.update(channel_of(job), root or None, key=key, text=content["text"],
                             blocks=content["blocks"], metadata=content["metadata"])

    def _position(self, job: Job) -> int | None:
        return self.runtime.queue.position(job) if job.state == JobState.QUEUED.value else None

    def _moved_in_line(self) -> set[int]:
        """Queued Slack jobs whose place in line changed since their root last showed it."""
        moved = set()
        queued = self.store.list_jobs(states=[JobState.QUEUED.value], newest_first=False)
        for place, job in enumerate(queued, start=1):
            if channel_of(job) and job.id in self._positions and self._positions[job.id] != place:
                moved.add(job.id)
        return moved

    # --- helpers ------------------------------------------------------------------------
    def _upload(self, job: Job, post: posts.Post, thread_ts: str | None, thread_key: str | None,
                key: str) -> None:
        data = self.store.get_file(post.file or "")
        if data is None:
            log.warning("job #%s: its file %s is gone; not uploaded", job.id, post.file)
            return
        content: str | bytes = posts.redact_config(data.decode("utf-8", "replace")) if post.redact else data
        self.delivery.upload(channel_of(job), thread_ts, content=content, filename=post.filename or "file",
                             title=post.title or "", thread_key=thread_key, key=key)

    def _previous_eval(self, job: Job) -> Job | None:
        if job.parent_id:
            candidates = self.store.list_jobs(kinds=[JobKind.EVAL.value], states=[JobState.SUCCEEDED.value],
                                              parent_id=job.parent_id)
        else:
            candidates = self.store.list_jobs(kinds=[JobKind.EVAL.value], states=[JobState.SUCCEEDED.value],
                                              limit=500)
        return posts.previous_eval_of(job, candidates)

    def _load_cursor(self) -> int:
        with Session(self.store.engine) as s:
            row = s.exec(select(NotifierCursor).where(NotifierCursor.name == self.name)).first()
            if row is not None:
                return row.last_event_id
            start = self.store.last_event_id()  # a first start: the past is not re-told
            s.add(NotifierCursor(name=self.name, last_event_id=start))
            try:
                s.commit()
            except IntegrityError:  # another notifier started at the same moment
                s.rollback()
                row = s.exec(select(NotifierCursor).where(NotifierCursor.name == self.name)).one()
                return row.last_event_id
            log.info("Slack notifier starts at event %s", start)
            return start

    def _save_cursor(self, cursor: int) -> None:
        with Session(self.store.engine) as s:
            s.exec(update(NotifierCursor).where(NotifierCursor.name == self.name)
                   .values(last_event_id=cursor, updated_at=time.time()))
            s.commit()


def _fingerprint(content: dict[str, Any]) -> str:
    return json.dumps([content.get("text"), content.get("blocks")], sort_keys=True, default=str)
