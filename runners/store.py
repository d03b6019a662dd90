"""The job store: SQLite (WAL) by default, PostgreSQL when the URL says so.

Every change that two processes could race on is one conditional UPDATE (claim a queued job,
move a job from one state to another) or an INSERT guarded by a primary key (slot leases), so
it is atomic on both databases without `SELECT ... FOR UPDATE`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, create_engine, select

from .errors import UserError, shorten
from .events import EventKind, from_legacy_message
from .job import (
    ACTIVE_STATES,
    AuditEntry,
    Job,
    JobEvent,
    JobFile,
    JobState,
    RunnerBeat,
    SchemaVersion,
    SlotLease,
    now,
)

log = logging.getLogger(__name__)


def _columns(conn, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _thread_indexes(conn) -> None:
    # Version 2 indexed the Slack thread columns the job table had then (version 4 moved them out).
    if {"channel", "message_ts", "thread_ts"} <= _columns(conn, "job"):
        for column in ("message_ts", "thread_ts"):
            index = f"ix_job_channel_{column}"
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS {index} ON job (channel, {column})"))


def _runner_hardware(conn) -> None:
    if "hardware" not in _columns(conn, "runner"):
        conn.execute(text("ALTER TABLE runner ADD COLUMN hardware JSON"))


_FRONT_END_COLUMNS = ("channel", "thread_ts", "message_ts")
_PROCESS_COLUMNS = ("pid", "proc_start")


def _origin_and_handle(conn) -> None:
    """Version 4: the job row keeps no Slack field and no pid. Slack's channel/thread/root message
    move into the opaque `origin`, the process's pid and start time into the local backend's opaque
    `handle`; free-text `message` events become typed ones (runners.events)."""
    columns = _columns(conn, "job")
    for name in ("origin", "handle"):
        if name not in columns:
            conn.execute(text(f"ALTER TABLE job ADD COLUMN {name} JSON NOT NULL DEFAULT '{{}}'"))
    old = [c for c in (*_FRONT_END_COLUMNS, *_PROCESS_COLUMNS) if c in columns]
    if old:
        rows = conn.execute(text(f"SELECT id, work_dir, {', '.join(old)} FROM job")).mappings().all()
        for row in rows:
            origin = {k: row[k] for k in _FRONT_END_COLUMNS if row.get(k)}
            handle = {}
            if row.get("pid"):
                from .backends.local import legacy_handle

                handle = legacy_handle(row["pid"], row.get("proc_start"), row["work_dir"] or "")
            if origin or handle:
                conn.execute(
                    update(Job).where(Job.id == row["id"]).values(origin=origin, handle=handle)
                )
        for index in ("ix_job_channel_message_ts", "ix_job_channel_thread_ts"):
            conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
        for name in old:
            conn.execute(text(f"ALTER TABLE job DROP COLUMN {name}"))
    messages = conn.execute(
        select(JobEvent.id, JobEvent.data).where(JobEvent.type == "message")
    ).all()
    for event_id, data in messages:
        kind, payload = from_legacy_message(data or {})
        conn.execute(update(JobEvent).where(JobEvent.id == event_id).values(type=kind.value, data=payload))


# Schema history. Version 1 is the tables as first released; each later entry upgrades an
# existing database in place (never drop, never recreate), so stored jobs survive upgrades.
# create_all() only adds missing tables; columns and indexes of existing tables come from here,
# written so they may also run on a database create_all() has just made.
MIGRATIONS: dict[int, Callable[[Any], None]] = {
    1: lambda conn: None,
    2: _thread_indexes,
    3: _runner_hardware,
    4: _origin_and_handle,
}
SCHEMA_VERSION = max(MIGRATIONS)


# How long a SQLite writer waits for another process's write lock before "database is locked"
# (the runner then retries with back-off: runners/recovery/outage.py). Tests shorten it.
BUSY_TIMEOUT_S = 30.0


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """How every JSON column is written: NaN/inf (a diverged loss, a broken rate) become null.
    PostgreSQL refuses NaN in JSON outright — a progress line with a nan loss would never be
    recorded — and SQLite would keep a value no other JSON reader accepts."""
    return json.dumps(_finite(value), allow_nan=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"Cannot create the data directory {Path(path).parent}: {exc.strerror}.",
                    field="TUNEBOT_DATA_DIR",
                    fix="point TUNEBOT_DATA_DIR at a directory this user can write",
                ) from None
        # hide_parameters: a database error must not print row values (API keys, posts) into logs.
        engine = create_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}, hide_parameters=True,
            json_serializer=json_dumps,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not url.startswith("postgresql"):
        raise UserError(
            f"TUNEBOT_DATABASE_URL must be a SQLite or PostgreSQL URL, not {url.split('://')[0]!r}.",
            field="TUNEBOT_DATABASE_URL",
            fix="TUNEBOT_DATABASE_URL=postgresql+psycopg://user:password@host/tunebot (or leave it unset)",
        )
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True,
                             json_serializer=json_dumps)
    except (ArgumentError, ImportError):
        raise UserError(
            "TUNEBOT_DATABASE_URL could not be read as a database URL.",
            field="TUNEBOT_DATABASE_URL",
            fix="TUNEBOT_DATABASE_URL=postgresql+psycopg://user:password@host/tunebot",
        ) from None


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")

    # --- schema -------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in place."""
        try:
            with self.engine.begin() as conn:
                existing = set(inspect(conn).get_table_names())
                SQLModel.metadata.create_all(conn)
                if "schema_version" in existing:
                    current = conn.execute(select(func.max(SchemaVersion.version))).scalar() or 0
                elif "job" in existing:
                    current = 1  # a database from before versioning was recorded
                else:
                    current = 0
                for version in sorted(v for v in MIGRATIONS if v > current):
                    if current > 0 or version > 1:
                        MIGRATIONS[version](conn)
                    conn.execute(SchemaVersion.__table__.insert().values(version=version, applied_at=now()))
                    current = version
                return current
        except OperationalError as exc:
            from .recovery.outage import describe_database_error

            reason, fix = describe_database_error(exc)
            raise UserError(
                f"Cannot open the job database ({self.safe_url}): {reason}.",
                field="TUNEBOT_DATABASE_URL",
                fix=fix,
            ) from None

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        try:
            return self.engine.url.render_as_string(hide_password=True)
        except Exception:  # pragma: no cover - defensive
            return "database"

    def schema_version(self) -> int:
        with Session(self.engine) as s:
            return s.exec(select(func.max(SchemaVersion.version))).one() or 0

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- jobs ---------------------------------------------------------------------------
    def add_job(self, job: Job, complete: Callable[[Job], dict[str, Any]] | None = None) -> tuple[Job, bool]:
        """Store a new job. With a request_key seen before, returns the existing job and False.

        `complete(job)` gives fields that need the new id (its folders); they are set in the same
        transaction, so no runner can claim the job half-written.
        """
        if job.request_key:
            existing = self.find_by_request(job.request_key)
            if existing is not None:
                return existing, False
        with self.session() as s:
            s.add(job)
            try:
                if complete is not None:
                    s.flush()  # assigns the id
                    for key, value in complete(job).items():
                        setattr(job, key, value)
                s.commit()
            except IntegrityError:
                s.rollback()
                existing = self.find_by_request(job.request_key) if job.request_key else None
                if existing is None:
                    raise
                return existing, False
            s.refresh(job)
        self.add_event(job.id, EventKind.STATE, {"state": job.state})
        return job, True

    def find_by_request(self, request_key: str) -> Job | None:
        with self.session() as s:
            return s.exec(select(Job).where(Job.request_key == request_key)).first()

    def get(self, job_id: int | str) -> Job:
        jid = parse_job_id(job_id)
        with self.session() as s:
            job = s.get(Job, jid)
        if job is None:
            raise UserError(f"There is no job #{jid}.", field="job", fix="`jobs` lists the jobs there are")
        return job

    def jobs_by_id(self, job_ids: list[int]) -> list[Job]:
        if not job_ids:
            return []
        with self.session() as s:
            return list(s.exec(select(Job).where(Job.id.in_(job_ids))).all())

    def find(self, job_id: int) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def list_jobs(
        self,
        *,
        states: Iterable[str] | None = None,
        kinds: Iterable[str] | None = None,
        user: str | None = None,
        parent_id: int | None = None,
        since: float | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[Job]:
        query = select(Job)
        if states is not None:
            query = query.where(Job.state.in_(list(states)))
        if kinds is not None:
            query = query.where(Job.kind.in_(list(kinds)))
        if user is not None:
            query = query.where(Job.user == user)
        if parent_id is not None:
            query = query.where(Job.parent_id == parent_id)
        if since is not None:
            query = query.where(Job.finished_at >= since)
        query = query.order_by(Job.id.desc() if newest_first else Job.id.asc())
        if limit:
            query = query.limit(limit)
        with self.session() as s:
            return list(s.exec(query).all())

    def update(self, job_id: int, **values: Any) -> None:
        with self.session() as s:
            s.exec(update(Job).where(Job.id == job_id).values(**values))
            s.commit()

    def transition(self, job_id: int, from_states: Iterable[str], to_state: str, **values: Any) -> bool:
        """Move a job to `to_state` only if it is in one of `from_states`; True if it moved."""
        with self.session() as s:
            result = s.exec(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(list(from_states)))
                .values(state=to_state, **values)
            )
            s.commit()
            moved = result.rowcount == 1
        if moved:
            self.add_event(job_id, EventKind.STATE, {"state": to_state, **_public(values)})
        return moved

    def queue_position(self, job_id: int) -> int | None:
        """1-based place of a queued job in the FIFO queue (counted in the database), else None."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.state != JobState.QUEUED.value:
                return None
            return s.exec(
                select(func.count())
                .select_from(Job)
                .where(Job.state == JobState.QUEUED.value, Job.id <= job_id)
            ).one()

    def adopt(self, job_id: int, old_runner: str | None, new_runner: str) -> bool:
        """Take over a job from a runner that is gone; only one adopter wins."""
        with self.session() as s:
            result = s.exec(
                update(Job)
                .where(
                    Job.id == job_id, Job.runner_id == old_runner if old_runner else Job.runner_id.is_(None)
                )
                .values(runner_id=new_runner)
            )
            s.commit()
            return result.rowcount == 1

    def count_active(self, user: str) -> int:
        with self.session() as s:
            return s.exec(
                select(func.count()).select_from(Job).where(Job.user == user, Job.state.in_(ACTIVE_STATES))
            ).one()

    # --- events -------------------------------------------------------------------------
    def add_event(self, job_id: int, kind: EventKind | str, data: dict[str, Any] | None = None) -> int:
        """Record one event (`runners.events`: its kind and payload); returns its id, the cursor."""
        with self.session() as s:
            ev = JobEvent(job_id=job_id, type=EventKind(kind).value, data=data or {})
            s.add(ev)
            s.commit()
            return ev.id

    def events_since(self, cursor: int = 0, *, job_id: int | None = None, limit: int = 500) -> list[JobEvent]:
        query = select(JobEvent).where(JobEvent.id > cursor)
        if job_id is not None:
            query = query.where(JobEvent.job_id == job_id)
        with self.session() as s:
            return list(s.exec(query.order_by(JobEvent.id).limit(limit)).all())

    def last_event_id(self) -> int:
        with self.session() as s:
            return s.exec(select(func.max(JobEvent.id))).one() or 0

    # --- files ---------------------------------------------------------------------------
    def put_file(self, job_id: int, name: str, data: bytes) -> str:
        """Keep a small file of a job (a loss plot, its config) in the database; returns its key.
        The same name again replaces it (a plot redrawn as the run goes keeps one row)."""
        key = f"{job_id}/{name}"
        with self.session() as s:
            row = s.get(JobFile, key)
            if row is None:
                row = JobFile(key=key, job_id=job_id, name=name, data=data)
            else:
                row.data, row.at = data, now()
            s.add(row)
            s.commit()
        return key

    def get_file(self, key: str) -> bytes | None:
        with self.session() as s:
            row = s.get(JobFile, key)
            return bytes(row.data) if row is not None else None

    # --- slots --------------------------------------------------------------------------
    def lease_slots(self, host: str, slots: list[str], job_id: int) -> bool:
        """Take all of `slots` on `host` for the job, or none of them."""
        with self.session() as s:
            for slot in slots:
                s.add(SlotLease(host=host, slot=slot, job_id=job_id))
            try:
                s.commit()
                return True
            except IntegrityError:
                s.rollback()
                return False

    def release_slots(self, job_id: int, *, host: str | None = None, slots: list[str] | None = None) -> None:
        """Free the job's leases (only those on `host`, and of `slots`, when given)."""
        query = select(SlotLease).where(SlotLease.job_id == job_id)
        if host is not None:
            query = query.where(SlotLease.host == host)
        if slots is not None:
            query = query.where(SlotLease.slot.in_(slots))
        with self.session() as s:
            for lease in s.exec(query).all():
                s.delete(lease)
            s.commit()

    def leased_slots(self, host: str) -> dict[str, int]:
        with self.session() as s:
            return {
                lease.slot: lease.job_id
                for lease in s.exec(select(SlotLease).where(SlotLease.host == host)).all()
            }

    # --- audit and runners --------------------------------------------------------------
    def audit(self, user: str, action: str, job_id: int | None = None, **detail: Any) -> None:
        with self.session() as s:
            s.add(AuditEntry(user=user, action=action, job_id=job_id, detail=detail))
            s.commit()

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        with self.session() as s:
            return list(s.exec(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)).all())

    def beat(self, runner_id: str, host: str, pid: int, hardware: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            beat = s.get(RunnerBeat, runner_id)
            if beat is None:
                s.add(RunnerBeat(id=runner_id, host=host, pid=pid, hardware=hardware))
            else:
                beat.seen_at = now()
                if hardware is not None:
                    beat.hardware = hardware
                s.add(beat)
            s.commit()

    def forget_runner(self, runner_id: str) -> None:
        with self.session() as s:
            beat = s.get(RunnerBeat, runner_id)
            if beat is not None:
                s.delete(beat)
                s.commit()

    def live_runners(self, within: float = 15.0) -> list[RunnerBeat]:
        with self.session() as s:
            return list(s.exec(select(RunnerBeat).where(RunnerBeat.seen_at >= now() - within)).all())


_SECRET_FIELDS = {"api_key"}


def _public(values: dict[str, Any]) -> dict[str, Any]:
    """Event data from transition values, without secrets or bulky fields."""
    keep = {}
    for key, value in values.items():
        if key in _SECRET_FIELDS or key in {"args", "spec", "log_tail", "handle", "origin"}:
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            keep[key] = value
    return keep


MAX_JOB_ID = 2**63 - 1  # a BIGINT / SQLite INTEGER


def parse_job_id(value: int | str) -> int:
    """'12', '#12', 12 -> 12; anything else is the user's mistake."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_JOB_ID:
        return value
    raw = str(value).strip().lstrip("#")
    # ASCII digits only ('²'.isdigit() is true), and small enough for a database integer.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) > MAX_JOB_ID:
        raise UserError(
            f"{shorten(value)!r} is not a job id.",
            field="job",
            fix="use the number shown as #N, e.g. `status 12`",
        )
    return int(raw)
