"""Channel digests on a clock and progress posts in running jobs' threads (APScheduler 3.11).

`bot/serve.py` builds one `Scheduler(runtime, delivery, ScheduleSettings.from_env())`, calls
`.start()` once the Slack client works and `.stop()` at shutdown. The command router hands every
`/tune schedule …` to `handle_schedule_command`, which answers with an ephemeral message.

Where things live, all in tunebot's own database:
- `tunebot_digest`: one row per digest a channel asked for (the numbers `schedule list` shows),
  with when its last digest went out, so the next one covers exactly the time since;
- `tunebot_schedules`: APScheduler's SQLAlchemyJobStore — the triggers and next run times, under
  fixed ids `digest:<channel>:<n>` and `progress-sweep`, so schedules survive restarts and a bot
  that was down posts one late digest (`coalesce`, `misfire_grace_time`), not a burst;
- `tunebot_scheduler_lease`: which process may run jobs. Every `tunebot serve` starts its
  scheduler paused (it can still add and remove schedules); only the lease holder resumes it.
- `tunebot_progress_post`: what was last posted in each running job's thread.

One scheduler per database: the lease is one row taken with an atomic conditional UPDATE (or the
INSERT of its primary key), renewed every `ttl/3` seconds and taken over once `ttl` passes without
renewal. Before it posts, the holder renews the lease again (a lapsed holder stops itself), and a
digest is claimed with a compare-and-swap on its last-sent time, so even two processes that both
believed they led could not post the same digest twice.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import (
    JSON,
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
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from bot import progress_posts as pp
from bot.channels import channel_info, slack_error
from bot.digest import build_digest, render_digest
from bot.parsing import COMMAND, Command
from bot.render import code, context, escape, mention, message, render_error, section, slack_date
from bot.threads import channel_of, story_thread
from runners.errors import UserError
from runners.events import EventKind
from runners.job import JobState
from runners.llamafactory.progress import Progress, read_trainer_log
from runners.settings import Setting, parse_duration
from runners.store import make_engine

log = logging.getLogger(__name__)

JOBSTORE_TABLE = "tunebot_schedules"
SWEEP_JOB_ID = "progress-sweep"
# A bot that was down this long still posts the digest it missed (once: coalesce).
DIGEST_MISFIRE_GRACE_S = 12 * 3600
# Digests closer together than this would flood a channel.
MIN_DIGEST_INTERVAL_S = 15 * 60
MAX_DIGESTS_PER_CHANNEL = 10
LEASE_NAME = "scheduler"
STORE_EVENTS_BATCH = 500  # Store.events_since's page
DEFAULT_LEASE_TTL_S = 30.0

# -- settings -------------------------------------------------------------------------------------

SCHEDULE_SETTINGS_TABLE: list[Setting] = [
    Setting(
        "TUNEBOT_PROGRESS_EVERY",
        "10",
        "minutes",
        "Progress posts in a running job's thread this often (also at 25/50/75%); `90s`, `1h` work too",
    ),
    Setting(
        "TUNEBOT_STALL_AFTER",
        "15",
        "minutes",
        "A running job with no new log line this long is reported as stalled, once",
    ),
    Setting(
        "TUNEBOT_DIGEST_TZ",
        "UTC",
        "time zone",
        "Time zone of `/tune schedule` times that name none, e.g. `Asia/Shanghai`",
    ),
]


def _minutes(raw: str | None, name: str, default_minutes: float) -> float:
    """'10' means minutes (as documented); '90s', '2h' are durations. Returns seconds."""
    if raw is None or not raw.strip():
        return default_minutes * 60.0
    text = raw.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text) * 60.0
    else:
        seconds = parse_duration(text, name=name)
    if seconds <= 0:
        raise UserError(f"{name} must be more than zero.", field=name, fix=f"{name}={default_minutes:g}")
    return seconds


@dataclass(frozen=True)
class ScheduleSettings:
    progress_every: float = 600.0  # seconds
    stall_after: float = 900.0  # seconds
    digest_tz: str = "UTC"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScheduleSettings:
        env = dict(os.environ if env is None else env)
        tz_name = (env.get("TUNEBOT_DIGEST_TZ") or "").strip() or "UTC"
        try:
            tz = resolve_timezone(tz_name, field="TUNEBOT_DIGEST_TZ")
        except UserError as err:
            raise UserError(f"TUNEBOT_DIGEST_TZ: {err.message}", field=err.field, fix=err.fix) from None
        return cls(
            progress_every=_minutes(env.get("TUNEBOT_PROGRESS_EVERY"), "TUNEBOT_PROGRESS_EVERY", 10),
            stall_after=_minutes(env.get("TUNEBOT_STALL_AFTER"), "TUNEBOT_STALL_AFTER", 15),
            digest_tz=tz.key,
        )

    @property
    def sweep_every(self) -> float:
        """How often running jobs are looked at: often enough to catch 25/50/75% and stalls in time."""
        return max(0.5, min(30.0, min(self.progress_every, self.stall_after) / 4))


# -- what a schedule is ---------------------------------------------------------------------------

_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 0}
_DAY_WORDS = {
    **{name: num for name, num in _DAYS.items()},
    "monday": 1,
    "tues": 2,
    "tuesday": 2,
    "wednesday": 3,
    "thur": 4,
    "thurs": 4,
    "thursday": 4,
    "friday": 5,
    "saturday": 6,
    "sunday": 0,
}
_DAY_LABEL = {
    1: "Monday",
    2: "Tuesday",
    3: "Wednesday",
    4: "Thursday",
    5: "Friday",
    6: "Saturday",
    0: "Sunday",
}
# APScheduler 3 numbers weekdays from Monday=0 (crontab: Sunday=0); names avoid the mismatch.
_APS_DAY = {1: "mon", 2: "tue", 3: "wed", 4: "thu", 5: "fri", 6: "sat", 0: "sun"}
_CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class ScheduleSpec:
    """A digest's timing: a crontab expression (weekdays as names) in a time zone."""

    kind: str  # daily | weekly | cron
    cron: str  # "0 9 * * mon-fri" style, canonical: what duplicates are recognised by
    tz: str
    label: str  # how people read it: "daily at 09:00 (Asia/Shanghai)"

    def trigger(self) -> CronTrigger:
        minute, hour, day, month, dow = self.cron.split()
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=ZoneInfo(self.tz)
        )


