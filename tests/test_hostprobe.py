"""The host probe: how fast a runner's host issues GPU work, which scales eager estimates from
defaults until the runner's own jobs have shown its speed (runners/speed/hostprobe.py)."""

from __future__ import annotations

import sys
import threading

import pytest

from runners.hardware import Gpu, Hardware
from runners.job import Job, JobState
from runners.speed import estimate as eta
from runners.speed.hostprobe import probe_host
from runners.worker import estimates as worker_estimates
from runners.worker.estimates import Estimates

PARAMS = eta.REFERENCE_PARAMS
H200 = Hardware("gpuhost", (Gpu("0", "NVIDIA H200", 143_771, 9.0),), 16)


def test_the_probe_times_a_small_models_steps_in_a_child_process():
    ms = probe_host(None, rounds=3, steps=10)  # on the CPU: the script itself, end to end
    assert ms is not None and 0 < ms < 1000


def test_a_probe_that_cannot_run_or_prints_nonsense_gives_no_figure(tmp_path):
    assert probe_host(None, python=str(tmp_path / "no-python")) is None
    liar = tmp_path / "liar"
    liar.write_text("#!/bin/sh\necho '{\"ms\": -3}'\n")
    liar.chmod(0o755)
    assert probe_host(None, python=str(liar)) is None
    mute = tmp_path / "mute"
    mute.write_text("#!/bin/sh\necho nothing\n")
    mute.chmod(0o755)
    assert probe_host(None, python=str(mute)) is None
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    assert probe_host(None, python=str(slow), timeout=0.5) is None


@pytest.fixture
def reference(monkeypatch):
    monkeypatch.setitem(eta.PROBE_REFERENCE_MS, "H200", 2.0)
    return 2.0


def _estimate(table, recipe="seed-cli", compiled=False):
    return eta.estimate(table, tokens=100_000, params=PARAMS, gpu_name="NVIDIA H200", recipe=recipe,
                        compiled=compiled)


def test_a_slow_hosts_probe_slows_its_eager_estimates_until_a_job_has_shown_its_speed(reference):
    default = eta.DEFAULT_CALIBRATION["H200|seed-cli|1"]
    plain = _estimate({})
    assert plain.basis == "default"
    assert plain.tokens_per_s == pytest.approx(default["param_tokens_per_s"] / PARAMS)

    table = eta.record_probe({}, "H200", 2.5)  # 1.25x the reference's time: 0.8x its speed
    probed = _estimate(table)
    assert probed.basis == "probe"
    assert probed.tokens_per_s == pytest.approx(0.8 * plain.tokens_per_s)
    assert probed.startup_s == pytest.approx(default["startup_s"] / 0.8)
    assert probed.seconds > plain.seconds

    # a compiled recipe is bound by the GPU: the probe says nothing of it
    fast = _estimate(table, recipe="fast", compiled=True)
    assert fast.basis == "default"
    fast_default = eta.DEFAULT_CALIBRATION["H200|fast|1"]["param_tokens_per_s"]
    assert fast.tokens_per_s == pytest.approx(fast_default / PARAMS)

    # a finished job of another recipe teaches the host factor, which wins over the probe
    seed = eta.DEFAULT_CALIBRATION["H200|seed|1"]
    learned = eta.record_host(table, "H200", False, "H200|seed|1",
                              tokens_per_s=0.7 * seed["param_tokens_per_s"] / PARAMS, params=PARAMS,
                              startup_s=None)
    from_jobs = _estimate(learned)
    assert from_jobs.basis == "host"
    assert from_jobs.tokens_per_s == pytest.approx(0.7 * plain.tokens_per_s)
    # and the recipe's own job replaces the default altogether
    own = eta.refine(learned, "H200|seed-cli|1", tokens_per_s=1234.0, params=PARAMS, startup_s=50.0)
    mine = _estimate(own)
    assert mine.basis == "runner" and mine.tokens_per_s == pytest.approx(1234.0)


