"""Fault suite: a full disk (issue #10 item 7). The data dir is a 2 MiB tmpfs where this runs as
root and may mount one; elsewhere the full disk is injected (ENOSPC from the writes)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from bot.cli import main
from runners.hardware import Hardware
from runners.queue import JobQueue
from runners.settings import Settings
from runners.store import Store
from runners.worker import Worker, wait_for

from .conftest import wait_until

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB filesystem (None where none can be mounted: the tests inject ENOSPC instead)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> None:
    """Write until the filesystem says it is full."""
    with open(disk / f"filler-{uuid.uuid4().hex[:6]}", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.fixture
def on_disk(tmp_path, shared_models, small_disk):
    """Settings whose data dir is on the small disk; the database is elsewhere (as PostgreSQL would be)."""
    data = (small_disk or tmp_path) / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{tmp_path / 'tunebot.db'}",
        poll_interval=0.1,
        cancel_grace=3.0,
        web_port=0,
        llamafactory_cli=f"{sys.executable} {FAKE}",
        job_env={"FAKE_STEPS": "40", "FAKE_STEP_SECONDS": "0.1"},
    )
    store = Store(settings.db_url)
    store.migrate()
    yield settings, store, small_disk
    store.engine.dispose()


def test_a_training_that_fills_the_disk_fails_with_the_reason_and_no_traceback_flood(on_disk, caplog):
    settings, store, disk = on_disk
    if disk is None:  # injected: the training's write fails as it would on a full disk
        settings = replace(settings, job_env={"FAKE_STEPS": "3", "FAKE_STEP_SECONDS": "0.1", "FAKE_EXIT": "1",
                                              "FAKE_ERROR": "OSError: [Errno 28] No space left on device"})
    queue = JobQueue(settings, store, hardware=CPU)
    worker = Worker(settings, store, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    caplog.set_level(logging.INFO, logger="runners")
    worker.start()
    try:
        wait_until(lambda: (store.get(job.id).progress.get("step") or 0) >= 1, 30, what="step 1")
        if disk is not None:
            fill(disk)
        done = wait_for(store, job.id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert done.state == "failed"
    assert "disk is full" in done.error
    assert "Free space" in done.advice
    assert not [r for r in caplog.records if r.name.startswith("runners") and r.exc_info]


def test_a_job_that_cannot_even_start_on_a_full_disk_says_to_free_space(on_disk, monkeypatch):
    settings, store, disk = on_disk
    queue = JobQueue(settings, store, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    if disk is not None:
        fill(disk)
    else:
        real = Path.write_text

        def full(self, *args, **kwargs):
            if self.name == "config.yaml":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", full)
    worker = Worker(settings, store, hardware=CPU)
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "failed"
    assert "No space left on device" in done.error
    assert "free space" in done.advice


def test_a_full_database_refuses_a_new_job_in_plain_words(tmp_path, shared_models, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.delenv("TUNEBOT_DATABASE_URL", raising=False)
    monkeypatch.setenv("TUNEBOT_DATA_DIR", str(data))
    assert main(["jobs"]) == 0  # the database exists
    capsys.readouterr()
    # SQLite's own answer on a full disk, from the driver, for the new job's row.
    from sqlalchemy.engine.default import DefaultDialect

    real = DefaultDialect.do_execute

    def full(self, cursor, statement, parameters, context=None):
        if statement.lstrip().upper().startswith("INSERT INTO JOB"):
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, cursor, statement, parameters, context)

    monkeypatch.setattr(DefaultDialect, "do_execute", full)
    code = main(["run", "train", "tiny", "--detach"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the disk holding the job database is full" in err.lower() and "Fix: free space" in err
    assert "Traceback" not in err and "Background on this error" not in err
    assert err.count("\n") == 1, err  # a sentence, not a dump
    assert main(["jobs"]) == 0  # reading still works, and nothing half-made is there
    assert "no jobs yet" in capsys.readouterr().out