def _zone(name: str) -> ZoneInfo | None:
    if not name or name.startswith(("/", ".")):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resolve_timezone(name: str, *, field: str = "timezone") -> ZoneInfo:
    """'Asia/Shanghai', 'asia/shanghai', 'UTC' -> ZoneInfo; a UserError with a guess otherwise."""
    text = name.strip()
    if text.lower() in ("utc", "gmt", "z"):
        return ZoneInfo("UTC")
    zone = _zone(text)
    if zone is None and text:
        by_lower = {key.lower(): key for key in available_timezones()}
        if text.lower() in by_lower:
            zone = _zone(by_lower[text.lower()])
    if zone is not None:
        return zone
    guesses = difflib.get_close_matches(text, sorted(available_timezones()), n=1, cutoff=0.6)
    hint = f" Did you mean `{guesses[0]}`?" if guesses else ""
    raise UserError(
        f"`{name}` is not a time zone I know.{hint}",
        field=field,
        fix="an IANA name such as `Asia/Shanghai`, `Europe/Berlin`, `America/New_York` or `UTC`",
    )


def parse_time_of_day(text: str) -> tuple[int, int]:
    match = _TIME.match(text.strip())
    if match:
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour <= 23 and minute <= 59:
            return hour, minute
    raise UserError(
        f"`{text}` is not a time of day: write it as HH:MM on a 24-hour clock.",
        field="time",
        fix=f"{COMMAND} schedule daily 09:00",
    )


def parse_weekday(text: str) -> int:
    number = _DAY_WORDS.get(text.strip().lower().rstrip("."))
    if number is None:
        raise UserError(
            f"`{text}` is not a day of the week.",
            field="day",
            fix=f"{COMMAND} schedule weekly mon 09:00 (mon, tue, wed, thu, fri, sat or sun)",
        )
    return number


