"""Progress posts and stall reports in running jobs' threads: the part of a job's story told on a clock.

`ProgressPosts.sweep()` looks at every running train/eval job: its progress as the runner
recorded it in the database (`progress` and `plot` events of the job, read when it looks, so a
post goes with the plot drawn for it), what was last posted for it
(`tunebot_progress_post`), and decides with `bot.story.progress` whether to post now. Posts go
through the outbox with keys (`job:<id>:progress:<attempt>:<n>`, `…:plot`, and
`job:<id>:stall:<attempt>:<since>`), so a second process on the database cannot post one twice.

Everything comes from the job's events, never from the runner's files: a job's last sign of life
is its latest trainer-log line (`progress`) or the runner's periodic `activity` event (when its
log last grew, and its last lines, which a stall report quotes); its loss plot is the `plot`
event's file in the job store. The bot and the runner may be on different hosts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sqlalchemy import JSON, Column, Float, Integer, MetaData, Table, insert, select, update

from bot.state.tables import BotTables, ensure_tables
from bot.story import progress as pp
from bot.threads import channel_of, story_thread
from runners.events import EventKind
from runners.job import JobKind, JobState
from runners.llamafactory.progress import Progress

log = logging.getLogger(__name__)

STORE_EVENTS_BATCH = 500  # Store.events_since's page
# A train job's progress post says "updated loss plot below": it waits (at most this long) for the
# plot the runner draws next when none was drawn since the last post.
PLOT_WAIT_S = 60.0

_metadata = MetaData()
progress_post_table = Table(
    "tunebot_progress_post",
    _metadata,
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("state", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)
# Made by bot/schedules/scheduler.py until this moved here: existing databases have it (version 1).
PROGRESS_POST_TABLES = BotTables("progress_post", (progress_post_table,))


def progress_key(job_id: int, attempt: int, n: int) -> str:
    """The outbox key of the `n`th progress post of the job's attempt (its plot: `…:plot`)."""
    return f"job:{job_id}:progress:{attempt}:{n}"


def stall_key(job_id: int, attempt: int, quiet_since: float) -> str:
    """The outbox key of the report of the stall that began at `quiet_since`."""
    return f"job:{job_id}:stall:{attempt}:{int(quiet_since)}"


class Poster(Protocol):
    """What progress posts need of `bot.outbox.delivery.Delivery`."""

    def post(
        self,
        channel: str,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        key: str | None = None,
    ) -> Any: ...

    def upload(
        self, channel: str, thread_ts: str | None, *, content: bytes, filename: str, title: str,
        key: str | None = None,
    ) -> Any: ...


