"""The Ray backend's pure parts, without a cluster: the structured log lines, the mirror that
applies them to a job folder (the stream is the job's stdout: untrusted), capacity parsing, the
resources a request holds, Ray's reasons, and `workers=N` on the way in."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from runners.backends.ray import job_resources, logline, ray_reason
from runners.backends.ray.cluster import Capacity, parse_capacity, submission_id
from runners.backends.ray.job import REMOTE_NAME, Mirror, remote_input
from runners.errors import UserError
from runners.queue import JobQueue


def test_a_structured_line_survives_a_progress_bar_left_without_a_newline():
    line = "50%|#####     |\r" + logline.encode(logline.EXIT, code=3)
    assert logline.parse(line) == (logline.EXIT, {"code": 3})


@pytest.mark.parametrize(
    "line",
    ["plain output\n", "@@tunebot {not json\n", '@@tunebot {"t": "rm -rf"}\n', "@@tunebot [1, 2]\n"],
)
def test_anything_else_a_job_prints_is_plain_output(line):
    assert logline.parse(line) is None


def test_a_file_goes_in_pieces_and_comes_back_whole(tmp_path):
    text = "x" * (logline.MAX_CHUNK * 2 + 5)
    lines = logline.file_lines("output/big.json", text)
    assert len(lines) == 3 and all(len(line) < logline.MAX_CHUNK + 200 for line in lines)
    mirror = Mirror(tmp_path / "job", tmp_path / "job" / "job.log")
    mirror.apply("", [logline.parse(line) for line in lines], offset=123)
    assert (tmp_path / "job" / "output" / "big.json").read_text() == text
    assert mirror.offset() == 123


def test_the_mirror_keeps_what_the_stream_names_inside_the_job_folder(tmp_path):
    work = tmp_path / "job"
    mirror = Mirror(work, work / "job.log")
    hostile = [
        (logline.FILE, {"path": "../outside.txt", "data": "x", "offset": 0}),
        (logline.FILE, {"path": "/etc/passwd-copy", "data": "x", "offset": 0}),
        (logline.CHECKPOINT, {"name": "../../escape", "record": {"key": "1/checkpoint/x"}}),
    ]
    mirror.apply("", hostile)
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "escape").exists()
    assert list(work.iterdir()) == [] and not Path("/etc/passwd-copy").exists()
    assert "checkpoints" not in mirror.remote()


def test_the_mirror_rebuilds_trainer_log_checkpoints_uploads_and_the_exit(tmp_path):
    work = tmp_path / "job"
    mirror = Mirror(work, work / "job.log")
    record = {"key": "7/checkpoint/checkpoint-4", "location": "/s/7/checkpoint/checkpoint-4/"}
    mirror.apply(
        "LLaMA-Factory says hello\n",
        [
            (logline.TRAINER_LOG, {"line": {"current_steps": 1, "total_steps": 4, "loss": 2.5}}),
            (logline.FILE, {"path": "output/checkpoint-4/trainer_state.json", "data": "{}", "offset": 0}),
            (logline.CHECKPOINT, {"name": "checkpoint-4", "record": record}),
            (logline.UPLOAD, {"name": "adapter", "record": {"key": "7/train/adapter", "size": 10}}),
            (logline.EXIT, {"code": 0}),
        ],
    )
    assert json.loads((work / "output" / "trainer_log.jsonl").read_text())["loss"] == 2.5
    assert (work / "job.log").read_text() == "LLaMA-Factory says hello\n"
    remote = mirror.remote()
    assert remote["exit_code"] == 0 and remote["uploads"]["adapter"]["key"] == "7/train/adapter"
    # `resume` finds the checkpoint here and the next attempt fetches it from the store.
    assert remote_input(str(work / "output" / "checkpoint-4"), []) == record["key"]
    assert json.loads((work / "output" / "checkpoint-4" / REMOTE_NAME).read_text()) == record


def test_a_parent_jobs_output_maps_to_its_stored_copy():
    parent = {"adapter": "/data/jobs/3/output", "remote": {"adapter": {"key": "3/train/adapter"}}}
    assert remote_input("/data/jobs/3/output", [parent]) == "3/train/adapter"
    assert remote_input("/data/jobs/4/output", [parent]) is None


def test_capacity_counts_alive_nodes_and_what_is_in_use():
    nodes = {
        "data": {
            "summary": [
                {"raylet": {"state": "ALIVE", "resourcesTotal": {"CPU": 24.0, "GPU": 8.0}}},
                {"raylet": {"state": "ALIVE", "resourcesTotal": {"CPU": 16.0, "GPU": 4.0}}},
                {"raylet": {"state": "DEAD", "resourcesTotal": {"CPU": 99.0, "GPU": 99.0}}},
            ]
        }
    }
    usage = {"CPU": [3.0, 40.0], "GPU": [5.0, 12.0]}
    status = {"data": {"clusterStatus": {"loadMetricsReport": {"usage": usage}}}}
    cap = parse_capacity(nodes, status)
    assert (cap.nodes, cap.cpus, cap.gpus, cap.free_cpus, cap.free_gpus) == (2, 40.0, 12.0, 37.0, 7.0)
    assert parse_capacity(nodes, {}).free_gpus == 12.0  # no report yet: all free
    assert cap.describe() == "2 nodes, 12 GPUs and 40 CPUs in all (7 GPUs and 37 CPUs free now)"


def test_what_a_request_holds_on_a_gpu_and_on_a_cpu_cluster():
    gpu = Capacity(cpus=64, gpus=8, free_cpus=64, free_gpus=8, nodes=1)
    cpu = Capacity(cpus=24, gpus=0, free_cpus=24, free_gpus=0, nodes=1)
    assert job_resources(gpu, 1, 1) == (1.0, 1.0)
    assert job_resources(gpu, 4, 1) == (1.0, 4.0)
    assert job_resources(gpu, 1, 2) == (21.0, 2.0)  # LLaMA-Factory: 10 CPUs + 1 GPU a worker
    assert job_resources(cpu, 1, 1) == (1.0, 0.0)
    assert job_resources(cpu, 8, 1) == (1.0, 8.0)  # gpus=8 asks for GPUs, even here
    assert job_resources(cpu, 1, 2) == (21.0, 0.0)


def test_rays_reason_is_its_first_sentence():
    message = "Job entrypoint command failed with exit code 137, last available logs (truncated):\nKilled"
    assert ray_reason(message) == "Job entrypoint command failed with exit code 137"
    assert ray_reason(None) == "no reason given"


def test_submission_ids_are_per_attempt():
    assert submission_id("tunebot", 12, 1) == "tunebot-12-a1"
    assert submission_id("tunebot", 12, 2) != submission_id("tunebot", 12, 1)


@pytest.mark.parametrize("value", ["two", "0", "65", "-1"])
def test_workers_must_be_a_sensible_whole_number(settings, store, value):
    with pytest.raises(UserError) as err:
        JobQueue(settings, store).submit_train(preset="tiny", pairs={"workers": value})
    assert err.value.field == "workers"
    assert store.list_jobs() == []


def test_workers_on_the_local_backend_says_it_needs_ray(settings, store):
    with pytest.raises(UserError) as err:
        JobQueue(settings, store).submit_train(preset="tiny", pairs={"workers": "2"})
    assert "TUNEBOT_BACKEND=ray" in err.value.text()


def test_the_ray_backend_without_an_address_says_what_to_set(settings, store):
    with pytest.raises(UserError) as err:
        JobQueue(replace(settings, backend="ray"), store).submit_train(preset="tiny")
    assert "TUNEBOT_RAY_ADDRESS" in err.value.text()