def _cron_error(expr: str, problem: str) -> UserError:
    return UserError(
        f"`{expr}` is not a cron expression I can use: {problem}",
        field="cron",
        fix=f'{COMMAND} schedule cron "0 9 * * 1-5"  (minute hour day-of-month month day-of-week)',
    )


def _day_number(token: str, expr: str) -> int:
    word = token.lower()
    if word in _DAYS:
        return _DAYS[word]
    if word.isdigit() and 0 <= int(word) <= 7:
        return int(word) % 7
    raise _cron_error(expr, f"`{token}` is not a day of the week (0-7 or sun-sat).")


def weekday_field(field: str, expr: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3 reads it: names."""
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _cron_error(expr, f"`{item}` has a bad step.")
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _day_number(a, expr), _day_number(b, expr)
            if b == "7" or b.lower() == "sun":
                last = 7
            if last < first:
                raise _cron_error(expr, f"`{item}` runs backwards.")
        else:
            first = _day_number(base, expr)
            last = 6 if step_text else first
        days.update(d % 7 for d in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_APS_DAY[d] for d in (1, 2, 3, 4, 5, 6, 0) if d in days)


def _check_cadence(spec: ScheduleSpec, expr: str) -> None:
    trigger = spec.trigger()
    now = datetime.now(timezone.utc)
    if trigger.get_next_fire_time(None, now) is None:
        raise _cron_error(expr, "it never fires.")
    period = period_of(trigger, now, firings=6)
    if period < MIN_DIGEST_INTERVAL_S:
        raise UserError(
            f"`{expr}` would post a digest every {period / 60:.0f} min; "
            f"digests go out at most every {MIN_DIGEST_INTERVAL_S // 60} minutes.",
            field="cron",
            fix=f'{COMMAND} schedule cron "0 * * * *"  (hourly)',
        )


def parse_schedule(command: Command, default_tz: str) -> ScheduleSpec:
    """`schedule daily|weekly|cron …` -> ScheduleSpec; a UserError says what is wrong."""
    args = list(command.args)
    if command.name == "schedule daily":
        hour, minute = parse_time_of_day(args[0])
        tz = resolve_timezone(args[1] if len(args) > 1 else default_tz)
        spec = ScheduleSpec(
            "daily", f"{minute} {hour} * * *", tz.key, f"daily at {hour:02d}:{minute:02d} ({tz.key})"
        )
    elif command.name == "schedule weekly":
        day = parse_weekday(args[0])
        hour, minute = parse_time_of_day(args[1])
        tz = resolve_timezone(args[2] if len(args) > 2 else default_tz)
        spec = ScheduleSpec(
            "weekly",
            f"{minute} {hour} * * {_APS_DAY[day]}",
            tz.key,
            f"weekly on {_DAY_LABEL[day]} at {hour:02d}:{minute:02d} ({tz.key})",
        )
    elif command.name == "schedule cron":
        if len(args) > 2:  # typed without quotes: the fields as words, then perhaps a time zone
            if len(args) not in (5, 6):
                raise _cron_error(
                    " ".join(args),
                    f"it has {len(args)} fields, not 5 (minute hour day-of-month month day-of-week).",
                )
            args = [" ".join(args[:5]), *args[5:]]
        raw = args[0].strip()
        tz_arg = args[1] if len(args) > 1 else None
        expr = _CRON_MACROS.get(raw.lower(), raw)
        fields = expr.split()
        if len(fields) != 5:
            raise _cron_error(
                raw,
                f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}, "
                "not 5 (minute hour day-of-month month day-of-week).",
            )
        minute, hour, day, month, dow = fields
        if day not in ("*", "?") and dow not in ("*", "?"):
            raise _cron_error(
                raw,
                "it limits both the day of the month and the day of the week, which "
                "cron reads as either-or; make two schedules instead.",
            )
        day = "*" if day == "?" else day
        dow = weekday_field("*" if dow == "?" else dow, raw)
        tz = resolve_timezone(tz_arg or default_tz)
        spec = ScheduleSpec(
            "cron", f"{minute} {hour} {day} {month} {dow}", tz.key, f'cron "{raw}" ({tz.key})'
        )
        try:
            spec.trigger()
        except ValueError as exc:
            raise _cron_error(raw, f"{exc}.") from None
    else:
        raise UserError(f"`{command.name}` does not make a schedule.", field="command")
    _check_cadence(spec, args[0])
    return spec


def period_of(trigger: CronTrigger, at: datetime, *, firings: int = 4) -> float:
    """The shortest time between two of the trigger's next `firings` firings, in seconds (a day
    when it fires once or never)."""
    fires = []
    cursor = at
    for _ in range(firings):
        nxt = trigger.get_next_fire_time(None, cursor)
        if nxt is None:
            break
        fires.append(nxt)
        cursor = nxt + timedelta(seconds=1)
    gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)]
    return min(gaps) if gaps else 86400.0


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
def make_lease_table(name: str, meta: MetaData) -> Table:
    """A table of leases (one row per lease name): which process holds it, until when."""
    return Table(
        name,
        meta,
        Column("name", String(64), primary_key=True),
        Column("holder", String(200), nullable=False),
        Column("expires_at", Float, nullable=False),
        Column("renewed_at", Float, nullable=False),
    )


lease_table = make_lease_table("tunebot_scheduler_lease", metadata)
progress_post_table = Table(
    "tunebot_progress_post",
    metadata,
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("state", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def create_tables(engine: Engine) -> None:
    """Create tunebot's scheduling tables if missing (two processes starting at once may race)."""
    for attempt in range(3):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (IntegrityError, DBAPIError):
            if attempt == 2:
                raise
            time.sleep(0.2)


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


