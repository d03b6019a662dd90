"""How long a train job will take, before it starts: tokens to train / expected tokens/s + start-up.

Expected speed comes from a calibration table keyed by (device, recipe, GPUs). Each entry holds a
rate in parameter-tokens per second (tokens/s x model parameters: roughly constant across model
sizes for one card and recipe, since the work per token grows with the parameters) and the
start-up seconds (loading the model, tokenizing). The bench writes the first entries
(`DEFAULT_CALIBRATION`, measured on the device machine); every finished train job on a runner
folds its own measurement into that runner's table (`refine`).

Pure arithmetic except `load_table`/`save_table`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .throughput import short_gpu_name

# Weight of a new measurement against what the table held (an exponential moving average).
REFINE_WEIGHT = 0.5

# Measured with bench/train_throughput.py on an H200, 2026-12-01 (docs/benchmarks.md): tokens/s x
# params (8.03e9, random Llama-3-8B), and start-up s (loading the model; for `fast` also compiling
# it: ~20 s with the compiler's cache warm, ~110 s cold). H100 entries are the H200's until a job
# there replaces them (same compute; `runs: 0` means not measured).
DEFAULT_CALIBRATION: dict[str, dict[str, float]] = {
    "H200|fast|1": {"param_tokens_per_s": 7.59e13, "startup_s": 60.0, "runs": 1},
    "H200|seed|1": {"param_tokens_per_s": 1.40e13, "startup_s": 25.0, "runs": 1},
    "H200|seed-cli|1": {"param_tokens_per_s": 1.43e13, "startup_s": 30.0, "runs": 1},
    "H100|fast|1": {"param_tokens_per_s": 7.2e13, "startup_s": 60.0, "runs": 0},
    "H100|seed|1": {"param_tokens_per_s": 1.40e13, "startup_s": 25.0, "runs": 0},
    "H100|seed-cli|1": {"param_tokens_per_s": 1.43e13, "startup_s": 30.0, "runs": 0},
}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    tokens: int
    tokens_per_s: float
    startup_s: float
    n_gpus: int
    device: str
    key: str

    @property
    def gpu_hours(self) -> float:
        return self.seconds * self.n_gpus / 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpu_hours": round(self.gpu_hours, 3)}


def device_name(gpu_name: str | None) -> str:
    """The table's device key: 'H200' for 'NVIDIA H200', 'CPU' without a GPU."""
    return short_gpu_name(gpu_name) if gpu_name else "CPU"


def table_key(device: str, recipe: str | None, n_gpus: int) -> str:
    return f"{device}|{recipe or 'custom'}|{max(1, int(n_gpus))}"


def training_tokens(
    tokens_per_epoch: int,
    epochs: float,
    *,
    max_steps: int | None = None,
    tokens_per_step: float | None = None,
) -> int:
    """Non-padding tokens the run will train on: epochs x one epoch, or max_steps x a step's
    tokens when a step limit ends it sooner."""
    total = tokens_per_epoch * max(0.0, float(epochs))
    if max_steps and max_steps > 0 and tokens_per_step and tokens_per_step > 0:
        total = min(total, max_steps * tokens_per_step) if epochs else max_steps * tokens_per_step
    return int(round(total))


def lookup(table: dict[str, dict[str, float]], key: str) -> dict[str, float] | None:
    """The entry for `key`; for an unseen GPU count, the one-GPU entry scaled by the GPU count."""
    entry = table.get(key) or DEFAULT_CALIBRATION.get(key)
    if entry:
        return entry
    device, recipe, gpus = key.split("|")
    single = table.get(f"{device}|{recipe}|1") or DEFAULT_CALIBRATION.get(f"{device}|{recipe}|1")
    if single and int(gpus) > 1:
        # Data parallel scales well below linear on a shared host; 0.9 per extra GPU is a guess
        # the first real job of that shape replaces.
        return {**single, "param_tokens_per_s": single["param_tokens_per_s"] * int(gpus) * 0.9}
    return None


def estimate(
    table: dict[str, dict[str, float]],
    *,
    tokens: int,
    params: int,
    gpu_name: str | None,
    recipe: str | None,
    n_gpus: int = 1,
) -> Estimate | None:
    """Seconds the job should take, or None when nothing is known about this device and recipe."""
    device = device_name(gpu_name)
    key = table_key(device, recipe, n_gpus)
    entry = lookup(table, key)
    if not entry or params <= 0 or tokens < 0:
        return None
    rate = entry["param_tokens_per_s"] / params
    if not (rate > 0 and math.isfinite(rate)):
        return None
    startup = float(entry.get("startup_s", 0.0))
    return Estimate(
        seconds=startup + tokens / rate,
        tokens=tokens,
        tokens_per_s=rate,
        startup_s=startup,
        n_gpus=n_gpus,
        device=device,
        key=key,
    )


def refine(
    table: dict[str, dict[str, float]],
    key: str,
    *,
    tokens_per_s: float,
    params: int,
    startup_s: float | None,
) -> dict[str, dict[str, float]]:
    """The table with one finished job's measurement folded into `key` (a new dict)."""
    if not (tokens_per_s > 0 and math.isfinite(tokens_per_s)) or params <= 0:
        return dict(table)
    measured = tokens_per_s * params
    old = table.get(key) or DEFAULT_CALIBRATION.get(key)
    if old and old.get("runs", 0) > 0:
        rate = (1 - REFINE_WEIGHT) * old["param_tokens_per_s"] + REFINE_WEIGHT * measured
        startup = old.get("startup_s", 0.0)
        if startup_s is not None and startup_s >= 0:
            startup = (1 - REFINE_WEIGHT) * startup + REFINE_WEIGHT * startup_s
    else:
        rate = measured
        startup = startup_s if startup_s is not None and startup_s >= 0 else (old or {}).get("startup_s", 0.0)
    runs = (old or {}).get("runs", 0) + 1
    return {**table, key: {"param_tokens_per_s": rate, "startup_s": round(startup, 1), "runs": runs}}


def describe(est: dict[str, Any] | Estimate, *, prefix: str = "about") -> str:
    """'about 41 min on 1× H200 (0.7 GPU-h)'."""
    data = est.to_dict() if isinstance(est, Estimate) else est
    seconds = float(data.get("seconds") or 0)
    gpus = int(data.get("n_gpus") or 1)
    device = data.get("device") or "GPU"
    where = f"{gpus}× {device}" if device != "CPU" else "CPU"
    text = f"{prefix} {format_minutes(seconds)} on {where}"
    if device != "CPU":
        text += f" ({float(data.get('gpu_hours') or seconds * gpus / 3600):.1f} GPU-h)"
    return text


def format_minutes(seconds: float) -> str:
    """41 min, 2 h 05 min, 30 s."""
    if seconds < 60:
        return f"{max(1, int(round(seconds)))} s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def load_table(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(k): v
        for k, v in data.items()
        if isinstance(v, dict) and isinstance(v.get("param_tokens_per_s"), (int, float))
    }


def save_table(path: Path, table: dict[str, dict[str, float]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
