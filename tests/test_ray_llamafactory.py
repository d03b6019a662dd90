"""Real LLaMA-Factory runs as Ray jobs on the test session's Ray head: the job folder Ray carries,
the node wrapper's reports, and the runner-side mirror that turns them back into a job folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runners.backends.ray_cluster import RayCluster, submission_id
from runners.backends.ray_job import Mirror, stage, store_spec
from runners.progress import read_trainer_log
from runners.queue import JobQueue, Requester
from runners.recipes import last_checkpoint

pytestmark = pytest.mark.ray


@pytest.fixture
def db_url(tmp_path) -> str:
    """One engine is enough here: the store is not what these tests are about, and Ray runs are slow."""
    return f"sqlite:///{tmp_path / 'tunebot.db'}"


def _run(cluster: RayCluster, staged, job_id: int, work: Path, timeout: float = 400.0):
    sid = submission_id(cluster.namespace, job_id, 1)
    handle = cluster.submit(
        sid, staged.folder, num_cpus=staged.num_cpus, num_gpus=staged.num_gpus, env={}, metadata={}
    )
    mirror = Mirror(work, work / "job.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.status(handle)
        chunk = cluster.read_log(handle)
        mirror.apply(chunk.text, chunk.events)
        if status.finished:
            chunk = cluster.read_log(handle)
            mirror.apply(chunk.text, chunk.events)
            return status, mirror
        time.sleep(0.5)
    cluster.stop(handle)
    raise AssertionError(f"{sid} did not finish:\n{(work / 'job.log').read_text()[-3000:]}")


def _tiny_job(settings, store, **pairs):
    queue = JobQueue(settings, store)
    return queue.submit_train(preset="tiny", pairs=pairs, requester=Requester(user="U1"))


def test_tiny_train_as_a_ray_job_reports_progress_and_stores_its_adapter(ray_head, settings, store, tmp_path):
    job = _tiny_job(settings, store, save_steps="4")
    shared = tmp_path / "shared-artifacts"
    work = tmp_path / "runner-side"
    staged = stage(
        job_id=job.id, attempt=1, kind="train", args=job.args, work_dir=tmp_path / "submit",
        command=["llamafactory-cli", "train"], store=store_spec(None, settings.data_dir, shared),
    )  # fmt: skip
    cluster = RayCluster(ray_head.dashboard, namespace=f"lf{int(time.time())}")
    status, mirror = _run(cluster, staged, job.id, work)
    log = (work / "job.log").read_text()
    assert status.state == "SUCCEEDED", log[-3000:]
    points = read_trainer_log(work / "output" / "trainer_log.jsonl")
    assert points and points[-1].step == points[-1].total and points[0].loss is not None
    assert json.loads((work / "output" / "train_results.json").read_text())["train_loss"] > 0
    assert (work / "output" / "adapter_config.json").exists()
    remote = mirror.remote()
    assert remote["exit_code"] == 0
    adapter = remote["uploads"]["adapter"]
    assert (shared / adapter["key"] / "adapter_model.safetensors").exists()
    # Its checkpoint went to the store too, and `resume` finds it in the runner-side folder.
    checkpoint = last_checkpoint(work / "output")
    assert checkpoint is not None and checkpoint.name in remote["checkpoints"]
    assert (shared / remote["checkpoints"][checkpoint.name]["key"] / "trainer_state.json").exists()


def test_two_cpu_workers_train_through_llamafactorys_ray_trainer(ray_head, settings, store, tmp_path):
    job = _tiny_job(settings, store)
    work = tmp_path / "runner-side"
    staged = stage(
        job_id=job.id, attempt=1, kind="train", args=job.args, work_dir=tmp_path / "submit",
        command=["llamafactory-cli", "train"], store=store_spec(None, settings.data_dir, tmp_path / "shared"),
        workers=2,
    )  # fmt: skip
    cluster = RayCluster(ray_head.dashboard, namespace=f"w{int(time.time())}")
    status, mirror = _run(cluster, staged, job.id, work)
    log = (work / "job.log").read_text()
    assert status.state == "SUCCEEDED", log[-4000:]
    assert "Using ray.remote mode with 2 workers" in log
    # Both ranks ran (their output reaches the job's log through Ray), in one gloo process group.
    assert "Process rank: 0, world size: 2" in log and "Process rank: 1, world size: 2" in log
    points = read_trainer_log(work / "output" / "trainer_log.jsonl")
    assert points and points[-1].step == points[-1].total
    assert mirror.remote()["uploads"]["adapter"]["files"] >= 2
