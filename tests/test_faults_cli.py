"""Fault suite, command line (issue #10): a job left without a runner (Ctrl-C, SIGTERM, SIGHUP of
`tunebot run`, a stopped worker) stays managed (`show`, `logs -f`, `cancel`, `undeploy` act for
the missing runner), and a database that is locked answers in plain words."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.cli import main
from runners import store as store_module
from runners.queue import JobQueue
from runners.runtime import Runtime
from runners.settings import Settings
from runners.store import Store
from runners.worker import Worker

from .conftest import wait_until
from .test_faults_runner import hold_write_lock

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"


@pytest.fixture
def data(tmp_path, shared_models, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    for name in ("TUNEBOT_DATABASE_URL", "TUNEBOT_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "TUNEBOT_DATA_DIR": str(data),
        "TUNEBOT_LLAMAFACTORY_CLI": f"{sys.executable} {FAKE}",
        "TUNEBOT_CANCEL_GRACE": "3s",
        "TUNEBOT_POLL_INTERVAL": "0.1s",
        "TUNEBOT_WEB_PORT": "0",
        "FAKE_STEPS": "6",
        "FAKE_STEP_SECONDS": "0.3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return data


def settings_of(data: Path) -> Settings:
    return Settings.from_env()


def store_of(data: Path) -> Store:
    store = Store(f"sqlite:///{data / 'tunebot.db'}")
    store.migrate()
    return store


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def process_of(job) -> int | None:
    """The job's process id, from the local backend's handle (the test knows the backend)."""
    return (job.handle or {}).get("pid")


def start_then_leave(data: Path, steps: str = "12") -> int:
    """A foreground run whose terminal went away mid-job: the runner stopped, the process lives."""
    os.environ["FAKE_STEPS"] = steps
    runtime = Runtime(settings_of(data))
    job = runtime.queue.submit_train(preset="tiny")
    runtime.worker.only_job = job.id
    runtime.start(web=False)
    wait_until(lambda: (runtime.store.get(job.id).progress.get("step") or 0) >= 1, 30, what="step 1")
    runtime.stop()  # what Ctrl-C of `tunebot run` does: the job goes on, nobody follows it
    return job.id


# --- 5: nothing follows a job left running without a runner -------------------------------------
def test_show_after_an_interrupted_run_records_how_the_job_ended(data, capsys):
    job_id = start_then_leave(data)
    store = store_of(data)
    exit_file = Path(store.get(job_id).work_dir) / "exit.json"
    wait_until(exit_file.exists, 30, what="the training to end")
    assert store.get(job_id).state == "running"  # nobody recorded it
    assert main(["show", str(job_id)]) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "step 12/12" in out
    assert store.get(job_id).state == "succeeded"
    assert store.get(job_id).finished_at == pytest.approx(json.loads(exit_file.read_text())["finished_at"])


def test_cancel_with_no_runner_up_stops_the_process_itself(data, capsys):
    job_id = start_then_leave(data, steps="400")
    store = store_of(data)
    pid = process_of(store.get(job_id))
    try:
        assert alive(pid)
        assert main(["cancel", str(job_id)]) == 0
        assert f"#{job_id}: cancelled" in capsys.readouterr().out
        assert store.get(job_id).state == "cancelled"
        assert not alive(pid)
    finally:
        leave_nothing(pid)


def test_logs_follow_ends_when_the_unfollowed_job_ends(data, capsys):
    job_id = start_then_leave(data)
    done = threading.Event()
    result: list[int] = []

    def follow():
        result.append(main(["logs", "-f", str(job_id)]))
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    assert done.wait(30), "`logs -f` never returned"
    assert result == [0]
    assert store_of(data).get(job_id).state == "succeeded"


def fake_deploy(data: Path) -> tuple[Store, int]:
    """A deployment whose runner stopped: its API process (the stand-in's `api`) keeps serving."""
    store = store_of(data)
    settings = settings_of(data)
    queue = JobQueue(settings, store)
    model = next((data / "models").iterdir())
    job = queue.submit_deploy(model=str(model), pairs={"template": "llama3"})
    worker = Worker(settings, store)  # this host's: the command line acts only on its own host's jobs
    worker.start()
    wait_until(lambda: process_of(store.get(job.id)), 30, what="the API process")
    worker.stop()
    return store, job.id


def leave_nothing(pid: int | None) -> None:
    """A failed test must not leave its API process behind (it runs in its own session)."""
    if pid and alive(pid):
        os.killpg(pid, signal.SIGKILL)


def test_undeploy_with_no_runner_up_really_stops_the_api_process(data, capsys):
    store, job_id = fake_deploy(data)
    pid = process_of(store.get(job_id))
    try:
        assert alive(pid)
        assert main(["undeploy", str(job_id)]) == 0
        assert f"#{job_id}: stopped" in capsys.readouterr().out
        assert not alive(pid)
        assert store.get(job_id).state == "stopped"
    finally:
        leave_nothing(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_ending_a_foreground_deploy_by_any_signal_undeploys_it(data, sig):
    model = next((data / "models").iterdir())
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run", "deploy", "--model", str(model), "template=llama3"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid = None
    try:
        store = store_of(data)
        wait_until(lambda: store.list_jobs() and process_of(store.list_jobs()[0]), 60,
                   what="the API process")
        job = store.list_jobs()[0]
        pid = process_of(job)
        assert alive(pid)
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        output = proc.stdout.read().decode()
        assert "Traceback" not in output
        wait_until(lambda: not alive(pid), 10, what="the API process to stop")
        assert store.get(job.id).state == "stopped"
    finally:
        leave_nothing(pid)


# --- 6: the command line and a database in trouble -------------------------------------------------
def test_a_locked_database_is_a_plain_message_not_a_traceback(data, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
    assert main(["run", "train", "tiny", "--detach"]) == 0
    capsys.readouterr()
    holder = threading.Thread(target=hold_write_lock, args=(data / "tunebot.db", 2.0))
    holder.start()
    time.sleep(0.3)
    try:
        code = main(["cancel", "1"])
    finally:
        holder.join()
    err = capsys.readouterr().err
    assert code == 2
    assert "locked by another process" in err and "Fix:" in err
    assert "Traceback" not in err and "Background on this error" not in err and "sqlalche" not in err


@pytest.mark.parametrize(
    ("driver_says", "reason"),
    [
        ("database is locked", "locked by another process"),
        ("attempt to write a readonly database", "read-only"),
        ("database or disk is full", "disk holding the job database is full"),
        ("unable to open database file", "cannot be opened"),
        ('connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection refused',
         "PostgreSQL server cannot be reached"),
        ("something new\nwith a second line", "the job database failed (something new)"),
    ],
)
def test_database_faults_are_named_in_plain_words(driver_says, reason):
    from sqlalchemy.exc import OperationalError

    from runners.recovery.outage import describe_database_error, is_database_error

    exc = OperationalError("UPDATE job SET state=?", {}, Exception(driver_says))
    assert is_database_error(exc)
    said, fix = describe_database_error(exc)
    assert reason in said and fix
    assert "Background" not in said and "sqlalche" not in said and "UPDATE" not in said
