"""bot/state/tables.py: each bot table is created in one place, with schema versions like the engine's."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, text

from bot.outbox.delivery import OUTBOX_TABLES
from bot.state.tables import BotTables, ensure_tables, schema_versions
from runners.store import Store


def _part(migrations=None) -> BotTables:
    meta = MetaData()
    columns = (Column("id", Integer, primary_key=True), Column("name", String(20)))
    table = Table("tunebot_test_things", meta, *columns)
    return BotTables("things", (table,), migrations or {1: lambda conn: None})


def _columns(store: Store, table: str) -> set[str]:
    return {c["name"] for c in inspect(store.engine).get_columns(table)}


def test_a_fresh_database_gets_the_tables_at_the_newest_version_and_records_it(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ran = []
    part = _part({1: lambda conn: ran.append(1), 2: lambda conn: ran.append(2)})
    assert ensure_tables(store.engine, part) == 2
    assert "tunebot_test_things" in inspect(store.engine).get_table_names()
    assert schema_versions(store.engine) == {"things": 2}
    assert ensure_tables(store.engine, part) == 2  # a second start changes nothing
    assert ran == [2]  # version 1 is the tables create_all made; 2 ran once


def test_tables_from_before_versioning_are_version_1_and_are_upgraded_in_place(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with store.engine.begin() as conn:  # what an older tunebot made, with a row in it
        conn.execute(text("CREATE TABLE tunebot_test_things (id INTEGER PRIMARY KEY, name VARCHAR(20))"))
        conn.execute(text("INSERT INTO tunebot_test_things (id, name) VALUES (1, 'kept')"))

    def add_note(conn) -> None:
        conn.execute(text("ALTER TABLE tunebot_test_things ADD COLUMN note VARCHAR(20)"))

    assert ensure_tables(store.engine, _part({1: lambda conn: None, 2: add_note})) == 2
    assert "note" in _columns(store, "tunebot_test_things")
    with store.engine.begin() as conn:
        assert conn.execute(text("SELECT name FROM tunebot_test_things")).scalar() == "kept"
    assert schema_versions(store.engine) == {"things": 2}


def test_the_engines_migration_does_not_make_the_bots_tables(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    tables = set(inspect(store.engine).get_table_names())
    assert "job" in tables and "slack_outbox" not in tables
    ensure_tables(store.engine, OUTBOX_TABLES)
    assert "slack_outbox" in inspect(store.engine).get_table_names()
    assert schema_versions(store.engine)["outbox"] == 1
