"""Channel digests on a clock (APScheduler 3.11).

`bot/serve.py` builds one `Scheduler(runtime, delivery, ScheduleSettings.from_env())`, calls
`.start()` once the Slack client works and `.stop()` at shutdown. `/tune schedule …` is answered
by bot/schedules/command.py. (Progress posts, once run here, are the story's: bot/story/running.py.)

Where things live, all in tunebot's own database:
- `tunebot_digest`: one row per digest a channel asked for (the numbers `schedule list` shows),
  with when its last digest went out, so the next one covers exactly the time since;
- `tunebot_schedules`: APScheduler's SQLAlchemyJobStore — the triggers and next run times, under
  fixed ids `digest:<channel>:<n>`, so schedules survive restarts and a bot
  that was down posts one late digest (`coalesce`, `misfire_grace_time`), not a burst;
- `tunebot_scheduler_lease` (bot/state/leases.py): which process may run jobs. Every `tunebot serve`
  starts its scheduler paused (it can still add and remove schedules); only the lease holder resumes it.

One scheduler per database: the lease is one row taken with an atomic conditional UPDATE (or the
INSERT of its primary key), renewed every `ttl/3` seconds and taken over once `ttl` passes without
renewal. Before it posts, the holder renews the lease again (a lapsed holder stops itself), and a
digest is claimed with a compare-and-swap on its last-sent time, so even two processes that both
believed they led could not post the same digest twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from bot.parsing import COMMAND
from bot.schedules.digest import build_digest, render_digest
from bot.state.leases import DEFAULT_LEASE_TTL_S, Lease, holder_id, make_lease_table
from bot.state.tables import BotTables, ensure_tables
from runners.errors import UserError
from runners.store import make_engine

from .spec import ScheduleSettings, ScheduleSpec, period_of

log = logging.getLogger(__name__)

JOBSTORE_TABLE = "tunebot_schedules"
SWEEP_JOB_ID = "progress-sweep"
# A bot that was down this long still posts the digest it missed (once: coalesce).
DIGEST_MISFIRE_GRACE_S = 12 * 3600
MAX_DIGESTS_PER_CHANNEL = 10
LEASE_NAME = "scheduler"
STORE_EVENTS_BATCH = 500  # Store.events_since's page

# -- tables ---------------------------------------------------------------------------------------

metadata = MetaData()
digest_table = Table(
    "tunebot_digest",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("cron", String(200), nullable=False),
    Column("tz", String(64), nullable=False),
    Column("label", Text, nullable=False),
    Column("created_by", String(64), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("last_digest_at", Float, nullable=True),
    UniqueConstraint("channel", "cron", "tz", name="uq_tunebot_digest_when"),
)
lease_table = make_lease_table("tunebot_scheduler_lease", metadata)


SCHEDULE_TABLES = BotTables("schedules", (digest_table, lease_table))


def create_tables(engine: Engine) -> None:
    """Create tunebot's scheduling tables if missing, or upgrade them."""
    ensure_tables(engine, SCHEDULE_TABLES)


@dataclass(frozen=True)
class DigestSchedule:
    id: int
    channel: str
    kind: str
    cron: str
    tz: str
    label: str
    created_by: str
    created_at: float
    last_digest_at: float | None

    @property
    def job_id(self) -> str:
        return digest_job_id(self.channel, self.id)

    @property
    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(self.kind, self.cron, self.tz, self.label)


def digest_job_id(channel: str, schedule_id: int) -> str:
    return f"digest:{channel}:{schedule_id}"

# -- delivery -------------------------------------------------------------------------------------


