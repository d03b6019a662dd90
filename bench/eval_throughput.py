"""Eval throughput: LLaMA-Factory's WebUI predict defaults against tunebot's fast eval, through
tunebot's own engine (issue 9, item 5).

One call of at most 10 minutes on one GPU (docs/benchmarks.md has the command and the results):

  (a) a short LoRA fine-tune of the random-init Llama-3-8B (`fast` preset, eager, ~60 steps) so
      the generations are not noise;
  (c) tunebot's fast eval of that adapter: batch planned from the GPU's memory, eval set sorted
      by length, greedy, on BENCH_EVAL_SAMPLES (64) held-out rows;
  (b) the WebUI defaults (batch 2, 512 new tokens) but greedy, on the first BENCH_BASE_SAMPLES (16)
      of the same rows, in their own order (the runner's eval planning is switched off for it).
      It runs last and gets the time left: when cut short, its speed still comes from the
      predict progress bar in its log.

For each eval: samples/s and generated tokens/s (from predict_results.json's `predict_runtime`,
and over the job's wall time), peak card memory (nvidia-smi every 0.5 s), the batch, and
ROUGE-1/2/L and BLEU-4 of both on the same first 16 rows, scored again here the way
LLaMA-Factory scores (jieba + rouge-chinese, nltk BLEU-4 with smoothing method 3). Every phase has
a time limit that cancels its job and still records what it can; results go to $OUT/eval.json as
each phase ends; a markdown table at the end.

    source bench/gpu/setup.sh || exit 1; python3 bench/eval_throughput.py        # on the GPU
    BENCH_SHAPE=tiny BENCH_ROWS=64 OUT=/tmp/evb TUNEBOT_DATA_DIR=/tmp/evb-data \\
        python3 bench/eval_throughput.py                                          # CPU dry run

On a CPU the runner does not plan (nothing changes there); the dry run pretends the worker has an
H200, so the planned batch and the sorted set run end to end on the tiny model.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu.smi import GpuWatch  # noqa: E402
from bench.train_throughput import environment, log, make_dataset  # noqa: E402
from runners import datasets  # noqa: E402
from runners.demo.tinymodel import ensure_model  # noqa: E402
from runners.hardware import Gpu, Hardware, detect  # noqa: E402
from runners.job import FINAL_STATES  # noqa: E402
from runners.kinds import kind_of, register  # noqa: E402
from runners.runtime import Runtime  # noqa: E402
from runners.settings import Settings  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/eval-throughput-out")
DATA = Path(os.environ.get("TUNEBOT_DATA_DIR") or "/tmp/tb-evalbench")
SHAPE = os.environ.get("BENCH_SHAPE", "llama3-8b")
ROWS = int(os.environ.get("BENCH_ROWS", "1000"))  # training rows
EVAL_SAMPLES = int(os.environ.get("BENCH_EVAL_SAMPLES", "64"))
BASE_SAMPLES = int(os.environ.get("BENCH_BASE_SAMPLES", "16"))
TRAIN_STEPS = int(os.environ.get("BENCH_TRAIN_STEPS", "10" if SHAPE == "tiny" else "60"))
NEW_TOKENS = int(os.environ.get("BENCH_NEW_TOKENS", "512"))
# Seconds from the start of this script to the last result written; the device call's 600 s also
# cover setup.sh (~15 s on a fresh machine) and a cancelled job's last 20 s.
BUDGET = float(os.environ.get("BENCH_BUDGET_S", "540"))
# Each phase's own limit, and what is kept back for the phases after it.
LIMITS = {name: float(os.environ.get(f"BENCH_LIMIT_{name.upper()}", default))
          for name, default in (("train", 170), ("fast", 200), ("webui", 330))}
KEEP_FOR = {"train": 150.0 + 120.0, "fast": 120.0, "webui": 5.0}
RESULTS = OUT / "eval.json"
T0 = time.time()


def left() -> float:
    return BUDGET - (time.time() - T0)


def save(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(RESULTS)


# --- data --------------------------------------------------------------------------------------
def make_sets(model: Path) -> tuple[str, str]:
    """A training set of ROWS rows and a held-out eval set of the next EVAL_SAMPLES rows of the
    same synthetic distribution (one generator: the eval rows are never trained on)."""
    train_name, eval_name = f"evtrain{ROWS}", f"evheld{EVAL_SAMPLES}"
    known = {d.name for d in datasets.list_datasets(DATA)}
    if train_name in known and eval_name in known:
        return train_name, eval_name
    rows = json.loads(make_dataset(model, ROWS + EVAL_SAMPLES).read_text(encoding="utf-8"))
    folder = DATA / "cache"
    for name, part in ((train_name, rows[:ROWS]), (eval_name, rows[ROWS:])):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
        if name not in known:
            datasets.add_dataset(DATA, name, path)
    return train_name, eval_name


# --- scoring as LLaMA-Factory does (llamafactory/train/sft/metric.py, ComputeSimilarity) -------------
def score(pairs: list[tuple[str, str]]) -> dict[str, float]:
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    scores: dict[str, list[float]] = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in pairs:
        hypothesis, reference = list(jieba.cut(pred)), list(jieba.cut(label))
        if not " ".join(hypothesis).split() or not " ".join(reference).split():
            result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for key, value in result.items():
            scores[key].append(round(value["f"] * 100, 4))
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        scores["bleu-4"].append(round(bleu * 100, 4))
    return {k: round(sum(v) / len(v), 4) for k, v in scores.items() if v}


def read_predictions(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def progress_from_log(text: str) -> tuple[int, int, float] | None:
    """The predict progress bar's last state in a job log: (batches done, batches, seconds)."""
    found = None
    for match in re.finditer(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<", text):
        done, total = int(match.group(1)), int(match.group(2))
        seconds = int(match.group(3) or 0) * 3600 + int(match.group(4)) * 60 + int(match.group(5))
        if total > 0:
            found = (done, total, float(seconds))
    return found


# --- one job through the engine ----------------------------------------------------------------
def wait(runtime: Runtime, job_id: int, limit: float, name: str):
    started = time.time()
    cancelled = False
    while True:
        job = runtime.store.get(job_id)
        if job.state in FINAL_STATES:
            return job, cancelled
        if time.time() - started > limit and not cancelled:
            log(f"{name}: over its {limit:.0f}s limit, cancelling")
            runtime.queue.cancel(job_id, by="bench time limit")
            cancelled = True
        if cancelled and time.time() - started > limit + 20:
            return job, cancelled  # never stopped: report what there is
        time.sleep(0.3)


def phase_limit(name: str) -> float:
    return max(20.0, min(LIMITS[name], left() - KEEP_FOR[name]))


def train(runtime: Runtime, model: Path, dataset: str, compute: str) -> dict:
    pairs = {
        "model": str(model), "dataset": dataset, "steps": str(TRAIN_STEPS), "torch_compile": "false",
        "logging_steps": "5", "save_steps": "100000", "compute": compute,
    }
    limit = phase_limit("train")
    log(f"train: fast preset, {TRAIN_STEPS} steps, limit {limit:.0f}s")
    started = time.time()
    job = runtime.queue.submit_train(preset="fast", pairs=pairs)
    job, cancelled = wait(runtime, job.id, limit, "train")
    row = {
        "job": job.id, "state": job.state, "error": job.error, "wall_s": round(time.time() - started, 1),
        "train_loss": job.metrics.get("train_loss"), "train_runtime": job.metrics.get("train_runtime"),
        "tokens_per_s": job.metrics.get("tokens_per_s"), "plan": job.metrics.get("plan"),
        "adapter": job.artifacts.get("adapter"), "timed_out": cancelled,
    }
    log(f"train: {job.state} in {row['wall_s']}s, loss {row['train_loss']}")
    return row


def evaluate(
    runtime: Runtime, name: str, model: Path, adapter: str, dataset: str, samples: int, extra: dict,
    tokenizer,
) -> dict:
    pairs = {
        "adapter_name_or_path": adapter, "template": "llama3", "dataset": dataset, "samples": str(samples),
        "max_new_tokens": str(NEW_TOKENS), "do_sample": "false", **extra,
    }
    limit = phase_limit(name)
    log(f"{name}: eval of {samples} samples {extra}, limit {limit:.0f}s")
    started = time.time()
    row: dict = {"samples": samples, "pairs": extra}
    with GpuWatch() as gpu:
        # model= with the adapter as a pair: an eval of these weights alone (no base-model
        # comparison run inside the job, which would double its time).
        job = runtime.queue.submit_eval(model=str(model), pairs=pairs)
        job, cancelled = wait(runtime, job.id, limit, name)
    wall = time.time() - started
    output = Path(job.work_dir) / "output"
    results: dict = {}
    try:
        results = json.loads((output / "predict_results.json").read_text())
    except (OSError, ValueError):
        pass
    predictions = read_predictions(output / "generated_predictions.jsonl")
    generated = sum(len(tokenizer(p.get("predict", ""), add_special_tokens=False)["input_ids"])
                    for p in predictions)
    runtime_s = results.get("predict_runtime")
    job_s = (job.finished_at - job.started_at) if job.finished_at and job.started_at else None
    row.update(
        job=job.id, state=job.state, error=job.error, timed_out=cancelled, wall_s=round(wall, 1),
        job_s=round(job_s, 1) if job_s else None,
        batch=job.args.get("per_device_eval_batch_size"),
        eval_plan=job.metrics.get("eval_plan"), eval_sorted=job.metrics.get("eval_sorted"),
        do_sample=job.args.get("do_sample"),
        predict_runtime=runtime_s,
        samples_per_s=results.get("predict_samples_per_second"),
        predictions=len(predictions),
        generated_tokens=generated,
        generated_tokens_per_s=round(generated / runtime_s, 1) if runtime_s and generated else None,
        samples_per_s_wall=round(len(predictions) / job_s, 4) if job_s and predictions else None,
        llamafactory_scores={k.removeprefix("predict_"): v for k, v in results.items()
                             if k.startswith("predict_") and ("rouge" in k or "bleu" in k)},
        gpu_peak_mib=max((m for _, _, m in gpu.samples), default=None),
        gpu_util_mean=round(sum(u for _, u, _ in gpu.samples) / len(gpu.samples), 1) if gpu.samples else None,
    )
    if predictions:
        first = predictions[:BASE_SAMPLES]
        row["scores_first"] = score([(p.get("predict", ""), p.get("label", "")) for p in first])
        row["first_labels"] = [p.get("label", "")[:40] for p in first]
    if not results and job.log_path:
        # Cut short: the progress bar says how far it got and how fast.
        bar = progress_from_log(Path(job.log_path).read_text(errors="replace"))
        if bar and bar[0] > 1 and bar[2] > 0 and row["batch"]:
            done, total, seconds = bar
            # transformers makes the predict bar at the end of the first batch: its clock covers
            # the batches after the first, not all `done` of them.
            row["partial"] = {"batches_done": done, "batches": total, "seconds": seconds,
                              "samples_per_s": round((done - 1) * int(row["batch"]) / seconds, 4)}
    if job.state != "succeeded" and job.log_path:
        row["log_tail"] = Path(job.log_path).read_text(errors="replace")[-3000:]
    log(f"{name}: {job.state} in {wall:.0f}s, batch {row['batch']}, {row['samples_per_s']} samples/s, "
        f"{row['generated_tokens_per_s']} generated tokens/s, peak {row['gpu_peak_mib']} MiB, "
        f"scores {row.get('scores_first')}")
    return row


def summary(results: dict) -> None:
    runs = results.get("evals", {})
    base, fast = runs.get("webui") or {}, runs.get("fast") or {}

    def rate(r: dict):
        return r.get("samples_per_s") or (r.get("partial") or {}).get("samples_per_s")

    if rate(base) and rate(fast):
        results["speedup_samples_per_s"] = round(rate(fast) / rate(base), 2)
    if base.get("generated_tokens_per_s") and fast.get("generated_tokens_per_s"):
        results["speedup_generated_tokens_per_s"] = round(
            fast["generated_tokens_per_s"] / base["generated_tokens_per_s"], 2)
    sb, sf = base.get("scores_first") or {}, fast.get("scores_first") or {}
    if sb and sf:
        results["score_delta_first"] = {k: round(sf[k] - sb[k], 4) for k in sb if k in sf}
    save(results)
    print("\n| eval | state | samples | batch | sorted | predict s | samples/s | generated tokens/s "
          "| job wall s | samples/s over wall | peak GPU MiB | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU-4 "
          f"(first {BASE_SAMPLES} rows) |")
    print("| --- | --- |" + " ---: | ---: | --- |" + " ---: |" * 10)
    for name, r in runs.items():
        s = r.get("scores_first") or {}
        partial = r.get("partial") or {}
        speed = r.get("samples_per_s") or (f"{partial.get('samples_per_s')} (partial)" if partial else None)
        cells = [
            name, r.get("state"), r.get("samples"), r.get("batch"), r.get("eval_sorted"),
            r.get("predict_runtime"), speed, r.get("generated_tokens_per_s"), r.get("job_s"),
            r.get("samples_per_s_wall"), r.get("gpu_peak_mib"),
            s.get("rouge-1"), s.get("rouge-2"), s.get("rouge-l"), s.get("bleu-4"),
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"\nspeed-up (samples/s): {results.get('speedup_samples_per_s')}; generated tokens/s: "
          f"{results.get('speedup_generated_tokens_per_s')}; score change on the same rows "
          f"(fast - webui): {results.get('score_delta_first')}; bench {time.time() - T0:.0f}s")


def main() -> int:
    results: dict = {"env": environment(), "shape": SHAPE, "budget_s": BUDGET, "evals": {}}
    save(results)
    hardware = detect()
    t = time.time()
    model = ensure_model(DATA / "models", shape=SHAPE)
    log(f"model {SHAPE} ready in {time.time() - t:.0f}s")
    t = time.time()
    train_set, eval_set = make_sets(model)
    log(f"datasets {train_set} / {eval_set} ready in {time.time() - t:.0f}s")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    compute = "bf16" if hardware.supports_bf16 else "fp32"
    settings = Settings(data_dir=DATA, poll_interval=0.3, web_port=0, estimate=True)
    runtime = Runtime(settings)
    runtime.start(web=False)
    try:
        results["train"] = row = train(runtime, model, train_set, compute)
        save(results)
        if row["state"] != "succeeded" or not row["adapter"]:
            log("train failed: no adapter to evaluate")
            return 1
        fast_pairs: dict[str, str] = {"greedy": "true", "compute": compute}
        if not hardware.has_gpu:
            # Dry run on a CPU: the runner plans only on a GPU, so the evals' runner is told it has
            # one (a runner's hardware is fixed when it is built: a new one, on the same store).
            pretend = Hardware(hardware.host, (Gpu("0", "pretend H200 (CPU dry run)", 143_771, 9.0),),
                               hardware.cpu_count)
            if os.environ.get("BENCH_FAST_BATCH"):
                fast_pairs["batch"] = os.environ["BENCH_FAST_BATCH"]
            runtime.stop()
            runtime = Runtime(settings, hardware=pretend)
            runtime.start(web=False)
        results["evals"]["fast"] = evaluate(
            runtime, "fast", model, row["adapter"], eval_set, EVAL_SAMPLES, fast_pairs, tokenizer
        )
        save(results)
        # The baseline is LLaMA-Factory as its WebUI runs it: the runner neither sorts nor plans.
        planned = kind_of("eval")
        register(replace(planned, fit_to_hardware=None))
        try:
            results["evals"]["webui"] = evaluate(
                runtime, "webui", model, row["adapter"], eval_set, BASE_SAMPLES,
                {"batch": "2", "compute": compute}, tokenizer,
            )
        finally:
            register(planned)
        save(results)
    finally:
        runtime.stop()
    summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
