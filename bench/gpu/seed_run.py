"""The `seed` preset through tunebot's own engine on a GPU host, end to end, timed.

On the lent H100 (see docs/benchmarks.md for how it is called): a Llama-3-8B-architecture model
with random weights is built on the GPU, then tunebot's queue and runner do what a Slack user
would: train (seed preset, 30 steps), eval on 32 samples (batch 32, 64 new tokens), export
(merge on the GPU), deploy (`llamafactory-cli api`) and one chat request (32 tokens), undeploy.
Figures go to $OUT/seed_run.json after every phase, so a run cut short still reports.

    python3 bench/gpu/seed_run.py [train eval export deploy]     # phases, default all
    BENCH_SHAPE=tiny BENCH_STEPS=4 python3 bench/gpu/seed_run.py  # the same path on a CPU
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.smi import GpuWatch, card  # noqa: E402
from runners import datasets  # noqa: E402
from runners.demo.data import write_demo_datasets  # noqa: E402
from runners.demo.tinymodel import ensure_model  # noqa: E402
from runners.hardware import detect  # noqa: E402
from runners.job import FINAL_STATES  # noqa: E402
from runners.runtime import Runtime  # noqa: E402
from runners.settings import Settings  # noqa: E402
from runners.worker import wait_for  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/seed-run-out")
SHAPE = os.environ.get("BENCH_SHAPE", "llama3-8b")
STEPS = os.environ.get("BENCH_STEPS", "30")
results: dict = {"shape": SHAPE, "phases": {}}


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "seed_run.json").write_text(json.dumps(results, indent=1, default=str))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def bench_datasets(data_dir: Path) -> None:
    """The demo rows, plus longer ones made of them, so a step sees realistic sequence lengths."""
    files = write_demo_datasets(data_dir / "cache" / "bench-src")
    rows = json.loads(Path(files["train"]).read_text(encoding="utf-8"))
    long_rows = []
    for i in range(256):
        chunk = [rows[(i * 7 + k) % len(rows)] for k in range(12)]
        long_rows.append(
            {
                "instruction": "Answer every question below, one answer per line.\n"
                + "\n".join(r["instruction"] + " " + r.get("input", "") for r in chunk),
                "input": "",
                "output": "\n".join(r["output"] for r in chunk),
            }
        )
    bench = data_dir / "cache" / "bench.json"
    bench.write_text(json.dumps(long_rows + rows, ensure_ascii=False), encoding="utf-8")
    datasets.add_dataset(data_dir, "bench", bench)
    datasets.add_dataset(data_dir, "bench-eval", Path(files["eval"]))


def run_phase(runtime: Runtime, name: str, submit, until=FINAL_STATES, timeout: float = 1500.0):
    log(f"{name}: submitting")
    started = time.time()
    with GpuWatch() as gpu:
        job = submit()
        log(f"{name}: job #{job.id} queued; args written to {job.work_dir}/config.yaml")
        job = wait_for(runtime.store, job.id, until, timeout=timeout, poll=0.5)
    wall = time.time() - started
    phase = {
        "job": job.id,
        "state": job.state,
        "wall_s": round(wall, 1),
        "process_s": round(job.duration() or 0, 1),
        "gpu_peak_mib": gpu.peak_mib,
        "metrics": job.metrics,
        "progress": job.progress,
    }
    if job.error:
        phase["error"] = job.error
        phase["advice"] = job.advice
        phase["log_tail"] = job.log_tail
    results["phases"][name] = phase
    save()
    log(f"{name}: {job.state} in {wall:.1f}s (peak GPU {gpu.peak_mib} MiB)")
    if job.state not in ("succeeded", "serving"):
        shutil.copy(job.log_path, OUT / f"{name}.log")
    return job


def main(phases: list[str]) -> int:
    data = Path(os.environ.get("TUNEBOT_DATA_DIR") or "/tmp/tunebot-gpu")
    settings = Settings(
        data_dir=data, poll_interval=0.5, web_port=0, deploy_timeout=1200.0, cancel_grace=20.0
    )
    hw = detect()
    results["hardware"] = hw.describe()
    try:
        import llamafactory
        import torch
        import transformers

        results["versions"] = {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "llamafactory": llamafactory.__version__,
        }
    except Exception as exc:  # the figures still matter without the versions
        results["versions"] = {"error": str(exc)}
    gpu = card()
    if gpu:
        results["nvidia_smi"] = gpu
    save()

    started = time.time()
    model = ensure_model(settings.models_dir, shape=SHAPE)
    results["model_build_s"] = round(time.time() - started, 1)
    results["model"] = str(model)
    log(f"model {SHAPE} ready in {results['model_build_s']}s")
    bench_datasets(data)
    save()

    runtime = Runtime(settings).start()
    queue = runtime.queue
    try:
        train = run_phase(
            runtime,
            "train",
            lambda: queue.submit_train(
                preset="seed",
                pairs={
                    "model": str(model),
                    "dataset": "bench",
                    "steps": STEPS,
                    "logging_steps": "1",
                    "save_steps": "1000",
                    "compute": "bf16" if hw.supports_bf16 else "fp32",
                },
            ),
        )
        if train.state != "succeeded":
            return 1
        shutil.copy(train.artifacts["plot"], OUT / "loss.png")
        if "eval" in phases:
            run_phase(
                runtime,
                "eval",
                lambda: queue.submit_eval(
                    train.id,
                    pairs={"dataset": "bench-eval", "samples": "32", "batch": "32", "max_new_tokens": "64"},
                ),
            )
        source = train.id
        if "export" in phases:
            export = run_phase(runtime, "export", lambda: queue.submit_export(train.id))
            if export.state == "succeeded":
                source = export.id
        if "deploy" in phases:
            deployment = run_phase(
                runtime, "deploy", lambda: queue.submit_deploy(source), until=("serving", *FINAL_STATES)
            )
            if deployment.state == "serving":
                t = time.time()
                answer = runtime.chat(
                    deployment.id, [{"role": "user", "content": "What is 2 + 3?"}], max_tokens=32
                )
                results["phases"]["deploy"]["request_s"] = round(time.time() - t, 2)
                results["phases"]["deploy"]["answer_chars"] = len(answer)
                queue.undeploy(deployment.id)
                stopped = wait_for(runtime.store, deployment.id, FINAL_STATES, timeout=120)
                results["phases"]["deploy"]["final_state"] = stopped.state
                save()
        results["total_s"] = round(time.time() - started, 1)
        save()
        return 0
    finally:
        runtime.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["train", "eval", "export", "deploy"]))
