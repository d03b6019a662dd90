"""Fault suite, runner side (issue #10, lost or false data): uploads cut off by a stop, the last
loss point, a job that ended with no runner up, a runner stopped or killed mid-job, a database
locked past its busy timeout. Windows are scaled down: a 0.2 s busy timeout stands for 30 s."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from runners import artifacts
from runners import store as store_module
from runners.artifacts import StorageSettings
from runners.hardware import Hardware
from runners.queue import JobQueue
from runners.runtime import Runtime
from runners.settings import Settings
from runners.store import Store
from runners.worker import UPLOAD_PENDING, Worker, wait_for
from tests.oss_standin import OssStandin

from .conftest import wait_until

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)


@pytest.fixture
def lite(tmp_path, shared_models) -> Settings:
    """Settings on SQLite with the fast stand-in CLI (these faults are the runner's, not the engine's)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    return Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'tunebot.db'}",
        poll_interval=0.1,
        cancel_grace=3.0,
        web_port=0,
        llamafactory_cli=f"{sys.executable} {FAKE}",
        job_env={"FAKE_STEPS": "5", "FAKE_STEP_SECONDS": "0.1"},
    )


@pytest.fixture
def db(lite) -> Store:
    s = Store(lite.db_url)
    s.migrate()
    yield s
    s.engine.dispose()


def with_steps(settings: Settings, steps: int, seconds: float) -> Settings:
    return replace(settings, job_env={"FAKE_STEPS": str(steps), "FAKE_STEP_SECONDS": str(seconds)})


def with_oss(settings: Settings, server: OssStandin) -> Settings:
    storage = StorageSettings(
        backend="oss",
        oss_endpoint=server.endpoint,
        oss_bucket=server.bucket,
        oss_prefix="team",
        oss_access_key_id=server.access_key_id,
        oss_access_key_secret=server.access_key_secret,
        multipart_threshold=400 * 1024,
        part_size=100 * 1024,
        threads=2,
    )
    return replace(settings, storage=storage)


def upload_events(store: Store, job_id: int) -> list[dict]:
    return [e.data for e in store.events_since(0, job_id=job_id) if e.type == "upload"]


def progress_steps(store: Store, job_id: int) -> list[int]:
    return [e.data["step"] for e in store.events_since(0, job_id=job_id) if e.type == "progress"]


