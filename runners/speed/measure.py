"""What a finished train job measured: tokens seen, tokens/s while training, MFU, and how its
time splits into start-up (outside the trainer), compiling and training — and how that refines
the runner's calibration table. Pure; the worker reads the inputs and saves the table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import estimate as eta
from .throughput import mfu, steady_rate, tokens_per_second, tokens_seen
from .trainprep import is_compiled, uses_checkpointing, uses_graphs


@dataclass
class Measured:
    metrics: dict[str, Any]  # the job's metrics with the figures added
    table: dict[str, dict[str, float]] | None = None  # the refined table (None: nothing to record)
    notes: list[str] = field(default_factory=list)


def measure(
    metrics: dict[str, Any],
    *,
    points: list[tuple[float, float]],
    args: dict[str, Any],
    config: dict[str, Any],
    preset: str | None,
    n_gpus: int,
    wall_s: float | None,
    first_attempt: bool,
    table: dict[str, dict[str, float]],
) -> Measured:
    """`points`: the trainer log's (elapsed s, epoch) in log order; `wall_s`: the job's time from
    start to now. The job's tokens/s is the steady rate (first logged step to last), so a compiled
    job's ~2 min of compiling on a cold runner does not read as a slow GPU; without enough points
    it is tokens over the trainer's runtime."""
    metrics = dict(metrics)
    if metrics.get("tokens_per_epoch") and metrics.get("epoch") is not None:
        seen = tokens_seen(metrics["epoch"], metrics["tokens_per_epoch"])
        if seen is not None:
            metrics["total_tokens"] = seen
    seen = metrics.get("total_tokens")
    runtime = metrics.get("train_runtime")  # the trainer's own, to the millisecond
    steady = steady_rate(points, metrics.get("tokens_per_epoch"))
    compiled = bool(metrics.get("gpu")) and is_compiled(args)
    rate = steady
    if rate is None and first_attempt and not compiled:
        # Too few log points to measure: tokens over the trainer's runtime is right only when that
        # runtime covers every token seen (not a resumed run's last stretch) and holds no compiling.
        rate = tokens_per_second(seen, runtime, min_seconds=0.01)
    if wall_s is not None:
        metrics["actual_s"] = round(wall_s, 1)  # beside the estimate, with or without a speed
    if rate is None:
        # The live progress's last figure (copied in when the job ended) may be tokens over a
        # runtime that is mostly compiling (a 40-step compiled run: 2,091 tokens/s while it
        # trained at 11,983): no figure rather than a false one.
        metrics.pop("tokens_per_s", None)
        metrics.pop("mfu", None)
        return Measured(metrics)
    metrics["tokens_per_s"] = round(rate, 1)
    params = metrics.get("params")
    gpu = metrics.get("gpu")
    n_gpus = max(1, n_gpus)
    if gpu and isinstance(params, int):
        value = mfu(rate, params, gpu, n_gpus)
        if value is not None:
            metrics["mfu"] = round(value, 4)
    compile_s = None
    numbers = isinstance(runtime, (int, float)) and isinstance(seen, (int, float))
    if compiled and steady and numbers and first_attempt:
        compile_s = max(0.0, float(runtime) - seen / steady)  # the trainer's time not spent training
        metrics["compile_s"] = round(compile_s, 1)
    if not (isinstance(params, int) and params > 0):
        return Measured(metrics)
    key = eta.table_key(eta.device_name(gpu), preset, n_gpus)
    startup = None
    if "actual_s" in metrics and first_attempt and not (compiled and compile_s is None):
        # Everything the estimate's training time (tokens / steady rate) leaves out but compiling:
        # loading and saving outside the trainer, and inside it the first step's warm-up and the
        # final save (7-12 s of an eager seed run on an H200, which the runtime alone missed).
        if isinstance(seen, (int, float)) and seen > 0:
            startup = max(0.0, metrics["actual_s"] - seen / rate - (compile_s or 0.0))
        elif isinstance(runtime, (int, float)):
            startup = max(0.0, metrics["actual_s"] - float(runtime))
    how = {"checkpointing": uses_checkpointing(args), "graphs": compiled and uses_graphs(args)}
    refined = eta.refine(table, key, tokens_per_s=rate, params=params, startup_s=startup, compiled=compiled,
                         **how)
    refined = eta.record_host(
        refined, eta.device_name(gpu), compiled, key, tokens_per_s=rate, params=params, startup_s=startup,
        **how,
    )
    if compile_s is not None:
        refined = eta.record_compile(
            refined, eta.compile_key(config, args), compile_s, eta.cold_compile_seconds(args)
        )
    return Measured(metrics, refined)
