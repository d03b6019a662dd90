"""The runner loop's process handling, on SQLite and PostgreSQL, with a fast stand-in CLI.

(Every job kind also runs through the real llamafactory-cli in test_engine_llamafactory.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from runners.backends.local import process_start_time
from runners.hardware import Gpu, Hardware
from runners.job import Job, JobState
from runners.queue import JobQueue, Requester
from runners.store import Store
from runners.worker import Worker, wait_for

from .conftest import wait_until
from .schema_v3 import make_v3_database

FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")
CPU = Hardware(host="testhost", gpus=(), cpu_count=2)


def fake_settings(settings, **env):
    return replace(
        settings,
        llamafactory_cli=f"{sys.executable} {FAKE}",
        job_env={"FAKE_STEPS": "5", "FAKE_STEP_SECONDS": "0.1", **env},
    )


def tiny_train(queue: JobQueue, user: str = "", **pairs) -> Job:
    return queue.submit_train(preset="tiny", pairs=pairs, requester=Requester(user=user))


def test_train_job_runs_to_success_with_progress_events(settings, store):
    s = fake_settings(settings)
    queue = JobQueue(s, store, hardware=CPU)
    worker = Worker(s, store, hardware=CPU)
    job = tiny_train(queue)
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    assert done.exit_code == 0
    assert done.artifacts["adapter"].endswith("output")
    steps = [e.data["step"] for e in store.events_since(0, job_id=job.id) if e.type == "progress"]
    assert steps == [1, 2, 3, 4, 5]
    assert done.progress["step"] == 5 and done.progress["percent"] == 100.0
    assert Path(done.artifacts["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    states = [e.data["state"] for e in store.events_since(0, job_id=job.id) if e.type == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert store.leased_slots(CPU.host) == {}


def test_jobs_wait_in_fifo_order_for_the_only_slot(settings, store):
    s = fake_settings(settings, FAKE_STEPS="3")
    queue = JobQueue(s, store, hardware=CPU)
    jobs = [tiny_train(queue, user=f"U{i}") for i in range(3)]
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        for job in jobs:
            assert wait_for(store, job.id, FINAL, timeout=60).state == "succeeded"
    finally:
        worker.stop()
    started = [store.get(j.id).started_at for j in jobs]
    finished = [store.get(j.id).finished_at for j in jobs]
    assert started == sorted(started)
    # one slot: each job starts only after the previous one ended
    assert started[1] >= finished[0] and started[2] >= finished[1]


def test_per_user_limit_lets_other_users_go_first(settings, store):
    s = replace(
        fake_settings(settings, FAKE_STEPS="20", FAKE_STEP_SECONDS="0.1"), cpu_slots=2, max_jobs_per_user=1
    )
    queue = JobQueue(s, store, hardware=CPU)
    a1 = tiny_train(queue, user="UA")
    a2 = tiny_train(queue, user="UA")
    b1 = tiny_train(queue, user="UB")
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        wait_until(lambda: store.get(b1.id).state == "running", 30, what="UB's job to start")
        assert store.get(a1.id).state == "running"
        assert store.get(a2.id).state == "queued"  # UA is at their limit of one
        queue.cancel(a1.id, by="UA", admin=False)
        wait_until(lambda: store.get(a2.id).state == "running", 30, what="UA's second job")
    finally:
        for j in (a1, a2, b1):
            if not store.get(j.id).is_final:
                queue.cancel(j.id)
        wait_until(lambda: all(store.get(j.id).is_final for j in (a1, a2, b1)), 30, what="all to end")
        worker.stop()


def test_each_job_gets_its_own_gpus(settings, store):
    gpus = Hardware(
        host="gpuhost", gpus=tuple(Gpu(str(i), "H100", 81559, 9.0) for i in range(3)), cpu_count=16
    )
    s = fake_settings(settings, FAKE_STEPS="15")
    queue = JobQueue(s, store, hardware=gpus)
    two = queue.submit_train(preset="tiny", pairs={"gpus": "2", "compute": "fp32"})
    one = queue.submit_train(preset="tiny", pairs={"compute": "fp32"})
    worker = Worker(s, store, hardware=gpus)
    worker.start()
    try:
        wait_until(
            lambda: store.get(one.id).state == "running" and store.get(two.id).state == "running",
            30,
            what="both jobs running",
        )
        assert sorted(store.get(two.id).slots + store.get(one.id).slots) == ["0", "1", "2"]
        assert store.leased_slots("gpuhost") == {"0": two.id, "1": two.id, "2": one.id}
        wait_until(lambda: store.get(two.id).is_final and store.get(one.id).is_final, 60, what="the end")
    finally:
        worker.stop()
    log_two = Path(store.get(two.id).log_path).read_text()
    assert "cuda='0,1'" in log_two
    config = Path(store.get(two.id).work_dir, "config.yaml").read_text()
    assert "output_dir" in config
    assert store.leased_slots("gpuhost") == {}


def test_asking_for_more_gpus_than_the_runner_has_is_refused(settings, store):
    one_gpu = Hardware(host="g", gpus=(Gpu("0", "H100", 81559, 9.0),), cpu_count=16)
    queue = JobQueue(settings, store, hardware=one_gpu)
    with pytest.raises(Exception) as err:
        queue.submit_train(preset="tiny", pairs={"gpus": "4", "compute": "fp32"})
    assert "asks for 4 GPUs and the runner has 1" in str(err.value)
    assert store.list_jobs() == []


def test_cancel_while_queued_and_while_running(settings, store):
    s = replace(fake_settings(settings, FAKE_STEPS="200", FAKE_STEP_SECONDS="0.1"), cancel_grace=5.0)
    queue = JobQueue(s, store, hardware=CPU)
    running = tiny_train(queue, user="U1")
    waiting = tiny_train(queue, user="U2")
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        wait_until(lambda: store.get(running.id).progress.get("step"), 30, what="progress")
        cancelled = queue.cancel(waiting.id, by="U2", admin=False)
        assert cancelled.state == "cancelled" and cancelled.cancelled_by == "U2"
        with pytest.raises(Exception, match="Only the person who started it or an admin"):
            queue.cancel(running.id, by="U2", admin=False)
        queue.cancel(running.id, by="U1", admin=False)
        done = wait_for(store, running.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "cancelled"
    assert "U1" in done.error
    assert "resume" in (done.advice or "")
    assert "received SIGTERM" in Path(done.log_path).read_text()
    assert store.leased_slots(CPU.host) == {}
    actions = [(a.user, a.action) for a in store.audit_log()]
    assert ("U1", "cancel") in actions and ("U2", "cancel") in actions


def test_a_job_started_from_the_command_line_is_steered_by_admins_only(settings, store):
    queue = JobQueue(fake_settings(settings), store, hardware=CPU)
    job = tiny_train(queue)  # no owner: the CLI
    with pytest.raises(Exception, match="Only an admin"):
        queue.cancel(job.id, by="U9", admin=False)
    with pytest.raises(Exception, match="Only an admin"):
        queue.resume(job.id, by="U9", admin=False)
    assert queue.cancel(job.id, by="UADMIN", admin=True).state == "cancelled"


def test_process_that_ignores_sigterm_is_killed_after_the_grace_period(settings, store, tmp_path):
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\ntime.sleep(600)\n"
    )
    s = replace(settings, llamafactory_cli=f"{sys.executable} {stubborn}", cancel_grace=1.0)
    queue = JobQueue(s, store, hardware=CPU)
    job = tiny_train(queue)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        wait_until(lambda: "ignoring" in log_text(store.get(job.id)), 30, what="start")
        queue.cancel(job.id)
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "cancelled"
    assert done.exit_code == -9


def test_killed_training_process_fails_with_a_plain_reason(settings, store):
    s = fake_settings(settings, FAKE_STEPS="300", FAKE_STEP_SECONDS="0.1")
    queue = JobQueue(s, store, hardware=CPU)
    job = tiny_train(queue)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        wait_until(lambda: store.get(job.id).progress.get("step"), 30, what="progress")
        os.killpg(store.get(job.id).handle["pid"], signal.SIGKILL)
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "failed"
    assert done.exit_code == -9
    assert "killed" in done.error.lower()
    assert "resume" in done.advice
    assert store.leased_slots(CPU.host) == {}


def test_llamafactory_error_is_reported_with_advice_and_log_tail(settings, store):
    s = fake_settings(
        settings,
        FAKE_STEPS="1",
        FAKE_EXIT="1",
        FAKE_ERROR="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    queue = JobQueue(s, store, hardware=CPU)
    job = tiny_train(queue)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "failed" and done.exit_code == 1
    assert "out of memory" in done.error.lower()
    assert "batch" in done.advice
    assert "CUDA out of memory" in done.log_tail


def test_restart_reattaches_to_a_running_job_and_sees_it_finish(settings, store):
    s = fake_settings(settings, FAKE_STEPS="25", FAKE_STEP_SECONDS="0.2")
    queue = JobQueue(s, store, hardware=CPU)
    job = tiny_train(queue)
    first = Worker(s, store, hardware=CPU)
    first.start()
    wait_until(lambda: (store.get(job.id).progress.get("step") or 0) >= 2, 30, what="progress")
    first.stop()  # tunebot goes down; the training process is in its own session and keeps going
    pid = store.get(job.id).handle["pid"]
    os.kill(pid, 0)
    assert store.get(job.id).state == "running"

    second = Worker(s, replace_store(store), hardware=CPU)  # a new process: its own connection pool
    second.start()
    try:
        assert job.id in second.running
        done = wait_for(store, job.id, FINAL, timeout=60)
    finally:
        second.stop()
    assert done.state == "succeeded", done.error
    assert done.runner_id == second.runner_id
    steps = [e.data["step"] for e in store.events_since(0, job_id=job.id) if e.type == "progress"]
    assert steps == list(range(1, 26))  # no step lost or repeated across the restart
    assert any(e.type == "reattached" for e in store.events_since(0, job_id=job.id))


def test_restart_marks_a_job_whose_process_is_gone_interrupted_and_resume_continues(settings, store):
    s = fake_settings(settings, FAKE_STEPS="40", FAKE_STEP_SECONDS="0.1")
    queue = JobQueue(s, store, hardware=CPU)
    job = tiny_train(queue)
    first = Worker(s, store, hardware=CPU)
    first.start()
    wait_until(lambda: (store.get(job.id).progress.get("step") or 0) >= 5, 30, what="progress")
    first.stop()
    # The host lost the process while tunebot was down.
    os.killpg(store.get(job.id).handle["pid"], signal.SIGKILL)
    wait_until(lambda: not _alive(store.get(job.id).handle["pid"]), 10, what="process gone")

    second = Worker(s, store, hardware=CPU)
    second.start()
    try:
        interrupted = store.get(job.id)
        assert interrupted.state == "interrupted"
        assert "resume" in interrupted.advice
        assert store.leased_slots(CPU.host) == {}
        resumed = queue.resume(job.id, by="cli", request_key="trigger-9")
        assert resumed.state == "queued" and resumed.attempt == 2
        again = queue.resume(job.id, by="cli", request_key="trigger-9")  # Slack redelivered the click
        assert (again.id, again.attempt) == (job.id, 2)
        assert resumed.args["resume_from_checkpoint"].rsplit("-", 1)[1].isdigit()
        done = wait_for(store, job.id, FINAL, timeout=60)
    finally:
        second.stop()
    assert done.state == "succeeded", done.error
    assert "Resuming training from" in Path(done.log_path).read_text()


def test_two_runners_on_one_database_never_start_a_job_twice(settings, db_url):
    s = replace(fake_settings(settings, FAKE_STEPS="2", FAKE_STEP_SECONDS="0.05"), cpu_slots=2)
    store_a, store_b = Store(db_url), Store(db_url)
    store_a.migrate()
    queue = JobQueue(s, store_a, hardware=CPU)
    jobs = [tiny_train(queue) for _ in range(6)]
    # Two runner processes on two hosts, each with two slots, racing for the same queue.
    a = Worker(s, store_a, hardware=replace(CPU, host="hostA"))
    b = Worker(s, store_b, hardware=replace(CPU, host="hostB"))
    a.start()
    b.start()
    try:
        for job in jobs:
            assert wait_for(store_a, job.id, FINAL, timeout=90).state == "succeeded"
    finally:
        a.stop()
        b.stop()
    for job in jobs:
        runs = [
            e
            for e in store_a.events_since(0, job_id=job.id)
            if e.type == "state" and e.data["state"] == "running"
        ]
        assert len(runs) == 1
        assert Path(store_a.get(job.id).log_path).read_text().count("fake llamafactory-cli train") == 1


def test_atomic_claim_under_concurrent_threads(store):
    job, _ = store.add_job(Job(kind="train", model="m"))
    results = []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(store.transition(job.id, ["queued"], "running", runner_id=f"r{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def log_text(job: Job) -> str:
    try:
        return Path(job.log_path).read_text()
    except OSError:
        return ""


def replace_store(store: Store) -> Store:
    fresh = Store(store.url)
    fresh.migrate()
    return fresh


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def test_queue_refuses_unknown_dataset_and_stores_nothing(settings, store):
    queue = JobQueue(settings, store, hardware=CPU)
    with pytest.raises(Exception) as err:
        queue.submit_train(preset="tiny", pairs={"dataset": "nosuch"})
    assert "nosuch" in str(err.value)
    assert store.list_jobs() == []


def test_redelivered_request_creates_one_job(settings, store):
    s = fake_settings(settings)
    queue = JobQueue(s, store, hardware=CPU)
    first = queue.submit_train(preset="tiny", requester=Requester(user="U1", request_key="trigger-123"))
    again = queue.submit_train(preset="tiny", requester=Requester(user="U1", request_key="trigger-123"))
    assert first.id == again.id
    assert len(store.list_jobs()) == 1
    assert first.state == JobState.QUEUED.value


def test_a_job_no_runner_here_can_fit_does_not_block_the_queue(settings, store):
    s = fake_settings(settings, FAKE_STEPS="2")
    queue = JobQueue(s, store, hardware=CPU)
    too_big, _ = store.add_job(Job(kind="train", model="m", n_slots=4))  # for a 4-GPU runner elsewhere
    small = tiny_train(queue)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        assert wait_for(store, small.id, FINAL, timeout=60).state == "succeeded"
    finally:
        worker.stop()
    assert store.get(too_big.id).state == "queued"


def test_losing_a_claim_frees_only_this_runners_lease(store):
    job, _ = store.add_job(Job(kind="train", model="m"))
    assert store.lease_slots("hostA", ["0"], job.id)
    assert store.lease_slots("hostB", ["0"], job.id)  # both runners leased before claiming
    store.release_slots(job.id, host="hostA", slots=["0"])  # A lost the claim to B
    assert store.leased_slots("hostB") == {"0": job.id}
    assert store.leased_slots("hostA") == {}


def test_jobs_get_none_of_the_bots_secrets(settings, store, monkeypatch):
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "TUNEBOT_OSS_ACCESS_KEY_SECRET",
        "TUNEBOT_DATABASE_URL",
    ):
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror")
    worker = Worker(settings, store, hardware=CPU)
    job, _ = store.add_job(Job(kind="train", model="m", work_dir=str(settings.jobs_dir / "1")))
    env = worker._job_env(job, ["cpu0"])
    assert "secret-value" not in env.values()
    assert env["HF_ENDPOINT"] == "http://mirror"  # other settings still reach the job


def test_children_that_ignore_sigterm_are_killed_when_the_job_ends(settings, store, tmp_path):
    parent = tmp_path / "parent.py"
    pid_file = tmp_path / "child.pid"
    parent.write_text(
        "import subprocess, sys, time, signal\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        "print('parent up', flush=True)\n"
        "time.sleep(600)\n"
    )
    s = replace(settings, llamafactory_cli=f"{sys.executable} {parent}", cancel_grace=30.0)
    queue = JobQueue(s, store, hardware=CPU)
    job = tiny_train(queue)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        wait_until(pid_file.exists, 30, what="the child to start")
        child = int(pid_file.read_text())
        queue.cancel(job.id)
        assert wait_for(store, job.id, FINAL, timeout=30).state == "cancelled"
        # The command exited at once; its child ignored SIGTERM and must not outlive the job.
        wait_until(lambda: not _alive(child), 10, what="the child to be killed")
    finally:
        worker.stop()


def test_requests_are_judged_against_the_live_runners_hardware_not_the_front_ends(
    settings, store, monkeypatch
):
    monkeypatch.setattr("runners.queue.detect", lambda: CPU)  # the front end's own box: no GPU
    h100s = Hardware(
        host="gpuhost", gpus=tuple(Gpu(str(i), "H100", 81559, 9.0) for i in range(2)), cpu_count=64
    )
    front_end = JobQueue(settings, store)  # no pinned hardware
    with pytest.raises(Exception, match="needs a GPU"):
        front_end.submit_train(preset="tiny", pairs={"compute": "bf16"})
    store.beat("gpuhost-1", "gpuhost", 1, hardware={**h100s.to_dict(), "slots": ["0", "1"]})
    job = front_end.submit_train(preset="tiny", pairs={"compute": "bf16", "gpus": "2"})
    assert job.n_slots == 2 and job.args["bf16"] is True
    with pytest.raises(Exception, match="asks for 3 GPUs and the runner has 2"):
        front_end.submit_train(preset="tiny", pairs={"compute": "bf16", "gpus": "3"})


def test_a_version_3_database_with_a_running_job_upgrades_and_it_is_reattached(settings, db_url, tmp_path):
    """An engine from before schema version 4 kept the pid on the job row; after the upgrade the pid
    lives in the local backend's handle, and a new runner follows and stops that very process."""
    work = tmp_path / "jobs" / "1"
    work.mkdir(parents=True)
    log_path = work / "job.log"
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runners.launch", "--exit-file", str(work / "exit.json"), "--",
             sys.executable, "-c", "import time; time.sleep(120)"],
            cwd=work, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    worker = None
    try:
        make_v3_database(db_url, jobs=[{
            "kind": "train", "state": "running", "model": "m", "user": "U1", "channel": "C1",
            "message_ts": "1.5", "host": CPU.host, "runner_id": "gone-runner", "pid": proc.pid,
            "proc_start": process_start_time(proc.pid), "work_dir": str(work), "log_path": str(log_path),
            "started_at": time.time(),
        }])
        store = Store(db_url)
        store.migrate()
        job = store.get(1)
        assert job.origin == {"channel": "C1", "message_ts": "1.5"}
        assert job.handle["pid"] == proc.pid and job.handle["backend"] == "local"
        worker = Worker(settings, store, hardware=CPU)
        worker.start()
        assert 1 in worker.running
        kinds = [e.type for e in store.events_since(0, job_id=1)]
        assert kinds[0] == "reattached" and set(kinds) <= {"reattached", "activity"}  # not started again
        JobQueue(settings, store, hardware=CPU).cancel(1, by="U1")
        done = wait_for(store, 1, FINAL, timeout=30)
        assert done.state == "cancelled"
        proc.wait(timeout=10)  # the very process the old engine started was stopped through the handle
    finally:
        if worker is not None:
            worker.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
