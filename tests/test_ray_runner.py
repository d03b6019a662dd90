"""tunebot's runner with TUNEBOT_BACKEND=ray against the test session's real Ray head: the same
jobs, events and results as with the local backend, the processes run as Ray jobs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from runners.errors import UserError
from runners.queue import JobQueue, Requester
from runners.runtime import Runtime
from runners.worker import wait_for

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


def test_tiny_train_then_eval_and_export_of_it_run_as_ray_jobs(ray_settings, store):
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
        assert evaluated.state == "succeeded", f"{evaluated.error}\n{Path(evaluated.log_path).read_text()[-3000:]}"
        assert "rouge-l" in evaluated.metrics and len(evaluated.artifacts["samples"]) == 3
        assert "predictions" in evaluated.artifacts["remote"]
        exported = wait_for(store, export.id, FINAL, timeout=300)
        assert exported.state == "succeeded", f"{exported.error}\n{Path(exported.log_path).read_text()[-3000:]}"
        model = exported.artifacts["remote"]["model"]
        assert (ray_settings.ray_shared_dir / model["key"] / "model.safetensors").exists()
        assert exported.metrics["size_bytes"] == model["size"]
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