# -- the lease ------------------------------------------------------------------------------------


class SchedulerLease:
    """One row saying which process runs scheduled jobs, until when.

    Taking it is a single conditional UPDATE (`holder = me OR expires_at < now`) or, the first
    time, the INSERT of its primary key: atomic on SQLite and PostgreSQL alike. Times are each
    process's wall clock; hosts should agree to well within the TTL (NTP does).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        holder: str,
        ttl: float = DEFAULT_LEASE_TTL_S,
        name: str = LEASE_NAME,
        clock: Callable[[], float] = time.time,
        table: Table | None = None,
    ):
        self.engine = engine
        self.holder = holder
        self.ttl = ttl
        self.name = name
        self.clock = clock
        self.table = lease_table if table is None else table  # another table: another kind of lease

    def acquire(self) -> bool:
        """Take the lease if it is free or lapsed, or extend it if it is ours; True if we hold it."""
        now = self.clock()
        table = self.table
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(table)
                .where(
                    table.c.name == self.name, or_(table.c.holder == self.holder, table.c.expires_at < now)
                )
                .values(holder=self.holder, expires_at=now + self.ttl, renewed_at=now)
            ).rowcount
        if taken == 1:
            return True
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(table).values(
                        name=self.name, holder=self.holder, expires_at=now + self.ttl, renewed_at=now
                    )
                )
            return True
        except IntegrityError:
            return False

    def confirm(self) -> bool:
        """Extend the lease only if we still hold it and it has not lapsed (checked before posting)."""
        now = self.clock()
        table = self.table
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    update(table)
                    .where(
                        table.c.name == self.name, table.c.holder == self.holder, table.c.expires_at >= now
                    )
                    .values(expires_at=now + self.ttl, renewed_at=now)
                ).rowcount
                == 1
            )

    def release(self) -> None:
        """Give the lease up so another process takes over at its next try, not after the TTL."""
        with self.engine.begin() as conn:
            conn.execute(
                update(self.table)
                .where(self.table.c.name == self.name, self.table.c.holder == self.holder)
                .values(expires_at=0.0)
            )

    def current(self) -> tuple[str, float] | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                select(self.table.c.holder, self.table.c.expires_at).where(self.table.c.name == self.name)
            ).first()
        return (row.holder, row.expires_at) if row else None


# -- delivery -------------------------------------------------------------------------------------


class Poster(Protocol):
    """What the scheduler needs of `bot.delivery.Delivery`."""

    def post(
        self,
        channel: str,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> Any: ...

    def upload(
        self, channel: str, thread_ts: str | None, *, content: bytes, filename: str, title: str
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
    """APScheduler's job that looks at running jobs for progress posts."""
    with _registry_lock:
        scheduler = _leaders.get(db)
    if scheduler is not None:
        scheduler.sweep_progress()


