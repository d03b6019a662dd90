"""Multi-GPU paths through tunebot's engine, on a host with two or more GPUs.

1. `gpus=2` on one job: LLaMA-Factory's torchrun launcher (FORCE_TORCHRUN, NPROC_PER_NODE), one
   process per GPU, both ranks in the log.
2. Two one-GPU jobs at once: each gets its own GPU through CUDA_VISIBLE_DEVICES and its own slot
   lease; they run side by side.
3. The seed preset on the random Llama-3-8B with gpus=2 (DDP), 30 steps: tokens/s beside the
   one-GPU figure in docs/benchmarks.md (different call, so compare with care).

Figures go to $OUT/multi_gpu.json after every step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runners.demo.tinymodel import ensure_model  # noqa: E402
from runners.hardware import detect  # noqa: E402
from runners.job import FINAL_STATES  # noqa: E402
from runners.runtime import Runtime  # noqa: E402
from runners.settings import Settings  # noqa: E402
from runners.worker import wait_for  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/multi-gpu-out")
results: dict = {}


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "multi_gpu.json").write_text(json.dumps(results, indent=1, default=str))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def summary(job) -> dict:
    text = Path(job.log_path).read_text(errors="replace")
    return {
        "job": job.id,
        "state": job.state,
        "slots": job.slots,
        "wall_s": round(job.duration() or 0, 1),
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "metrics": job.metrics,
        "error": job.error,
        "torchrun": "torchrun" in text or "Initializing 2 distributed" in text or "world size: 2" in text,
        "world_size_2": "world size: 2" in text,
    }


def main() -> int:
    data = Path(os.environ.get("TUNEBOT_DATA_DIR") or "/tmp/tunebot-multi")
    settings = Settings(data_dir=data, poll_interval=0.5, web_port=0)
    hw = detect()
    results["hardware"] = hw.describe()
    save()
    runtime = Runtime(settings).start(web=False)
    queue, store = runtime.queue, runtime.store
    try:
        log("1. tiny model, gpus=2")
        job = queue.submit_train(preset="tiny", pairs={"gpus": "2", "compute": "bf16"})
        job = wait_for(store, job.id, FINAL_STATES, timeout=300)
        results["two_gpus_one_job"] = summary(job)
        save()
        log(f"   {job.state}: {results['two_gpus_one_job']}")

        log("2. two one-GPU jobs at once")
        a = queue.submit_train(preset="tiny", pairs={"compute": "bf16", "epochs": "16"})
        b = queue.submit_train(preset="tiny", pairs={"compute": "bf16", "epochs": "16"})
        a, b = (wait_for(store, j.id, FINAL_STATES, timeout=300) for j in (a, b))
        overlap = min(a.finished_at, b.finished_at) - max(a.started_at, b.started_at)
        results["two_jobs_side_by_side"] = {
            "a": summary(a),
            "b": summary(b),
            "overlap_s": round(overlap, 1),
            "distinct_gpus": set(a.slots).isdisjoint(b.slots),
        }
        save()
        log(f"   slots {a.slots} and {b.slots}, overlap {overlap:.1f}s")

        if os.environ.get("SKIP_8B") != "1":
            log("3. seed preset, llama3-8b, gpus=2, 30 steps")
            t = time.time()
            model = ensure_model(settings.models_dir, shape="llama3-8b")
            results["model_build_s"] = round(time.time() - t, 1)
            from bench.gpu.seed_run import bench_datasets

            bench_datasets(data)
            job = queue.submit_train(
                preset="seed",
                pairs={
                    "model": str(model),
                    "dataset": "bench",
                    "steps": "30",
                    "logging_steps": "1",
                    "save_steps": "1000",
                    "gpus": "2",
                },
            )
            job = wait_for(store, job.id, FINAL_STATES, timeout=600)
            results["seed_8b_two_gpus"] = summary(job)
            results["seed_8b_two_gpus"]["progress"] = job.progress
            save()
            log(f"   {job.state}: {job.metrics}")
        return 0
    finally:
        runtime.stop()


if __name__ == "__main__":
    sys.exit(main())