# --- 3: the final loss plot keeps the last step --------------------------------------------------
def test_final_loss_plot_draws_the_last_steps_loss_not_the_closing_summary_line(lite, db, monkeypatch):
    from runners import plots

    drawn: list[list] = []
    real = plots.render_loss_plot
    monkeypatch.setattr(plots, "render_loss_plot", lambda points, dest, **kw: (drawn.append(points),
                                                                                real(points, dest, **kw))[1])
    queue = JobQueue(lite, db, hardware=CPU)
    worker = Worker(lite, db, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    worker.start()
    try:
        done = wait_for(db, job.id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert done.state == "succeeded"
    log = (Path(done.work_dir) / "output" / "trainer_log.jsonl").read_text().splitlines()
    assert "loss" not in json.loads(log[-1])  # LLaMA-Factory's closing line, as the stand-in writes it
    final = drawn[-1]
    assert [p.step for p in final] == [1, 2, 3, 4, 5]
    assert final[-1].loss == pytest.approx(3.0 / 5)  # what the finished post says is the last loss
    assert done.progress["loss"] == pytest.approx(3.0 / 5)


# --- 4: a job that ended while no runner was up ---------------------------------------------------
def test_a_job_that_ended_with_no_runner_up_is_adopted_with_its_final_figures_and_end_time(lite, db):
    s = with_steps(lite, 20, 0.25)
    queue = JobQueue(s, db, hardware=CPU)
    first = Worker(s, db, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    first.start()
    wait_until(lambda: (db.get(job.id).progress.get("step") or 0) >= 2, 30, what="step 2")
    first.stop()  # the runner goes; the training goes on and ends with nobody following it
    stale = db.get(job.id).progress["step"]
    exit_file = Path(db.get(job.id).work_dir) / "exit.json"
    wait_until(exit_file.exists, 30, what="the process to end")
    ended_at = json.loads(exit_file.read_text())["finished_at"]
    time.sleep(1.0)
    second = Worker(s, db, hardware=CPU)
    second.start()
    try:
        done = wait_for(db, job.id, FINAL, timeout=30)
    finally:
        second.stop()
    assert stale < 20
    assert done.state == "succeeded"
    assert done.progress["step"] == 20 and done.progress["percent"] == 100.0
    assert done.progress["loss"] == pytest.approx(3.0 / 20)
    assert done.finished_at == pytest.approx(ended_at, abs=0.01)  # not when it was adopted
    assert progress_steps(db, job.id) == list(range(1, 21))  # each step recorded once, none lost


# --- 1: uploads are finished or retried, never cut off -------------------------------------------
def slow_uploads(monkeypatch, seconds: float) -> None:
    real = artifacts.upload_job

    def slow(job, storage, **kwargs):
        time.sleep(seconds)
        return real(job, storage, **kwargs)

    monkeypatch.setattr(artifacts, "upload_job", slow)


def test_a_foreground_run_stopping_after_success_finishes_its_uploads_first(lite, tmp_path, monkeypatch):
    with OssStandin(tmp_path / "oss") as server:
        s = with_oss(lite, server)
        slow_uploads(monkeypatch, 1.5)
        runtime = Runtime(s)
        job = runtime.queue.submit_train(preset="tiny")
        runtime.worker.only_job = job.id
        runtime.start(web=False)
        try:
            assert wait_for(runtime.store, job.id, FINAL, timeout=60).state == "succeeded"
        finally:
            runtime.stop()  # what `tunebot run` does when the job has ended
        uploaded = {e["name"] for e in upload_events(runtime.store, job.id) if "error" not in e}
        assert uploaded == {"adapter", "plot", "config"}
        assert UPLOAD_PENDING not in runtime.store.get(job.id).artifacts
        assert any(k.endswith("adapter/tunebot-manifest.json") for k in server.keys())


def test_an_upload_cut_off_by_a_stop_is_uploaded_by_the_next_runner(lite, db, tmp_path, monkeypatch):
    release = threading.Event()

    def stuck(job, storage, **kwargs):
        release.wait(30)
        raise RuntimeError("the process was killed mid-upload")

    with OssStandin(tmp_path / "oss") as server:
        s = with_oss(lite, server)
        queue = JobQueue(s, db, hardware=CPU)
        monkeypatch.setattr(artifacts, "upload_job", stuck)
        first = Worker(s, db, hardware=CPU)
        job = queue.submit_train(preset="tiny")
        first.start()
        try:
            assert wait_for(db, job.id, FINAL, timeout=60).state == "succeeded"
            first.stop(upload_timeout=0.3)  # gives up waiting, as a kill would
            assert db.get(job.id).artifacts[UPLOAD_PENDING] is True
            monkeypatch.undo()
            second = Worker(s, db, hardware=CPU)
            second.start()
            try:
                wait_until(lambda: UPLOAD_PENDING not in db.get(job.id).artifacts, 30, what="the retry")
            finally:
                second.stop()
            uploaded = {e["name"] for e in upload_events(db, job.id) if "error" not in e}
            assert uploaded == {"adapter", "plot", "config"}
            assert set(db.get(job.id).artifacts["remote"]) == {"adapter", "plot", "config"}
        finally:
            release.set()


def test_an_upload_that_crashes_says_so_in_the_jobs_events_and_stays_pending(lite, db, tmp_path, monkeypatch):
    def broken(job, storage, **kwargs):
        raise RuntimeError("oss2 fell over")

    with OssStandin(tmp_path / "oss") as server:
        s = with_oss(lite, server)
        monkeypatch.setattr(artifacts, "upload_job", broken)
        queue = JobQueue(s, db, hardware=CPU)
        worker = Worker(s, db, hardware=CPU)
        job = queue.submit_train(preset="tiny")
        worker.start()
        try:
            assert wait_for(db, job.id, FINAL, timeout=60).state == "succeeded"
            wait_until(lambda: upload_events(db, job.id), 30, what="the upload outcome")
        finally:
            worker.stop()
        [event] = upload_events(db, job.id)
        assert "oss2 fell over" in event["error"]
        assert db.get(job.id).artifacts[UPLOAD_PENDING] is True  # the next runner tries again


# --- 6: a database locked past its busy timeout ---------------------------------------------------
def hold_write_lock(path: Path, seconds: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_database_locked_past_its_busy_timeout_neither_kills_nor_fails_a_training(
    lite, monkeypatch, caplog
):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
    s = with_steps(lite, 12, 0.15)
    db = Store(s.db_url)
    db.migrate()
    queue = JobQueue(s, db, hardware=CPU)
    worker = Worker(s, db, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    caplog.set_level(logging.INFO, logger="runners")
    worker.start()
    try:
        wait_until(lambda: (db.get(job.id).progress.get("step") or 0) >= 2, 30, what="step 2")
        # Locked for longer than the rest of the training: it exits 0 while tunebot cannot write.
        hold_write_lock(Path(s.data_dir) / "tunebot.db", 3.0)
        done = wait_for(db, job.id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    assert done.exit_code == 0 and done.artifacts["adapter"]
    assert progress_steps(db, job.id) == list(range(1, 13))  # delayed by the lock, none lost or doubled
    events = db.events_since(0, job_id=job.id)
    assert len([e for e in events if e.type == "plot" and e.data["final"]]) == 1  # one final plot posted
    assert len([e for e in events if e.type == "result"]) == 1
    runner_lines = [r for r in caplog.records if r.name == "runners.worker" and r.levelno >= logging.WARNING]
    assert not [r for r in runner_lines if r.exc_info], "no tracebacks for a lock"
    assert 1 <= len(runner_lines) <= 2  # "locked; retrying" once, "back after N s" once
    assert "locked" in runner_lines[0].getMessage()


def test_a_launch_whose_handle_write_meets_an_outage_still_follows_its_process(lite, db, monkeypatch):
    """The process started, then the database went away before its handle was written: the runner
    follows it all the same (a process no runner watches would hold its GPU), records the handle on
    the next tick, and the job ends as it really ended."""
    from sqlalchemy.exc import OperationalError

    queue = JobQueue(lite, db, hardware=CPU)
    worker = Worker(lite, db, hardware=CPU)
    real, failed = db.update, []

    def flaky(job_id, **values):
        if "handle" in values and not failed:
            failed.append(job_id)
            raise OperationalError("UPDATE job", {}, Exception("database is locked"))
        return real(job_id, **values)

    monkeypatch.setattr(db, "update", flaky)
    job = queue.submit_train(preset="tiny")
    worker.start()
    try:
        done = wait_for(db, job.id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert failed == [job.id]
    assert done.state == "succeeded", done.error
    assert done.handle and done.exit_code == 0
    assert progress_steps(db, job.id) == [1, 2, 3, 4, 5]


# --- 6: PostgreSQL stopped while a job trains ------------------------------------------------------
@pytest.fixture
def own_pg(tmp_path_factory):
    """A PostgreSQL server of this test's own, which the test may stop and start again."""
    import shutil
    import subprocess
    import uuid

    from .conftest import _as_postgres, _free_port, _pg_bin

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail("PostgreSQL is not installed (initdb/pg_ctl); `.ci/run` installs it")
    base = Path(f"/tmp/tunebot-pg-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o777)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data, port = base / "data", _free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start():
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w",
                                     "start"]), check=True, capture_output=True)

    def stop():
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                       check=True, capture_output=True)

    start()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop, start
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_stopped_mid_training_is_one_log_line_and_the_job_succeeds(lite, own_pg, caplog):
    url, stop, start = own_pg
    s = replace(with_steps(lite, 30, 0.1), database_url=url)
    db = Store(s.db_url)
    db.migrate()
    queue = JobQueue(s, db, hardware=CPU)
    worker = Worker(s, db, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    caplog.set_level(logging.INFO, logger="runners")
    worker.start()
    try:
        wait_until(lambda: (db.get(job.id).progress.get("step") or 0) >= 2, 30, what="step 2")
        stop()
        time.sleep(3.0)  # the training ends while the server is down
        start()
        done = wait_for(db, job.id, FINAL, timeout=60)
    finally:
        worker.stop()
        db.engine.dispose()
    assert done.state == "succeeded", done.error
    assert progress_steps(Store(url), job.id) == list(range(1, 31))
    runner_lines = [r for r in caplog.records if r.name == "runners.worker" and r.levelno >= logging.WARNING]
    assert not [r for r in runner_lines if r.exc_info], "no tracebacks for an outage"
    assert 1 <= len(runner_lines) <= 2
    assert "PostgreSQL server cannot be reached" in runner_lines[0].getMessage()


# --- kill -9 of a runner mid-training -------------------------------------------------------------
def test_a_runner_killed_with_sigkill_mid_training_is_taken_over_and_nothing_is_lost(lite, db):
    import signal
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "TUNEBOT_DATA_DIR": str(lite.data_dir),
        "TUNEBOT_DATABASE_URL": lite.db_url,
        "TUNEBOT_LLAMAFACTORY_CLI": lite.llamafactory_cli,
        "TUNEBOT_POLL_INTERVAL": "0.1s",
        "TUNEBOT_WEB_PORT": "0",
        "FAKE_STEPS": "50",
        "FAKE_STEP_SECONDS": "0.4",
    }
    job = JobQueue(lite, db).submit_train(preset="tiny")
    runner = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (db.get(job.id).progress.get("step") or 0) >= 3, 60, what="step 3")
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    pid = (db.get(job.id).handle or {})["pid"]  # the local backend's handle
    os.kill(pid, 0)  # the training outlives its runner
    successor = Worker(replace(lite, job_env={}), db)  # this host's, as the killed one was
    successor.start()
    try:
        done = wait_for(db, job.id, FINAL, timeout=60)
    finally:
        successor.stop()
    assert done.state == "succeeded", done.error
    assert done.runner_id == successor.runner_id
    assert progress_steps(db, job.id) == list(range(1, 51))  # lost: 0, doubled: 0
    assert [e.data["state"] for e in db.events_since(0, job_id=job.id) if e.type == "state"] == [
        "queued", "running", "succeeded"]