class _BackgroundScheduler(BackgroundScheduler):
    def _process_jobs(self):  # type: ignore[no-untyped-def]
        # APScheduler 3.11 makes one more pass after shutdown(): it would advance due jobs it can
        # no longer submit, losing the late digest the next process should post.
        if self.state != STATE_RUNNING:
            return None
        return super()._process_jobs()


class Scheduler:
    """Digests and progress posts for one tunebot process.

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
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = SchedulerLease(self.store.engine, holder=self.holder, ttl=lease_ttl, clock=clock)
        self._renew_every = max(0.2, lease_ttl / 3)
        self._aps: _BackgroundScheduler | None = None
        self._jobstore_engine: Engine | None = None
        self._leader = False
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._followed: dict[int, _Followed] = {}  # running job id -> its events read so far

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
            executor_log.setLevel(logging.WARNING)  # not two INFO lines per progress sweep
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
        log.info("scheduler: this process (%s) runs digests and progress posts", self.holder)

    def _step_down(self) -> None:
        if self._aps is not None and self._leader:
            self._aps.pause()
        self._leader = False
        with _registry_lock:
            if _leaders.get(self.db) is self:
                _leaders.pop(self.db, None)

    def _reconcile(self) -> None:
        """Make the job store match the digest rows: the sweep at this process's period, a job for
        every row (existing ones keep their next run time, so a missed digest still fires), none
        for rows that are gone."""
        assert self._aps is not None
        every = self.settings.sweep_every
        existing = self._aps.get_job(SWEEP_JOB_ID)
        if existing is None or getattr(existing.trigger, "interval", None) != timedelta(seconds=every):
            self._aps.add_job(
                sweep_progress,
                IntervalTrigger(seconds=every),
                id=SWEEP_JOB_ID,
                kwargs={"db": self.db},
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(5, int(every * 2)),
                name="progress posts",
            )
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

    # --- progress posts -----------------------------------------------------------------
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

    def sweep_progress(self) -> int:
        """Look at every running train/eval job once; returns how many posts went out."""
        if not self.lease.confirm():
            return 0
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
        """The job's progress as the runner recorded it in the database (it may run on another host)."""
        seen = self._followed.setdefault(job.id, _Followed())
        while True:
            events = self.store.events_since(seen.cursor, job_id=job.id)
            for event in events:
                seen.cursor = event.id
                if event.type == EventKind.PROGRESS:
                    point = Progress.from_dict(event.data or {})
                    seen.points[(point.step, point.is_eval)] = point  # a resumed run's line wins
                    seen.last_at = event.at
                elif event.type == EventKind.PLOT and (event.data or {}).get("file"):
                    seen.plot, seen.plot_event = str(event.data["file"]), event.id
                elif event.type == EventKind.ACTIVITY:
                    seen.log_at = (event.data or {}).get("log_at") or seen.log_at
                    seen.tail = str((event.data or {}).get("tail") or "")
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
        # The runner's files, where this host can see them (one host): a process that logs without
        # reaching a step (loading, tokenizing) is alive too.
        local_log = Path(job.work_dir) / "output" / "trainer_log.jsonl" if job.work_dir else None
        if not points and local_log is not None:
            points = read_trainer_log(local_log)
        local = _last_write(local_log, Path(job.log_path) if job.log_path else None)
        last_line_at = max((t for t in (seen.last_at, seen.log_at, local) if t is not None), default=None)
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
        if decision.action == pp.STALLED:
            tail = pp.log_tail(_read_end(Path(job.log_path))) if job.log_path else ""
            payload = pp.render_stall_post(
                job, points, now=now, last_line_at=last_line_at, tail=tail or seen.tail or job.log_tail or ""
            )
            self.delivery.post(
                channel, text=payload["text"], blocks=payload["blocks"], thread_ts=thread_ts
            )
        elif decision.action == pp.PROGRESS:
            payload = pp.render_progress_post(job, points, state, decision, now=now)
            self.delivery.post(
                channel, text=payload["text"], blocks=payload["blocks"], thread_ts=thread_ts
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
                )
                state = replace(state, last_plot=seen.plot_event)
        new_state = pp.after_post(state, decision, points, now=now)
        if new_state != stored:
            self._save_posted(job.id, new_state)
        return 1 if decision.posts else 0

    def _new_plot(self, job: Any, seen: _Followed, state: pp.PostedState) -> bytes | None:
        """The loss plot the runner drew last (it redraws it as the run goes), if not posted yet."""
        if seen.plot is None or seen.plot_event == state.last_plot:
            return None
        data = self.store.get_file(seen.plot)
        if data is None:
            log.debug("job #%s: its loss plot %s is gone from the store; not posted", job.id, seen.plot)
        return data