def test_a_probe_without_a_reference_or_out_of_reason_is_held(monkeypatch, reference):
    assert _estimate(eta.record_probe({}, "H100", 9.0)).basis == "default"  # another card's probe
    monkeypatch.delitem(eta.PROBE_REFERENCE_MS, "H200")
    assert _estimate(eta.record_probe({}, "H200", 9.0)).basis == "default"  # no reference for it
    monkeypatch.setitem(eta.PROBE_REFERENCE_MS, "H200", 2.0)
    assert eta.probe_factor(eta.record_probe({}, "H200", 2e-6), "H200") == eta.HOST_FACTOR_RANGE[1]
    assert eta.probe_factor(eta.record_probe({}, "H200", 1e6), "H200") == eta.HOST_FACTOR_RANGE[0]
    for bad in (None, 0.0, -1.0, float("nan"), float("inf")):
        assert eta.record_probe({"x": {"ms": 1.0}}, "H200", bad) == {"x": {"ms": 1.0}}


def test_the_probe_survives_the_tables_save_and_load(tmp_path, reference):
    path = tmp_path / "cal.json"
    table = eta.record_probe(eta.record_probe({}, "H200", 3.0), "H200", 2.5)
    assert table[eta.probe_key("H200")] == {"ms": 2.5, "runs": 2}
    eta.save_table(path, {**table, "probe|H100": {"ms": "fast"}})
    loaded = eta.load_table(path)
    assert loaded == table  # the latest probe kept; a broken entry dropped
    assert _estimate(loaded).basis == "probe"


def _estimates(settings, store, hardware=H200, host="gpuhost"):
    return Estimates(settings, store, hardware, host=host, slots=[g.index for g in hardware.gpus] or ["cpu0"],
                     lock=threading.RLock())


def test_a_runner_probes_its_gpu_once_at_start_and_a_launch_waits_for_it(settings, store, monkeypatch):
    calls = []
    gate = threading.Event()

    def fake_probe(index, **kw):
        calls.append(index)
        gate.wait(10)
        return 2.5

    monkeypatch.setattr(worker_estimates, "probe_host", fake_probe)
    est = _estimates(settings, store)
    try:
        est.probe_host()
        threading.Timer(0.3, gate.set).start()
        est._await_probe()  # what a launch does first: returns once the probe has written
        table = eta.load_table(est.calibration_path())
        assert table[eta.probe_key("H200")]["ms"] == 2.5
        assert calls == ["0"]
        est._await_probe()  # nothing under way: returns at once
    finally:
        est.shutdown()


def test_no_probe_without_a_gpu_or_beside_a_running_job(settings, store, monkeypatch):
    calls = []
    monkeypatch.setattr(worker_estimates, "probe_host", lambda index, **kw: calls.append(index) or 2.5)
    cpu = _estimates(settings, store, Hardware("cpuhost", (), 2), host="cpuhost")
    cpu.probe_host()
    cpu._await_probe()
    cpu.shutdown()
    assert calls == [] and not cpu.calibration_path().exists()

    job, _ = store.add_job(Job(kind="train", model="m"))
    store.update(job.id, state=JobState.RUNNING.value, host="gpuhost")
    busy = _estimates(settings, store)
    busy.probe_host()
    busy._await_probe()
    busy.shutdown()
    assert calls == [] and eta.probe_key("H200") not in eta.load_table(busy.calibration_path())


def test_a_failed_probe_leaves_the_table_alone(settings, store, monkeypatch):
    monkeypatch.setattr(worker_estimates, "probe_host", lambda index, **kw: None)
    est = _estimates(settings, store)
    before = {"H200|seed|1": {"param_tokens_per_s": 1e13, "startup_s": 30.0}}
    eta.save_table(est.calibration_path(), before)
    est.probe_host()
    est._await_probe()
    est.shutdown()
    assert eta.load_table(est.calibration_path()) == before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
