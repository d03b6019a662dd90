"""tunebot's runner with TUNEBOT_BACKEND=ray against the test session's real Ray head: the same
jobs, events and results as with the local backend, the processes run as Ray jobs."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from runners.errors import UserError
from runners.queue import JobQueue, Requester
from runners.runtime import Runtime
from runners.store import Store
from runners.worker import Worker, wait_for

from .conftest import wait_until

pytestmark = pytest.mark.ray

FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")


@pytest.fixture
def db_url(tmp_path) -> str:
    """One engine is enough here: the store is not what these tests are about, and Ray runs are slow."""
    return f"sqlite:///{tmp_path / 'tunebot.db'}"


@pytest.fixture
def ray_settings(settings, ray_head, tmp_path):
    return replace(
        settings,
        backend="ray",
        ray_address=ray_head.dashboard,
        # One namespace per test: the head outlives each test's database, whose job ids restart at 1.
        ray_namespace=f"t{time.monotonic_ns() % 10**12}",
        ray_shared_dir=tmp_path / "shared-artifacts",
        poll_interval=0.3,
    )


def _events(store, job_id: int, kind: str) -> list[dict]:
    return [e.data for e in store.events_since(0, job_id=job_id) if e.type == kind]


def test_tiny_train_then_eval_export_and_deploy_of_it_run_as_ray_jobs(ray_settings, store):
    runtime = Runtime(ray_settings, store=store).start(web=False)
    try:
        train = runtime.queue.submit_train(preset="tiny", requester=Requester(user="U1"))
        done = wait_for(store, train.id, FINAL, timeout=300)
        log = Path(done.log_path).read_text()
        assert done.state == "succeeded", f"{done.error}\n{log[-3000:]}"
        assert done.handle["backend"] == "ray" and done.handle["submission_id"].endswith(f"-{train.id}-a1")
        steps = [p["step"] for p in _events(store, train.id, "progress") if p["eval_loss"] is None]
        assert steps == sorted(set(steps)) and steps[-1] == done.progress["total"]  # each step once
        assert done.metrics["train_loss"] > 0
        plots = _events(store, train.id, "plot")
        assert plots and plots[-1]["final"] and store.get_file(plots[-1]["file"])[:4] == b"\x89PNG"
        result = _events(store, train.id, "result")
        assert len(result) == 1 and result[0]["metrics"]["train_loss"] == done.metrics["train_loss"]
        adapter = done.artifacts["remote"]["adapter"]
        assert (ray_settings.ray_shared_dir / adapter["key"] / "adapter_model.safetensors").exists()
        assert "Welcome to LLaMA Factory" in log or "llamafactory" in log.lower()

        evaluation = runtime.queue.submit_eval(train.id, requester=Requester(user="U1"))
        export = runtime.queue.submit_export(train.id, requester=Requester(user="U1"))
        evaluated = wait_for(store, evaluation.id, FINAL, timeout=300)
        assert evaluated.state == "succeeded", Path(evaluated.log_path).read_text()[-3000:]
        assert "rouge-l" in evaluated.metrics and len(evaluated.artifacts["samples"]) == 3
        assert "predictions" in evaluated.artifacts["remote"]
        exported = wait_for(store, export.id, FINAL, timeout=300)
        assert exported.state == "succeeded", Path(exported.log_path).read_text()[-3000:]
        model = exported.artifacts["remote"]["model"]
        assert (ray_settings.ray_shared_dir / model["key"] / "model.safetensors").exists()
        assert exported.metrics["size_bytes"] == model["size"]

        # Deployed, the API server runs as a Ray job on a node and publishes its address.
        deployment = runtime.queue.submit_deploy(train.id, requester=Requester(user="U1"))
        serving = wait_for(store, deployment.id, ("serving", *FINAL), timeout=300)
        assert serving.state == "serving", Path(serving.log_path).read_text()[-3000:]
        assert serving.url.endswith(f":{serving.port}/v1") and "127.0.0.1" not in serving.url
        answer = runtime.chat(train.id, [{"role": "user", "content": "hello"}], max_tokens=4)
        assert isinstance(answer, str)
        runtime.queue.undeploy(deployment.id, by="U1")
        stopped = wait_for(store, deployment.id, FINAL, timeout=120)
        assert stopped.state == "stopped"
        ray_job = runtime.worker.backend.cluster.find(stopped.handle["submission_id"])
        assert ray_job.finished
    finally:
        runtime.stop()


def test_eight_gpus_are_refused_up_front_with_the_clusters_real_capacity(ray_settings, store):
    queue = JobQueue(ray_settings, store)
    with pytest.raises(UserError) as err:
        queue.submit_train(preset="tiny", pairs={"gpus": "8"})
    assert "8 GPUs" in err.value.text() and "0 GPUs and 24 CPUs in all" in err.value.text()
    with pytest.raises(UserError) as err:
        queue.submit_train(preset="tiny", pairs={"workers": "3"})  # 3 x 10 CPUs + its driver's one
    assert "31 CPUs" in err.value.text() and "24 CPUs in all" in err.value.text()
    assert store.list_jobs() == []


FAKE = Path(__file__).parent / "fakes" / "llamafactory_cli.py"


def _fake(ray_settings, **env):
    """The stand-in CLI (tests/fakes) as the nodes' llamafactory-cli: process handling, not training."""
    return replace(
        ray_settings,
        ray_cli=f"{sys.executable} {FAKE}",
        job_env={"FAKE_STEPS": "5", "FAKE_STEP_SECONDS": "0.1", **env},
    )


