"""Database faults in plain words, and an outage logged once rather than once per attempt.

A locked SQLite file (another process holding a write transaction past the busy timeout), a
stopped PostgreSQL server, a read-only file or a full disk are conditions of the moment: the
runner keeps its jobs' processes going and tries again with back-off; a person at the terminal
gets one sentence saying what is wrong and what to do, not SQLAlchemy's traceback.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

# (what the driver says, what it means, what to do)
_KNOWN: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("database is locked", "database table is locked"),
        "the job database is locked by another process",
        "wait for it to finish (or stop it), then try again",
    ),
    (
        ("readonly database", "read-only", "read only"),
        "the job database is read-only for this user",
        "make TUNEBOT_DATA_DIR and its tunebot.db writable by this user",
    ),
    (
        ("disk is full", "no space left", "could not extend file", "disk full"),
        "the disk holding the job database is full",
        "free space on that disk (old job folders under TUNEBOT_DATA_DIR/jobs), then try again",
    ),
    (
        ("unable to open database file",),
        "the job database file cannot be opened",
        "check TUNEBOT_DATA_DIR exists and this user may write it",
    ),
    (
        ("connection refused", "could not connect", "server closed the connection", "connection failed",
         "terminating connection", "the database system is shutting down", "starting up"),
        "the PostgreSQL server cannot be reached",
        "start it (or fix TUNEBOT_DATABASE_URL), then try again",
    ),
)


def is_database_error(exc: BaseException) -> bool:
    """True for a fault of the database itself (not of the request made to it)."""
    return isinstance(exc, DBAPIError) or (
        isinstance(exc, SQLAlchemyError) and "connection" in type(exc).__name__.lower()
    )


def describe_database_error(exc: BaseException) -> tuple[str, str]:
    """(what is wrong, how to fix it) in plain words; never the driver's whole message."""
    raw = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = raw[0] if raw else type(exc).__name__
    lowered = first.lower()
    for needles, reason, fix in _KNOWN:
        if any(needle in lowered for needle in needles):
            return reason, fix
    return f"the job database failed ({first[:160]})", "check the database and try again"


class Outage:
    """Tracks one database outage across threads: logs its start once and its end once."""

    def __init__(self, logger: logging.Logger, what: str, *, base: float = 1.0, ceiling: float = 30.0):
        self.logger = logger
        self.what = what
        self.base = base
        self.ceiling = ceiling
        self.since: float | None = None
        self.failures = 0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed attempt; returns how long to wait before the next (doubling, capped)."""
        with self._lock:
            self.failures += 1
            if self.since is None:
                self.since = time.monotonic()
                reason, _fix = describe_database_error(exc)
                self.logger.warning("%s: %s; retrying with back-off until it is back", self.what, reason)
            return min(self.ceiling, self.base * 2 ** min(self.failures - 1, 10))

    def ok(self) -> None:
        """Note a successful attempt; logs the end of an outage."""
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            lasted = time.monotonic() - self.since
            self.logger.warning(
                "%s: the database is back after %.0f s (%d failed attempts)", self.what, lasted, self.failures
            )
            self.since = None
            self.failures = 0
