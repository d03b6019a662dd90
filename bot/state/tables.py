"""The bot's own tables in the engine's database: each part creates its tables here, versioned.

Every bot module that keeps rows (the outbox, seen events, dataset prompts, digests and leases,
the story's cursor and progress posts) declares a `BotTables`: its name, its tables and its
schema history, written like the engine's (`runners/store.py` MIGRATIONS): version 1 is the
tables as first released; each later entry upgrades an existing database in place (never drop,
never recreate) and may also run on tables `create_all` has just made. `ensure_tables` creates
what is missing and runs the migrations not yet recorded in `tunebot_bot_schema` (one row per
part and version). A database from before versioning has the tables but no row: it is at 1.

Bot tables live in their own metadata (`BotModel` for SQLModel classes), not in
`SQLModel.metadata`, so the engine's `Store.migrate` never creates them: one place each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

SCHEMA_TABLE = "tunebot_bot_schema"
CREATE_TRIES = 3  # two processes starting at once may race to create a table

_schema_meta = MetaData()
schema_table = Table(
    SCHEMA_TABLE,
    _schema_meta,
    Column("part", String(64), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Float, nullable=False),
)


class BotModel(SQLModel, registry=registry()):
    """Base of the bot's SQLModel tables: their own metadata, apart from the engine's."""


Migration = Callable[[Any], None]  # gets a Connection inside the upgrade's transaction


@dataclass(frozen=True)
class BotTables:
    """One part's tables and their schema history."""

    part: str
    tables: tuple[Table, ...]
    migrations: dict[int, Migration] = field(default_factory=lambda: {1: _nothing})

    @property
    def version(self) -> int:
        return max(self.migrations)


def _nothing(conn: Any) -> None:
    """Version 1: the tables as `create_all` makes them."""


def ensure_tables(engine: Engine, part: BotTables) -> int:
    """Create the part's missing tables and apply its unrecorded migrations; returns its version."""
    for attempt in range(CREATE_TRIES):
        try:
            return _upgrade(engine, part)
        except (IntegrityError, DBAPIError):
            if attempt == CREATE_TRIES - 1:
                raise
            time.sleep(0.2)  # the other process has made them by now: look again
    raise AssertionError("unreachable")


def _upgrade(engine: Engine, part: BotTables) -> int:
    with engine.begin() as conn:
        existing = set(inspect(conn).get_table_names())
        _schema_meta.create_all(conn, checkfirst=True)
        current = conn.execute(
            select(func.max(schema_table.c.version)).where(schema_table.c.part == part.part)
        ).scalar()
        if current is None:
            # Tables from before versioning are version 1; a fresh database starts at 0.
            current = 1 if any(t.name in existing for t in part.tables) else 0
            if current:
                conn.execute(schema_table.insert().values(part=part.part, version=1, applied_at=time.time()))
        for table in part.tables:
            table.create(conn, checkfirst=True)
        for version in sorted(v for v in part.migrations if v > current):
            if version > 1 or current > 0:  # written to run on fresh tables too, as the engine's
                part.migrations[version](conn)
            conn.execute(
                schema_table.insert().values(part=part.part, version=version, applied_at=time.time())
            )
            current = version
        return current


def schema_versions(engine: Engine) -> dict[str, int]:
    """Each part's recorded version (what `ensure_tables` has applied), for checks and tests."""
    with engine.begin() as conn:
        if SCHEMA_TABLE not in inspect(conn).get_table_names():
            return {}
        rows = conn.execute(
            select(schema_table.c.part, func.max(schema_table.c.version)).group_by(schema_table.c.part)
        ).all()
    return {part: version for part, version in rows}