def _node_processes(sid: str) -> list:
    """The Ray job's processes on this node: the command (it runs in the job's run folder) and
    the node wrapper above it."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        if (proc.info.get("cwd") or "").endswith(f"/{sid}"):
            parent = proc.parent()
            if parent is not None and "runners.backends.ray.node" in " ".join(parent.cmdline()):
                found.append(parent)
            found.append(proc)
    return found


def test_cancel_stops_the_ray_job(ray_settings, store):
    s = _fake(ray_settings, FAKE_STEPS="600", FAKE_STEP_SECONDS="0.1")
    runtime = Runtime(s, store=store).start(web=False)
    try:
        job = runtime.queue.submit_train(preset="tiny", requester=Requester(user="U1"))
        wait_until(lambda: (store.get(job.id).progress.get("step") or 0) >= 2, 120, what="progress")
        runtime.queue.cancel(job.id, by="U1")
        done = wait_for(store, job.id, FINAL, timeout=120)
    finally:
        runtime.stop()
    assert done.state == "cancelled", done.error
    status = runtime.worker.backend.cluster.find(done.handle["submission_id"])
    assert status.state in ("STOPPED", "FAILED") and status.finished
    assert not _node_processes(done.handle["submission_id"])


def test_a_restarted_runner_reattaches_to_the_ray_job_and_posts_nothing_twice(ray_settings, store):
    s = _fake(ray_settings, FAKE_STEPS="30", FAKE_STEP_SECONDS="0.25")
    queue = JobQueue(s, store)
    job = queue.submit_train(preset="tiny", requester=Requester(user="U1"))
    first = Worker(s, store)
    first.start()
    wait_until(lambda: (store.get(job.id).progress.get("step") or 0) >= 3, 120, what="progress")
    first.stop()  # the runner goes down; the Ray job goes on
    sid = store.get(job.id).handle["submission_id"]
    assert first.backend.cluster.find(sid).state == "RUNNING"

    second = Worker(s, Store(store.url))
    second.start()
    try:
        assert job.id in second.running
        done = wait_for(store, job.id, FINAL, timeout=120)
    finally:
        second.stop()
    assert done.state == "succeeded", done.error
    assert done.runner_id == second.runner_id
    steps = [e["step"] for e in _events(store, job.id, "progress")]
    assert steps == list(range(1, 31))  # none lost, none posted twice
    assert len(_events(store, job.id, "reattached")) == 1
    assert len(_events(store, job.id, "result")) == 1
    assert [e["state"] for e in _events(store, job.id, "state")] == ["queued", "running", "succeeded"]
    log = Path(done.log_path).read_text()
    assert log.count("fake llamafactory-cli train") == 1  # one Ray job, its log read once


def test_a_ray_job_whose_processes_die_fails_with_rays_reason(ray_settings, store):
    s = _fake(ray_settings, FAKE_STEPS="600", FAKE_STEP_SECONDS="0.1")
    runtime = Runtime(s, store=store).start(web=False)
    try:
        job = runtime.queue.submit_train(preset="tiny", requester=Requester(user="U1"))
        wait_until(lambda: (store.get(job.id).progress.get("step") or 0) >= 2, 120, what="progress")
        sid = store.get(job.id).handle["submission_id"]
        procs = _node_processes(sid)
        assert procs
        for proc in procs:  # the node is lost: wrapper and command die at once, nothing reported
            proc.kill()
        done = wait_for(store, job.id, FINAL, timeout=120)
    finally:
        runtime.stop()
    assert done.state == "failed"
    log = Path(done.log_path).read_text()
    assert done.error.startswith(f"The Ray job {sid} failed: "), f"{done.error}\n{log[-2000:]}"
    assert "resume" in (done.advice or "")  # its checkpoints are in the artifact store

    # Resumed, the next attempt (a new Ray job) starts from the last checkpoint the store has.
    runtime = Runtime(s, store=store).start(web=False)
    try:
        resumed = runtime.queue.resume(job.id, by="U1")
        checkpoint = Path(resumed.args["resume_from_checkpoint"]).name
        assert checkpoint.startswith("checkpoint-")
        log_path = Path(done.log_path)
        wait_until(lambda: "Resuming training from" in log_path.read_text(), 120, what="the resumed run")
        runtime.queue.cancel(job.id, by="U1")
        wait_for(store, job.id, FINAL, timeout=120)
    finally:
        runtime.stop()
    assert store.get(job.id).handle["submission_id"] == sid.replace("-a1", "-a2")
    resumed_from = log_path.read_text().split("Resuming training from ", 1)[1].split()[0].rstrip(".")
    # The node's copy of the checkpoint, fetched from the artifact store (not the runner's path).
    assert resumed_from.endswith(f"/inputs/resume_from_checkpoint/{checkpoint}")


def test_workers_2_trains_through_llamafactorys_ray_trainer_on_two_cpu_workers(ray_settings, store):
    runtime = Runtime(ray_settings, store=store).start(web=False)
    try:
        pairs = {"workers": "2"}
        job = runtime.queue.submit_train(preset="tiny", pairs=pairs, requester=Requester(user="U1"))
        assert job.spec["workers"] == 2
        done = wait_for(store, job.id, FINAL, timeout=400)
    finally:
        runtime.stop()
    log = Path(done.log_path).read_text()
    assert done.state == "succeeded", log[-4000:]
    assert "Using ray.remote mode with 2 workers" in log
    # Both ranks ran (their output reaches the job's log through Ray), in one gloo process group.
    assert "Process rank: 0, world size: 2" in log and "Process rank: 1, world size: 2" in log
    steps = [p["step"] for p in _events(store, job.id, "progress") if p["eval_loss"] is None]
    assert steps and steps[-1] == done.progress["total"]
    assert done.metrics["train_loss"] > 0 and "adapter" in done.artifacts["remote"]