class ProgressPosts:
    """Progress posts and stall reports for the running jobs of one database."""

    def __init__(
        self, store: Any, delivery: Poster, settings: Any, *, clock: Callable[[], float] = time.time
    ):
        """`settings` has `progress_every` and `stall_after` (seconds): a ScheduleSettings."""
        self.store = store
        self.delivery = delivery
        self.settings = settings
        self.clock = clock
        self._followed: dict[int, _Followed] = {}  # running job id -> its events read so far
        ensure_tables(store.engine, PROGRESS_POST_TABLES)

    def _posted(self, job_id: int) -> pp.PostedState | None:
        with self.store.engine.begin() as conn:
            row = conn.execute(
                select(progress_post_table.c.state).where(progress_post_table.c.job_id == job_id)
            ).first()
        return pp.PostedState.from_dict(row.state) if row else None

    def _save_posted(self, job_id: int, state: pp.PostedState) -> None:
        values = {"state": state.to_dict(), "updated_at": self.clock()}
        with self.store.engine.begin() as conn:
            changed = conn.execute(
                update(progress_post_table).where(progress_post_table.c.job_id == job_id).values(**values)
            ).rowcount
            if not changed:
                conn.execute(insert(progress_post_table).values(job_id=job_id, **values))

    def sweep(self) -> int:
        """Look at every running train/eval job once; returns how many posts went out."""
        posted = 0
        jobs = self.store.list_jobs(states=[JobState.RUNNING.value], kinds=pp.PROGRESS_KINDS)
        for job in jobs:
            try:
                posted += self._progress_of(job)
            except Exception:
                log.exception("progress post for job #%s failed", job.id)
        running = {job.id for job in jobs}
        self._followed = {job_id: seen for job_id, seen in self._followed.items() if job_id in running}
        return posted

    def _from_store(self, job: Any) -> _Followed:
        """The job's progress as the runner recorded it in the database (it may run on another host),
        read up to now: a post decided now goes with the plot drawn for it."""
        seen = self._followed.setdefault(job.id, _Followed())
        while True:
            events = self.store.events_since(seen.cursor, job_id=job.id)
            for event in events:
                seen.cursor = event.id
                seen.take(event)
            if len(events) < STORE_EVENTS_BATCH:
                return seen

    def _progress_of(self, job: Any) -> int:
        channel, thread_ts = channel_of(job), story_thread(self.store, job)
        if not channel or not thread_ts:
            return 0
        now = self.clock()
        seen = self._from_store(job)
        points = sorted(seen.points.values(), key=lambda p: p.step)
        if not points and (job.progress or {}).get("step") is not None:
            points = [Progress.from_dict(job.progress)]
        # A process that logs without reaching a step (loading, tokenizing) is alive too: the
        # runner's activity events say when its log last grew.
        last_line_at = max((t for t in (seen.last_at, seen.log_at) if t is not None), default=None)
        stored = self._posted(job.id)
        state = (stored or pp.PostedState(attempt=job.attempt)).for_attempt(job.attempt)
        quiet = now - pp.quiet_since_of(job, last_line_at, now=now)
        state = pp.moving_again(state, stalled=quiet >= self.settings.stall_after)
        decision = pp.decide_progress_post(
            job,
            points,
            state,
            now=now,
            last_line_at=last_line_at,
            every_s=self.settings.progress_every,
            stall_after_s=self.settings.stall_after,
        )
        if decision.action == pp.PROGRESS and job.kind == JobKind.TRAIN.value:
            if seen.plot_event is None or seen.plot_event == state.last_plot:
                seen.plot_wait_from = seen.plot_wait_from if seen.plot_wait_from is not None else now
                if now - seen.plot_wait_from < PLOT_WAIT_S:
                    return 0  # the next sweep posts it, with the plot
            seen.plot_wait_from = None
        if decision.action == pp.STALLED:
            tail = pp.log_tail(seen.tail) or job.log_tail or ""
            payload = pp.render_stall_post(job, points, now=now, last_line_at=last_line_at, tail=tail)
            # Keyed by the quiet spell it reports: two processes cannot report one stall twice.
            quiet_since = pp.quiet_since_of(job, last_line_at, now=now)
            self.delivery.post(
                channel, text=payload["text"], blocks=payload["blocks"], thread_ts=thread_ts,
                key=stall_key(job.id, job.attempt, quiet_since),
            )
        elif decision.action == pp.PROGRESS:
            payload = pp.render_progress_post(job, points, state, decision, now=now)
            key = progress_key(job.id, job.attempt, state.posts + 1)
            self.delivery.post(
                channel, text=payload["text"], blocks=payload["blocks"], thread_ts=thread_ts, key=key
            )
            plot = self._new_plot(job, seen, state)
            if plot is not None:
                point = pp.latest_point(points)
                step = f"{point.step}/{point.total or '?'}" if point else "?"
                self.delivery.upload(
                    channel,
                    thread_ts,
                    content=plot,
                    filename=f"loss-{job.id}-step{point.step if point else 0}.png",
                    title=f"#{job.id} loss at step {step}",
                    key=f"{key}:plot",
                )
                state = replace(state, last_plot=seen.plot_event)
        new_state = pp.after_post(state, decision, points, now=now)
        if new_state != stored:
            self._save_posted(job.id, new_state)
        return 1 if decision.posts else 0

    def _new_plot(self, job: Any, seen: _Followed, state: pp.PostedState) -> bytes | None:
        """The loss plot the runner drew last (it redraws it as the run goes), if not posted yet: its
        bytes from the job store (the runner may be another host; no path is opened here)."""
        if seen.plot is None or seen.plot_event == state.last_plot:
            return None
        data = self.store.get_file(seen.plot)
        if data is None:
            log.debug("job #%s: its loss plot %s is gone from the store; not posted", job.id, seen.plot)
        return data


@dataclass
class _Followed:
    """What the sweep has read of a running job's events: its trainer-log points and latest plot."""

    cursor: int = 0  # the job's last event read (in memory: the sweep reads a job's events in order)
    points: dict[tuple[int, bool], Progress] = field(default_factory=dict)
    point_events: dict[tuple[int, bool], int] = field(default_factory=dict)  # the event each came from
    last_at: float | None = None  # when the runner recorded its latest trainer-log line
    plot: str | None = None  # the job store's key of the latest loss plot (Store.get_file)
    plot_event: int | None = None
    plot_wait_from: float | None = None  # since when a due progress post waits for a new plot
    log_at: float | None = None  # the runner's latest activity event: when the job's log last grew
    tail: str = ""  # and how it ended then
    activity_event: int = 0

    def take(self, event: Any) -> None:
        """Read one event; an event read twice (history, then the stream) changes nothing."""
        data = event.data or {}
        if event.type == EventKind.PROGRESS:
            point = Progress.from_dict(data)
            key = (point.step, point.is_eval)
            if event.id >= self.point_events.get(key, 0):  # a resumed run's line (a later event) wins
                self.points[key], self.point_events[key] = point, event.id
            self.last_at = event.at if self.last_at is None else max(self.last_at, event.at)
        elif event.type == EventKind.PLOT and data.get("file") and event.id > (self.plot_event or 0):
            self.plot, self.plot_event = str(data["file"]), event.id
        elif event.type == EventKind.ACTIVITY and event.id > self.activity_event:
            self.log_at = data.get("log_at") or self.log_at
            self.tail, self.activity_event = str(data.get("tail") or ""), event.id