@dataclass
class _Followed:
    """What the sweep has read of a running job's events: its trainer-log points and latest plot."""

    cursor: int = 0
    points: dict[tuple[int, bool], Progress] = field(default_factory=dict)
    last_at: float | None = None  # when the runner recorded its latest trainer-log line
    plot: str | None = None  # the job store's key of the latest loss plot (Store.get_file)
    plot_event: int | None = None
    log_at: float | None = None  # the runner's latest activity event: when the job's log last grew
    tail: str = ""  # and how it ended then


def _last_write(*paths: Path | None) -> float | None:
    times = []
    for path in paths:
        if path is None:
            continue
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times) if times else None


def _read_end(path: Path, limit: int = 64_000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


# -- /tune schedule … -----------------------------------------------------------------------------


def _reply(text: str, *extra: dict[str, Any], fallback: str) -> dict[str, Any]:
    return message(fallback, [section(text), *extra])


def label_mrkdwn(label: str) -> str:
    """A schedule's label for mrkdwn: its cron expression in code, so `*` stays literal."""
    return re.sub(r'"([^"]*)"', lambda m: code(m.group(1)), escape(label))


def _check_membership(client: Any, channel: str) -> None:
    """The bot must be in the channel to post there; a clear message says how to fix it."""
    from slack_sdk.errors import SlackApiError

    invite = UserError(
        "I am not in this channel, so I could not post its digest.",
        field="channel",
        fix="/invite @tunebot (then schedule again)",
    )
    try:
        info = channel_info(client, channel)
    except SlackApiError as exc:
        error = slack_error(exc)
        if error == "missing_scope":
            raise invite from None
        raise UserError(
            f"Slack did not tell me about this channel ({error or 'no answer'}); nothing was scheduled.",
            field="channel",
            fix="try again in a minute",
        ) from None
    except Exception as exc:  # the network, a timeout: nothing is scheduled, say so
        raise UserError(
            f"I could not reach Slack to check this channel ({type(exc).__name__}); nothing was scheduled.",
            field="channel",
            fix="try again in a minute",
        ) from None
    if info.get("is_archived"):
        raise UserError("This channel is archived; a digest could not be posted here.", field="channel")
    if not info["is_member"]:
        raise invite


def _schedule_line(scheduler: Scheduler, row: DigestSchedule) -> str:
    nxt = scheduler.next_run(row)
    bits = [f"*#{row.id}* {label_mrkdwn(row.label)}"]
    bits.append(f"next {slack_date(nxt.timestamp())}" if nxt else "no next run")
    if row.last_digest_at:
        bits.append(f"last {slack_date(row.last_digest_at)}")
    if row.created_by:
        bits.append(f"set by {mention(row.created_by)}")
    return " · ".join(bits)


def _render_list(scheduler: Scheduler, channel: str) -> dict[str, Any]:
    rows = scheduler.all_digests(channel)
    if not rows:
        return _reply(
            "No digests are scheduled in this channel.",
            context(f"Add one: {code(f'{COMMAND} schedule daily 09:00')}"),
            fallback="No digests are scheduled in this channel.",
        )
    lines = "\n".join(_schedule_line(scheduler, row) for row in rows)
    fallback = "Digests in this channel: " + "; ".join(f"#{r.id} {r.label}" for r in rows)
    return _reply(
        f"*Digests in this channel*\n{lines}",
        context(
            f"Stop one with {code(f'{COMMAND} schedule off ID')}, all with {code(f'{COMMAND} schedule off')}."
        ),
        fallback=fallback,
    )


def _schedule_id(text: str) -> int:
    raw = text.strip().lstrip("#")
    if raw.isdigit():
        return int(raw)
    raise UserError(
        f"`{text}` is not a digest number.",
        field="id",
        fix=f"{COMMAND} schedule list shows them, e.g. {COMMAND} schedule off 3",
    )


def _turn_off(scheduler: Scheduler, channel: str, args: list[str]) -> dict[str, Any]:
    rows = scheduler.all_digests(channel)
    if args:
        wanted = _schedule_id(args[0])
        row = next((r for r in rows if r.id == wanted), None)
        if row is None:
            there = ", ".join(f"#{r.id}" for r in rows)
            found = f" Its digests: {there}." if there else " It has none."
            raise UserError(
                f"There is no digest #{wanted} in this channel.{found}",
                field="id",
                fix=f"{COMMAND} schedule list",
            )
        scheduler.remove_digest(row)
        return _reply(
            f":no_bell: Stopped digest *#{row.id}* ({label_mrkdwn(row.label)}).",
            fallback=f"Stopped digest #{row.id} ({row.label}).",
        )
    if not rows:
        raise UserError(
            "No digests are scheduled in this channel; there is nothing to stop.",
            field="id",
            fix=f"{COMMAND} schedule daily 09:00 starts one",
        )
    for row in rows:
        scheduler.remove_digest(row)
    plural = "s" if len(rows) != 1 else ""
    names = ", ".join(f"#{r.id} ({label_mrkdwn(r.label)})" for r in rows)
    return _reply(
        f":no_bell: Stopped {len(rows)} digest{plural}: {names}.",
        fallback=f"Stopped {len(rows)} digest{plural}: " + ", ".join(f"#{r.id}" for r in rows),
    )


def _add(scheduler: Scheduler, command: Command, *, user: str, channel: str, client: Any) -> dict[str, Any]:
    spec = parse_schedule(command, scheduler.settings.digest_tz)
    if client is not None:
        _check_membership(client, channel)
    row, created = scheduler.add_digest(channel, spec, user=user)
    nxt = scheduler.next_run(row)
    when = f" The first one comes {slack_date(nxt.timestamp())}." if nxt else ""
    if not created:
        text = f"That digest is already scheduled here as *#{row.id}* ({label_mrkdwn(row.label)}).{when}"
        return _reply(text, fallback=f"Already scheduled here as digest #{row.id} ({row.label}).")
    return _reply(
        f":calendar: Digest *#{row.id}* scheduled: {label_mrkdwn(row.label)}.{when}",
        context(
            "It lists running and queued jobs, what finished or failed since the last digest, "
            "deployments and GPU hours per person. "
            f"{code(f'{COMMAND} schedule off {row.id}')} stops it."
        ),
        fallback=f"Digest #{row.id} scheduled: {row.label}.",
    )


def handle_schedule_command(
    command: Command,
    *,
    user: str,
    channel: str,
    runtime: Any,
    client: Any,
    scheduler: Scheduler | None = None,
) -> dict[str, Any]:
    """Answer `/tune schedule daily|weekly|cron|list|off …` in `channel`: a message for `respond`
    (ephemeral). Mistakes come back as a clear message; nothing scheduled is lost or duplicated."""
    scheduler = scheduler or scheduler_for(runtime.store)
    try:
        if scheduler is None or not scheduler.running:
            raise UserError(
                "Digests are off: this tunebot process is not running its scheduler.",
                field="schedule",
                fix="restart `tunebot serve`",
            )
        if command.name == "schedule list":
            return _render_list(scheduler, channel)
        if command.name == "schedule off":
            return _turn_off(scheduler, channel, list(command.args))
        if command.name in ("schedule daily", "schedule weekly", "schedule cron"):
            return _add(scheduler, command, user=user, channel=channel, client=client)
        raise UserError(
            f"`{command.name}` is not a schedule command.",
            field="command",
            fix=f"{COMMAND} help schedule daily",
        )
    except UserError as err:
        return render_error(err)
