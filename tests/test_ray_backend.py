"""The Ray backend against a real Ray head on this machine (tests/ray_head.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from runners.backends.ray import logline
from runners.backends.ray.cluster import RayCluster, RayHandle, submission_id
from runners.errors import UserError
from tests.ray_head import HEAD_CPUS

pytestmark = pytest.mark.ray

FAKE_TRAIN = Path(__file__).parent / "data" / "fake_train.py"


def _folder(tmp_path: Path, job: int, steps: int, pause: float, store: Path) -> Path:
    folder = tmp_path / f"job{job}"
    folder.mkdir()
    shutil.copy(FAKE_TRAIN, folder / "fake_train.py")
    spec = {
        "job": job,
        "attempt": 1,
        "kind": "train",
        "command": ["python", "fake_train.py", str(steps), str(pause)],
        "env": {},
        "store": {"backend": "local", "root": str(store)},
        "inputs": {},
        "uploads": [{"name": "adapter", "path": "output", "dir": True}],
        "mirror": ["output/train_results.json", "output/adapter_config.json"],
        "checkpoints": "output",
    }
    (folder / "tunebot-node.json").write_text(json.dumps(spec))
    return folder


def _follow(cluster: RayCluster, handle: RayHandle, timeout: float = 120.0, until=None):
    events, text = [], ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.status(handle)
        chunk = cluster.read_log(handle)
        events += chunk.events
        text += chunk.text
        if until is not None and until(events):
            return status, events, text
        if status.finished:
            chunk = cluster.read_log(handle)
            return status, events + chunk.events, text + chunk.text
        time.sleep(0.3)
    raise AssertionError(f"Ray job {handle.submission_id} still running after {timeout} s:\n{text[-2000:]}")


def test_capacity_is_the_heads_real_resources(ray_head):
    cap = RayCluster(ray_head.dashboard).capacity()
    assert (cap.cpus, cap.gpus, cap.nodes) == (HEAD_CPUS, 0, 1)
    assert 0 <= cap.free_cpus <= HEAD_CPUS


def test_eight_gpus_are_refused_with_the_clusters_real_capacity(ray_head):
    with pytest.raises(UserError) as err:
        RayCluster(ray_head.dashboard).check_fits(cpus=1, gpus=8)
    text = err.value.text()
    assert "8 GPUs" in text and "0 GPUs and 24 CPUs in all" in text


def test_a_job_reports_progress_results_and_uploads_through_its_log(ray_head, tmp_path):
    cluster = RayCluster(ray_head.dashboard, namespace=f"t{int(time.time())}")
    store = tmp_path / "store"
    sid = submission_id(cluster.namespace, 1, 1)
    folder = _folder(tmp_path, 1, 4, 0.2, store)
    handle = cluster.submit(sid, folder, num_cpus=1, num_gpus=0, env={}, metadata={})
    status, events, text = _follow(cluster, handle)
    assert status.state == "SUCCEEDED", text
    steps = [e[1]["line"]["current_steps"] for e in events if e[0] == logline.TRAINER_LOG]
    assert steps == [1, 2, 3, 4]
    files = {e[1]["path"]: e[1]["data"] for e in events if e[0] == logline.FILE}
    assert json.loads(files["output/train_results.json"])["train_loss"] == 1.23
    upload = next(e[1] for e in events if e[0] == logline.UPLOAD)
    assert upload["record"]["key"] == "1/train/adapter"
    assert (store / "1/train/adapter/adapter_config.json").exists()
    assert events[-1] == (logline.EXIT, {"code": 0})
    assert "fake trainer done" in text and logline.PREFIX not in text


def test_submitting_the_same_attempt_again_follows_the_first_ray_job(ray_head, tmp_path):
    cluster = RayCluster(ray_head.dashboard, namespace=f"t{int(time.time())}")
    sid = submission_id(cluster.namespace, 2, 1)
    folder = _folder(tmp_path, 2, 2, 0.1, tmp_path / "s")
    first = cluster.submit(sid, folder, num_cpus=1, num_gpus=0, env={}, metadata={})
    again = cluster.submit(sid, tmp_path / "job2", num_cpus=1, num_gpus=0, env={}, metadata={})
    assert again.submission_id == first.submission_id
    jobs = [j for j in cluster.client.list_jobs() if j.submission_id == sid]
    assert len(jobs) == 1
    _follow(cluster, first)
