"""The job store on SQLite and PostgreSQL: versioned schema, events from a cursor, leases."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from runners import store as store_module
from runners.errors import UserError
from runners.job import Job
from runners.store import Store
from tests.schema_v3 import make_v3_database


def test_fresh_database_is_at_the_current_schema_version(store):
    assert store.schema_version() == store_module.SCHEMA_VERSION
    assert store.migrate() == store_module.SCHEMA_VERSION  # idempotent


def test_an_upgrade_adds_to_the_schema_and_keeps_every_stored_job(db_url, monkeypatch):
    old = Store(db_url)
    old.migrate()
    jobs = [old.add_job(Job(kind="train", model=f"m{i}", user="U1"))[0] for i in range(3)]
    old.add_event(jobs[0].id, "note", {"text": "kept"})
    old.engine.dispose()

    # A later release: version 2 adds a column to the job table, in place.
    def add_priority(conn):
        conn.execute(text("ALTER TABLE job ADD COLUMN priority INTEGER DEFAULT 0"))

    latest = store_module.SCHEMA_VERSION + 1
    monkeypatch.setitem(store_module.MIGRATIONS, latest, add_priority)
    new = Store(db_url)
    assert new.migrate() == latest
    assert new.schema_version() == latest
    columns = {c["name"] for c in inspect(new.engine).get_columns("job")}
    assert "priority" in columns
    assert [j.model for j in new.list_jobs(newest_first=False)] == ["m0", "m1", "m2"]
    assert new.events_since(0, job_id=jobs[0].id)[-1].data == {"text": "kept"}
    assert new.migrate() == latest  # running it again changes nothing
    new.engine.dispose()


def test_a_version_3_database_moves_slack_fields_into_origin_and_types_its_events(db_url):
    make_v3_database(
        db_url,
        jobs=[
            {"model": "m", "channel": "C1", "message_ts": "1.2", "state": "succeeded"},
            {"kind": "eval", "model": "m", "channel": "C1", "thread_ts": "1.2", "parent_id": 1},
            {"model": "cli"},
        ],
        events=[
            {"job_id": 1, "type": "message", "data": {"text": "started", "pid": 42, "slots": ["0"]}},
            {"job_id": 1, "type": "message", "data": {"text": "cancel requested"}},
            {"job_id": 1, "type": "message", "data": {"text": "resuming from checkpoint-40"}},
            {"job_id": 1, "type": "message", "data": {"text": "no checkpoint yet: starting over"}},
            {"job_id": 1, "type": "message", "data": {"text": "tunebot restarted and re-attached to it"}},
            {"job_id": 1, "type": "message", "data": {"text": "something else"}},
            {"job_id": 1, "type": "state", "data": {"state": "succeeded"}},
        ],
    )
    new = Store(db_url)
    assert new.migrate() == store_module.SCHEMA_VERSION >= 4
    columns = {c["name"] for c in inspect(new.engine).get_columns("job")}
    assert not columns & {"channel", "thread_ts", "message_ts", "pid", "proc_start"}
    indexes = {i["name"] for i in inspect(new.engine).get_indexes("job")}
    assert not indexes & {"ix_job_channel_message_ts", "ix_job_channel_thread_ts"}
    jobs = {j.id: j for j in new.list_jobs()}
    assert jobs[1].origin == {"channel": "C1", "message_ts": "1.2"}
    assert jobs[2].origin == {"channel": "C1", "thread_ts": "1.2"} and jobs[2].parent_id == 1
    assert jobs[3].origin == {} and jobs[3].handle == {}
    typed = [(e.type, e.data) for e in new.events_since(0, job_id=1)]
    assert typed == [
        ("started", {"slots": ["0"], "attempt": None, "config": None}),
        ("cancel_requested", {"by": None}),
        ("resumed", {"checkpoint": "checkpoint-40", "attempt": None}),
        ("resumed", {"checkpoint": None, "attempt": None}),
        ("reattached", {}),
        ("note", {"text": "something else"}),
        ("state", {"state": "succeeded"}),
    ]
    assert new.migrate() == store_module.SCHEMA_VERSION  # running it again changes nothing
    new.add_job(Job(kind="train", model="after", origin={"channel": "C2"}))  # the new row shape inserts
    new.engine.dispose()


def test_files_are_kept_by_key_and_a_second_put_replaces_the_first(store):
    job, _ = store.add_job(Job(kind="train", model="m"))
    key = store.put_file(job.id, "loss.png", b"\x89PNG one")
    assert store.get_file(key) == b"\x89PNG one"
    assert store.put_file(job.id, "loss.png", b"\x89PNG two") == key
    assert store.get_file(key) == b"\x89PNG two"
    assert store.get_file(f"{job.id}/nothing.png") is None


def test_an_event_kind_the_engine_does_not_know_is_refused(store):
    job, _ = store.add_job(Job(kind="train", model="m"))
    with pytest.raises(ValueError):
        store.add_event(job.id, "message", {"text": "free text"})


def test_events_are_read_from_a_cursor_in_order(store):
    a, _ = store.add_job(Job(kind="train", model="a"))
    b, _ = store.add_job(Job(kind="eval", model="b"))
    cursor = store.last_event_id()
    store.add_event(a.id, "progress", {"step": 1})
    store.add_event(b.id, "note", {"text": "hi"})
    store.add_event(a.id, "progress", {"step": 2})
    events = store.events_since(cursor)
    assert [(e.job_id, e.type) for e in events] == [(a.id, "progress"), (b.id, "note"), (a.id, "progress")]
    assert [e.data["step"] for e in store.events_since(cursor, job_id=a.id)] == [1, 2]
    assert store.events_since(events[-1].id) == []


def test_state_transitions_are_conditional(store):
    job, _ = store.add_job(Job(kind="train", model="m"))
    assert store.transition(job.id, ["queued"], "running")
    assert not store.transition(job.id, ["queued"], "cancelled")
    assert store.get(job.id).state == "running"


def test_slot_leases_are_exclusive_and_all_or_nothing(store):
    assert store.lease_slots("h", ["0", "1"], 1)
    assert not store.lease_slots("h", ["2", "1"], 2)  # 1 is taken: 2 must not be leased either
    assert store.leased_slots("h") == {"0": 1, "1": 1}
    assert store.lease_slots("other-host", ["0"], 3)  # slots are per host
    store.release_slots(1)
    assert store.lease_slots("h", ["2", "1"], 2)


def test_unknown_or_malformed_job_ids_are_user_errors(store):
    with pytest.raises(UserError, match="There is no job #41"):
        store.get(41)
    with pytest.raises(UserError, match="not a job id"):
        store.get("abc")
    job, _ = store.add_job(Job(kind="train", model="m"))
    assert store.get(f"#{job.id}").id == job.id


def test_secrets_never_enter_events(store):
    job, _ = store.add_job(Job(kind="deploy", model="m"))
    store.transition(job.id, ["queued"], "serving", api_key="tb-secret", url="http://x/v1")
    data = store.events_since(0, job_id=job.id)[-1].data
    assert data == {"state": "serving", "url": "http://x/v1"}