class Poster(Protocol):
    """What the scheduler needs of `bot.outbox.delivery.Delivery`."""

    def post(
        self,
        channel: str,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> Any: ...


# -- the scheduler --------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_started: dict[str, list[Scheduler]] = {}
_leaders: dict[str, Scheduler] = {}


def database_key(engine: Engine) -> str:
    """Names a database in job arguments without putting its URL (or password) in them."""
    url = engine.url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def scheduler_for(store: Any) -> Scheduler | None:
    """This process's started scheduler for the store's database (the leader if there are two)."""
    key = database_key(store.engine)
    with _registry_lock:
        return _leaders.get(key) or next(iter(_started.get(key, [])), None)


def fire_digest(db: str, schedule_id: int) -> None:
    """APScheduler's job for a digest (a module-level function: the job store keeps a reference)."""
    with _registry_lock:
        scheduler = _leaders.get(db)
    if scheduler is None:
        log.warning("digest %s is due but this process does not run the scheduler", schedule_id)
        return
    scheduler.run_digest(schedule_id)


def sweep_progress(db: str) -> None:
    """An older tunebot's progress-sweep job, as stored: loadable, and removed at the next take-over
    (progress posts are told by the story's notifier: bot/story/running.py)."""


class _BackgroundScheduler(BackgroundScheduler):
    def _process_jobs(self):  # type: ignore[no-untyped-def]
        # APScheduler 3.11 makes one more pass after shutdown(): it would advance due jobs it can
        # no longer submit, losing the late digest the next process should post.
        if self.state != STATE_RUNNING:
            return None
        return super()._process_jobs()


class Scheduler:
    """Digests for one tunebot process.

    `start()` joins the database's scheduling (runs jobs if it wins the lease, else stands by and
    takes over when the holder stops or dies); `stop()` leaves it. Safe to run in every
    `tunebot serve` against one database: only the lease holder posts.
    """

    def __init__(
        self,
        runtime: Any,
        delivery: Poster,
        settings: ScheduleSettings | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
    ):
        self.runtime = runtime
        self.store = runtime.store
        self.delivery = delivery
        self.settings = settings or ScheduleSettings()
        self.clock = clock
        self.db = database_key(self.store.engine)
        self.holder = holder_id()
        self.lease = Lease(
            self.store.engine, table=lease_table, name=LEASE_NAME, holder=self.holder, ttl=lease_ttl,
            clock=clock,
        )
        self._renew_every = max(0.2, lease_ttl / 3)
        self._aps: _BackgroundScheduler | None = None
        self._jobstore_engine: Engine | None = None
        self._leader = False
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._aps is not None:
            return self
        create_tables(self.store.engine)
        self._jobstore_engine = make_engine(self.store.url)
        jobstore = SQLAlchemyJobStore(engine=self._jobstore_engine, tablename=JOBSTORE_TABLE)
        for attempt in range(3):  # two processes creating the table at once may race
            try:
                jobstore.jobs_t.create(self._jobstore_engine, checkfirst=True)
                break
            except DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._aps = _BackgroundScheduler(
            jobstores={"default": jobstore},
            executors={"default": {"type": "threadpool", "max_workers": 4}},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=timezone.utc,
        )
        executor_log = logging.getLogger("apscheduler.executors.default")
        if executor_log.level == logging.NOTSET:
            executor_log.setLevel(logging.WARNING)  # not two INFO lines per digest
        self._aps.start(paused=True)
        with _registry_lock:
            _started.setdefault(self.db, []).append(self)
        self._stopping.clear()
        self._tick()
        self._thread = threading.Thread(target=self._lease_loop, name="tunebot-scheduler-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            was_leader = self._leader
            self._step_down()
            if self._aps is not None:
                self._aps.shutdown(wait=True)  # lets a digest being posted finish
                self._aps = None
            if was_leader:  # the next process takes over at its next try, not after the TTL
                with contextlib.suppress(Exception):
                    self.lease.release()
        with _registry_lock:
            mine = _started.get(self.db, [])
            if self in mine:
                mine.remove(self)
            if not mine:
                _started.pop(self.db, None)
        if self._jobstore_engine is not None:
            self._jobstore_engine.dispose()
            self._jobstore_engine = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def running(self) -> bool:
        return self._aps is not None

    def _lease_loop(self) -> None:
        while not self._stopping.wait(self._renew_every):
            self._tick()

    def _tick(self) -> None:
        with self._lock:
            if self._aps is None or self._stopping.is_set():
                return
            try:
                held = self.lease.acquire()
            except Exception:
                log.exception("scheduler lease: the database did not answer")
                held = False
            if held and not self._leader:
                self._take_over()
            elif not held and self._leader:
                log.warning("scheduler lease lost to another process; standing by")
                self._step_down()
            elif held and self._aps is not None:
                self._aps.wakeup()  # see schedules other processes added since the last look

    def _take_over(self) -> None:
        assert self._aps is not None
        try:
            self._reconcile()
        except Exception:
            log.exception("scheduler: could not check the stored schedules; trying again later")
            return
        self._leader = True
        with _registry_lock:
            _leaders[self.db] = self
        self._aps.resume()
        log.info("scheduler: this process (%s) runs digests", self.holder)

    def _step_down(self) -> None:
        if self._aps is not None and self._leader:
            self._aps.pause()
        self._leader = False
        with _registry_lock:
            if _leaders.get(self.db) is self:
                _leaders.pop(self.db, None)

    def _reconcile(self) -> None:
        """Make the job store match the digest rows: a job for every row (existing ones keep their
        next run time, so a missed digest still fires), none for rows that are gone, and no
        progress sweep (an older tunebot's: progress posts are the story's now)."""
        assert self._aps is not None
        with contextlib.suppress(JobLookupError):
            self._aps.remove_job(SWEEP_JOB_ID)
        rows = {row.job_id: row for row in self.all_digests()}
        for job in self._aps.get_jobs():
            if job.id.startswith("digest:") and job.id not in rows:
                with contextlib.suppress(JobLookupError):
                    self._aps.remove_job(job.id)
        for job_id, row in rows.items():
            if self._aps.get_job(job_id) is None:
                self._add_job(row)

    def _add_job(self, row: DigestSchedule) -> None:
        assert self._aps is not None
        self._aps.add_job(
            fire_digest,
            row.spec.trigger(),
            id=row.job_id,
            kwargs={"db": self.db, "schedule_id": row.id},
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=DIGEST_MISFIRE_GRACE_S,
            name=f"digest {row.label}",
        )

    def _require_running(self) -> _BackgroundScheduler:
        if self._aps is None:
            raise UserError(
                "Digests are off: this tunebot process is not running its scheduler.",
                field="schedule",
                fix="restart `tunebot serve`",
            )
        return self._aps

    # --- schedules ----------------------------------------------------------------------
    def all_digests(self, channel: str | None = None) -> list[DigestSchedule]:
        query = select(digest_table).order_by(digest_table.c.id)
        if channel is not None:
            query = query.where(digest_table.c.channel == channel)
        with self.store.engine.begin() as conn:
            return [DigestSchedule(**row._mapping) for row in conn.execute(query)]

    def digest(self, schedule_id: int) -> DigestSchedule | None:
        with self.store.engine.begin() as conn:
            row = conn.execute(select(digest_table).where(digest_table.c.id == schedule_id)).first()
        return DigestSchedule(**row._mapping) if row else None

    def add_digest(self, channel: str, spec: ScheduleSpec, *, user: str) -> tuple[DigestSchedule, bool]:
        """Schedule a digest; (the schedule, True) — or (the same one already there, False)."""
        aps = self._require_running()
        mine = self.all_digests(channel)
        same = [d for d in mine if d.cron == spec.cron and d.tz == spec.tz]
        if same:
            return same[0], False
        if len(mine) >= MAX_DIGESTS_PER_CHANNEL:
            raise UserError(
                f"This channel has {len(mine)} digests already; that is the most it may have.",
                field="schedule",
                fix=f"{COMMAND} schedule off ID stops one",
            )
        try:
            with self.store.engine.begin() as conn:
                new_id = conn.execute(
                    insert(digest_table).values(
                        channel=channel,
                        kind=spec.kind,
                        cron=spec.cron,
                        tz=spec.tz,
                        label=spec.label,
                        created_by=user,
                        created_at=self.clock(),
                        last_digest_at=None,
                    )
                ).inserted_primary_key[0]
        except IntegrityError:
            same = [d for d in self.all_digests(channel) if d.cron == spec.cron and d.tz == spec.tz]
            existing = same[0] if same else None
            if existing is None:
                raise
            return existing, False
        row = self.digest(int(new_id))
        assert row is not None
        try:
            self._add_job(row)
        except Exception:
            with self.store.engine.begin() as conn:
                conn.execute(delete(digest_table).where(digest_table.c.id == row.id))
            raise
        if aps.state == STATE_RUNNING:
            aps.wakeup()
        return row, True

    def remove_digest(self, row: DigestSchedule) -> bool:
        with self.store.engine.begin() as conn:
            gone = conn.execute(delete(digest_table).where(digest_table.c.id == row.id)).rowcount == 1
        if self._aps is not None:
            with contextlib.suppress(JobLookupError):
                self._aps.remove_job(row.job_id)
        return gone

    def next_run(self, row: DigestSchedule) -> datetime | None:
        if self._aps is not None:
            job = self._aps.get_job(row.job_id)
            if job is not None:
                return job.next_run_time
        return row.spec.trigger().get_next_fire_time(None, datetime.now(timezone.utc))

    # --- running digests ----------------------------------------------------------------
    def run_digest(self, schedule_id: int) -> bool:
        """Post one digest now if this process still holds the lease; True if it was posted."""
        if not self.lease.confirm():
            log.warning("digest %s skipped: this process no longer holds the scheduler lease", schedule_id)
            return False
        row = self.digest(schedule_id)
        if row is None:  # removed by another process between firing and now
            return False
        now = self.clock()
        trigger = row.spec.trigger()
        period = period_of(trigger, datetime.fromtimestamp(now, timezone.utc))
        # Claim this firing: compare-and-swap on the last-sent time, at most one per half period.
        previous = row.last_digest_at
        if previous is not None and now - previous < period / 2:
            return False
        table = digest_table
        same = table.c.last_digest_at.is_(None) if previous is None else table.c.last_digest_at == previous
        with self.store.engine.begin() as conn:
            claimed = (
                conn.execute(
                    update(table).where(table.c.id == row.id, same).values(last_digest_at=now)
                ).rowcount
                == 1
            )
        if not claimed:
            return False
        since = previous if previous is not None else now - period
        data = build_digest(
            self.store, channel=row.channel, since=since, until=now, now=now, title=f"Digest · {row.label}"
        )
        payload = render_digest(data)
        try:
            self.delivery.post(row.channel, text=payload["text"], blocks=payload["blocks"])
        except Exception:
            log.exception("posting digest %s to %s failed", row.id, row.channel)
            return False
        return True
