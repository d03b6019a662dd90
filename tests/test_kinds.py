"""A job kind is declared once, in runners/kinds/: a kind registered there runs through the worker
with no other change to the engine (here a made-up `quantize`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runners.hardware import Hardware
from runners.job import Job
from runners.kinds import Kind, MissingOutput, kind_of, register, unregister
from runners.worker import Worker, wait_for

CPU = Hardware(host="testhost", gpus=(), cpu_count=2)
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")
QUANTIZE = """
import pathlib, sys, yaml
args = yaml.safe_load(open(sys.argv[1]))
out = pathlib.Path("output"); out.mkdir(exist_ok=True)
if args.get("bits") != 3:
    (out / "model.q4").write_bytes(b"q" * int(args["bits"]))
print("quantized to", args["bits"], "bits")
"""


def _argv(job: Job, config: Path, settings) -> list[str]:
    return [sys.executable, "-c", QUANTIZE, str(config)]


def _collect(job: Job, folder: Path) -> dict:
    model = folder / "output" / "model.q4"
    if not model.exists():
        raise MissingOutput("The quantization ended without a model.")
    return {"artifacts": {"model": str(model)}, "metrics": {"size_bytes": model.stat().st_size}}


@pytest.fixture
def quantize():
    kind = register(Kind("quantize", argv=_argv, collect=_collect))
    yield kind
    unregister("quantize")


@pytest.mark.parametrize(("bits", "state"), [(4, "succeeded"), (3, "failed")])
def test_a_kind_registered_in_kinds_runs_through_the_worker(settings, store, quantize, bits, state, tmp_path):
    assert kind_of("quantize") is quantize
    work = tmp_path / "job"
    job, _ = store.add_job(Job(kind="quantize", model="m", args={"bits": bits}, work_dir=str(work),
                               log_path=str(work / "job.log")))
    worker = Worker(settings, store, hardware=CPU)
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == state, done.error
    if state == "succeeded":
        assert done.metrics == {"size_bytes": 4} and done.artifacts["model"].endswith("model.q4")
        kinds = [e.type for e in store.events_since(0, job_id=job.id)]
        assert kinds == ["state", "state", "started", "state", "result"]
    else:
        assert done.error == "The quantization ended without a model."


def test_an_unknown_kind_is_a_plain_error():
    with pytest.raises(Exception, match="does not know jobs of kind 'nope'"):
        kind_of("nope")


def test_a_finished_jobs_outputs_are_read_where_its_backend_hands_them_over(
    settings, store, quantize, tmp_path
):
    """The worker collects from the backend's `outputs` folder, not from the job folder itself (a
    remote backend copies what the job wrote to the runner first)."""
    import shutil

    from runners.backends import LocalBackend

    fetched = tmp_path / "fetched"

    class CopyingBackend(LocalBackend):
        def outputs(self, handle, work_dir):
            shutil.copytree(work_dir / "output", fetched / "output", dirs_exist_ok=True)
            return fetched

    work = tmp_path / "job"
    job, _ = store.add_job(Job(kind="quantize", model="m", args={"bits": 4}, work_dir=str(work),
                               log_path=str(work / "job.log")))
    worker = Worker(settings, store, hardware=CPU, backend=CopyingBackend(["cpu0"]))
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    assert done.artifacts["model"] == str(fetched / "output" / "model.q4")
