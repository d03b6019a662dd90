"""Leases: which one of several tunebot processes on one database does a job only one may do.

Two kinds today, each its own table (one row per lease name): the scheduler's
(`tunebot_scheduler_lease`: who runs digests and progress posts) and the story teller's
(`tunebot_notifier_lease`: who follows the job events and posts into Slack threads). Every
`tunebot serve` starts both parts; the lease holder acts, the others stand by and take over
when the holder stops (it gives the lease up) or dies (its lease lapses after `ttl`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Column, Float, MetaData, String, Table, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

DEFAULT_LEASE_TTL_S = 30.0


def holder_id() -> str:
    """Names this process as a lease holder: host, pid and a nonce (a pid may come back)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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


class Lease:
    """One row saying which process holds a lease (a role only one process plays), until when.

    Taking it is a single conditional UPDATE (`holder = me OR expires_at < now`) or, the first
    time, the INSERT of its primary key: atomic on SQLite and PostgreSQL alike. Times are each
    process's wall clock; hosts should agree to well within the TTL (NTP does).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        table: Table,
        name: str,
        holder: str,
        ttl: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
    ):
        """`table` is the kind of lease (`make_lease_table`), `name` its row."""
        self.engine = engine
        self.holder = holder
        self.ttl = ttl
        self.name = name
        self.clock = clock
        self.table = table

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
