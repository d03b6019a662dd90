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

import hashlib
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

# Measured with bench/train_throughput.py on H200s, 2026-12-01 (docs/benchmarks.md), the mean of
# the calls that ran each recipe, as a runner measures a job (`measure.py`: the steady rate from the
# first logged step, the bench's `tunebot_tokens_per_s`): tokens/s while training x params (8.03e9,
# random Llama-3-8B), and start-up s: everything in the job's wall time but training and compiling
# (loading and saving outside the trainer, the first step's warm-up and the final save inside it).
# `fast` (compiled, CUDA graphs): 12,951 and 12,951 tokens/s (two calls); `seed-cli`: 1,786 /
# 1,650 / 1,660 / 1,568 / 1,626 / 1,391 / 1,243 / 1,957 (host-bound: the host's speed moves it;
# start-up 24-62 s, mean 46.7); `seed`: 1,739 / 1,327. Compiling is counted apart
# (`COLD_COMPILE_S`, `compile_seconds`). `compiled`, `checkpointing`, `graphs` (CUDA graphs): how
# the recipe ran there.
# H100 entries are the H200's, `fast` scaled by the two cards' bf16 matmul rates, until a job
# there replaces them (`runs: 0` means not measured).
REFERENCE_PARAMS = 8_030_261_248
# How an entry's job ran, kept beside its figures (`unlike_share`, `like_default`).
RUN_FLAGS = ("compiled", "checkpointing", "graphs")
_FAST = {"runs": 1, "compiled": 1, "checkpointing": 0, "graphs": 1}
_EAGER = {"runs": 1, "compiled": 0, "checkpointing": 1}
DEFAULT_CALIBRATION: dict[str, dict[str, float]] = {
    "H200|fast|1": {"param_tokens_per_s": 1.040e14, "startup_s": 35.5, **_FAST},
    "H200|seed|1": {"param_tokens_per_s": 1.231e13, "startup_s": 36.4, **_EAGER},
    "H200|seed-cli|1": {"param_tokens_per_s": 1.293e13, "startup_s": 46.7, **_EAGER},
    "H100|fast|1": {"param_tokens_per_s": 9.85e13, "startup_s": 35.5, **_FAST, "runs": 0},
    "H100|seed|1": {"param_tokens_per_s": 1.231e13, "startup_s": 36.4, **_EAGER, "runs": 0},
    "H100|seed-cli|1": {"param_tokens_per_s": 1.293e13, "startup_s": 46.7, **_EAGER, "runs": 0},
}

# How this runner's machine compares with the one the defaults were measured on, learnt from every
# finished job whose recipe has a one-GPU default, run as it was there (compiled or not, with
# checkpointing or not, CUDA graphs or not) on a model of about the same size (`HOST_MODEL_RANGE`):
# its rate and start-up over the default's. An estimate from a default (a recipe this runner has
# not run yet) is scaled by it. Kept apart for eager and
# compiled runs: eager steps are bound by the host's CPU (the same `seed-cli` ran at 1,494 and
# 1,889 tokens/s on two H200 hosts), compiled ones with CUDA graphs by the GPU.
HOST_PREFIX = "host|"
HOST_FACTOR_RANGE = (0.2, 5.0)  # beyond this a ratio says more about a broken job than a host
# A model this far from the defaults' size tells about itself, not the host (a 0.5B model's eager
# steps are launch-bound at any size: its rate x params is far below an 8B's on the same host).
HOST_MODEL_RANGE = (0.5, 2.0)

# torch.compile's cost, paid inside the trainer's first step (same bench, Llama-3-8B with LoRA):
# 106-120 s with an empty cache, ~22 s once this runner has compiled the same shapes (its cache is
# kept under the data dir: runners/llamafactory/command.py). A runner records each compiled shape.
COLD_COMPILE_S = 115.0
# With CUDA graphs (`torch_compile_mode: reduce-overhead`) Inductor compiles more: 143 s cold.
COLD_COMPILE_S_BY_MODE = {"reduce-overhead": 143.0}
# A compile with the cache warm costs this share of the cold one (21.7 s after 110-115 s, default
# mode; not measured with CUDA graphs, whose capture is redone every run): what a runner expects
# next after a cold compile of a shape, until it has measured a warm one.
WARM_COMPILE_SHARE = 0.19
# A measured compile over this share of the cold figure was cold (the cache did not hold it).
COLD_IF_OVER = 0.5
COMPILED_PREFIX = "compiled|"
# A default measured compiled stands for an eager run of its recipe at this share: `fast` eager on
# an H200 (Liger, packing, no checkpointing) trained at 4,454 and 4,838 tokens/s beside 12,951
# compiled with CUDA graphs (docs/benchmarks.md). Without this, a `fast` job planned for a 24 GB
# card (eager, checkpointing) was estimated at 15,707 tokens/s and trained at 3,860.
EAGER_SHARE = 0.36
# Checkpointing recomputes each forward in the backward: ~4/3 the work (and the kernels) a step.
CHECKPOINTING_SHARE = 0.75
NO_GRAPHS_SHARE = 0.93  # `fast` without CUDA graphs vs with: 11,866 vs 12,795 tokens/s (H200)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    tokens: int
    tokens_per_s: float
    startup_s: float
    n_gpus: int
    device: str
    key: str
    compile_s: float = 0.0
    # where the speed came from: "runner" (this runner's own jobs of the recipe), "host" (a default
    # scaled by what this runner's other jobs showed), "default" (the shipped figure as it is)
    basis: str = "default"

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


def _with_flags(entry: dict[str, float], single_key: str) -> dict[str, float]:
    """The entry with the run flags it lacks (kept before they were) taken from its recipe's
    one-GPU default: it ran as that was measured."""
    default = DEFAULT_CALIBRATION.get(single_key) or {}
    return {**{flag: default[flag] for flag in RUN_FLAGS if flag in default}, **entry}


def lookup(table: dict[str, dict[str, float]], key: str) -> tuple[dict[str, float] | None, bool]:
    """The entry for `key` (for an unseen GPU count, the one-GPU entry scaled by the GPU count and,
    where it ran with CUDA graphs, by their loss: data parallel runs without them), with how its
    job ran (`RUN_FLAGS`), and whether it is this runner's own measurement (not a shipped default)."""
    device, recipe, gpus = key.split("|")
    single_key = f"{device}|{recipe}|1"
    if table.get(key):
        return _with_flags(table[key], single_key), True
    if DEFAULT_CALIBRATION.get(key):
        return dict(DEFAULT_CALIBRATION[key]), False
    single = table.get(single_key) or DEFAULT_CALIBRATION.get(single_key)
    if single and int(gpus) > 1:
        # Data parallel scales well below linear on a shared host; 0.9 per extra GPU is a guess
        # the first real job of that shape replaces. It also runs without CUDA graphs, which the
        # one-GPU `fast` figure has: without them the best same-machine run was 0.93 of it.
        single = _with_flags(single, single_key)
        had_graphs = bool(single.get("graphs"))
        share = NO_GRAPHS_SHARE if had_graphs else 1.0
        scaled = {**single, "param_tokens_per_s": single["param_tokens_per_s"] * int(gpus) * 0.9 * share}
        if "compiled" in single or had_graphs:
            scaled["graphs"] = 0
        return scaled, bool(table.get(single_key))
    return None, False


def host_key(device: str, compiled: bool) -> str:
    return f"{HOST_PREFIX}{device}|{'compiled' if compiled else 'eager'}"


def host_factors(table: dict[str, dict[str, float]], device: str, compiled: bool) -> tuple[float, float]:
    """(rate, start-up) of this runner's machine over the defaults' machine; (1, 1) until a job
    with a default has finished here."""
    entry = table.get(host_key(device, compiled)) or {}
    return float(entry.get("rate", 1.0)), float(entry.get("startup", 1.0))


def _clamp(value: float) -> float:
    low, high = HOST_FACTOR_RANGE
    return min(high, max(low, value))


def _same(flag: str, entry: dict[str, float], value: bool | None) -> bool:
    """Whether a job's `value` of a flag matches an entry's; either unknown (None, or an entry
    without the flag) counts as a match."""
    return value is None or flag not in entry or bool(entry[flag]) == bool(value)


def like_default(
    key: str, compiled: bool | None, params: int, checkpointing: bool | None = None,
    graphs: bool | None = None,
) -> bool:
    """Whether a job under `key` ran as its shipped default was measured (compiled or not, gradient
    checkpointing or not, CUDA graphs or not: each None, not checked), on a model within
    `HOST_MODEL_RANGE` of its size, so its speed can stand for that default's. A key for several
    GPUs is judged by its recipe's one-GPU default on the model's size alone (it runs without
    graphs). True for a recipe without a default (nothing to keep apart from)."""
    reference = DEFAULT_CALIBRATION.get(key)
    low, high = HOST_MODEL_RANGE
    sized = low * REFERENCE_PARAMS <= params <= high * REFERENCE_PARAMS
    if reference is None:
        device, recipe, _ = key.split("|")
        return sized if DEFAULT_CALIBRATION.get(table_key(device, recipe, 1)) else True
    return sized and all(
        _same(flag, reference, value)
        for flag, value in zip(RUN_FLAGS, (compiled, checkpointing, graphs), strict=True)
    )


def unlike_share(
    entry: dict[str, float], compiled: bool | None, checkpointing: bool | None, graphs: bool | None = None
) -> float:
    """What an entry's rate becomes for a job run slower than it was measured: eager where it was
    compiled (`EAGER_SHARE`, measured against compiled with CUDA graphs: against an entry without
    them, that share over `NO_GRAPHS_SHARE`), compiled without CUDA graphs where it had them
    (`NO_GRAPHS_SHARE`), checkpointing where it did not (`CHECKPOINTING_SHARE`). A job that should
    run faster keeps the entry's rate: that gain is not measured, so its estimate errs long, not
    short. An entry without a flag says nothing of it (an entry kept before flags were is taken to
    have run with graphs if compiled); a job's flag None is not known and costs nothing."""
    share = 1.0
    had_graphs = bool(entry.get("graphs", 1))
    if compiled is False and entry.get("compiled"):
        share *= EAGER_SHARE / (1.0 if had_graphs else NO_GRAPHS_SHARE)
    elif compiled and graphs is False and entry.get("compiled") and had_graphs:
        share *= NO_GRAPHS_SHARE
    if checkpointing and "checkpointing" in entry and not entry["checkpointing"]:
        share *= CHECKPOINTING_SHARE
    return share


def record_host(
    table: dict[str, dict[str, float]],
    device: str,
    compiled: bool,
    key: str,
    *,
    tokens_per_s: float,
    params: int,
    startup_s: float | None,
    checkpointing: bool | None = None,
    graphs: bool | None = None,
) -> dict[str, dict[str, float]]:
    """The table with one finished job's speed against its recipe's default folded into this
    runner's host factors; unchanged when the job says nothing about the host: no one-GPU default
    for its recipe, run otherwise than the default was (compiled or not, gradient checkpointing or
    not, CUDA graphs or not), or a model of another size."""
    reference = DEFAULT_CALIBRATION.get(key)
    like = compiled is not None and like_default(key, compiled, params, checkpointing, graphs)
    if not reference or not like or not (
        tokens_per_s > 0 and math.isfinite(tokens_per_s)
    ):
        return dict(table)
    rate = _clamp(tokens_per_s * params / reference["param_tokens_per_s"])
    base = float(reference.get("startup_s") or 0.0)
    startup = _clamp(startup_s / base) if startup_s is not None and startup_s > 0 and base > 0 else None
    hkey = host_key(device, compiled)
    old = dict(table.get(hkey) or {})
    w = REFINE_WEIGHT
    entry = {
        "rate": round((1 - w) * old["rate"] + w * rate if old else rate, 4),
        "runs": old.get("runs", 0) + 1,
    }
    # Start-up blends only with measured start-ups (a resumed job has none).
    if startup is not None:
        entry["startup"] = round((1 - w) * old["startup"] + w * startup if "startup" in old else startup, 4)
    elif "startup" in old:
        entry["startup"] = old["startup"]
    return {**table, hkey: entry}


def compile_key(config: dict[str, Any], args: dict[str, Any]) -> str:
    """What decides whether torch.compile's cache already holds a job's graphs: the model's
    architecture, the batch shape and the compile mode (not the weights or the model's path)."""
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    arch = {k: config.get(k) for k in (
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "vocab_size", "head_dim",
    )}
    shape = {k: str(args.get(k)) for k in (
        "cutoff_len", "per_device_train_batch_size", "torch_compile_mode", "finetuning_type", "lora_rank",
        "lora_target", "bf16", "neat_packing", "disable_gradient_checkpointing",
    )}
    if args.get("gradient_checkpointing") is not None:  # HF's own switch (keys of jobs without it stay)
        shape["gradient_checkpointing"] = str(args.get("gradient_checkpointing"))
    digest = hashlib.sha256(json.dumps([arch, shape], sort_keys=True).encode()).hexdigest()[:16]
    return COMPILED_PREFIX + digest


def cold_compile_seconds(args: dict[str, Any]) -> float:
    """A first compile's seconds for a job's compile mode (Llama-3-8B-sized; the bench's figure)."""
    return COLD_COMPILE_S_BY_MODE.get(str(args.get("torch_compile_mode") or ""), COLD_COMPILE_S)


def compile_seconds(table: dict[str, dict[str, float]], key: str, cold: float = COLD_COMPILE_S) -> float:
    """Seconds compiling will take: what this runner expects for the same shapes with its cache
    warm (`record_compile`), else `cold`, a first compile."""
    entry = table.get(key)
    if entry and isinstance(entry.get("compile_s"), (int, float)) and entry["compile_s"] >= 0:
        return float(entry["compile_s"])
    return cold


def record_compile(
    table: dict[str, dict[str, float]], key: str, seconds: float, cold: float = COLD_COMPILE_S
) -> dict[str, dict[str, float]]:
    """The table with what the next compile of this shape should take. The next finds the cache
    warm: after a compile that was cold (judged by its time against `cold`, the mode's cold figure:
    a cache can be warm with no record, or cleared under one) that is the warm share of it; after a
    warm one, what was measured."""
    if not (math.isfinite(seconds) and seconds >= 0):
        return dict(table)
    runs = (table.get(key) or {}).get("runs", 0) + 1
    expected = seconds * WARM_COMPILE_SHARE if seconds > COLD_IF_OVER * cold else seconds
    return {**table, key: {"compile_s": round(expected, 1), "runs": runs}}


def estimate(
    table: dict[str, dict[str, float]],
    *,
    tokens: int,
    params: int,
    gpu_name: str | None,
    recipe: str | None,
    n_gpus: int = 1,
    compile_s: float = 0.0,
    compiled: bool | None = None,
    checkpointing: bool | None = None,
    graphs: bool | None = None,
) -> Estimate | None:
    """Seconds the job should take, or None when nothing is known about this device and recipe.
    `compile_s`: torch.compile's time for a compiled job (`compile_seconds`); `compiled`,
    `checkpointing`, `graphs` (None: not known): how the job runs — which of this runner's host
    factors scales a default entry (unknown: as the entry ran), and what share of its entry's rate
    a job run slower than the entry was measured gets (`unlike_share`)."""
    device = device_name(gpu_name)
    key = table_key(device, recipe, n_gpus)
    entry, own = lookup(table, key)
    if not entry or params <= 0 or tokens < 0:
        return None
    if own:
        rate_factor, startup_factor, basis = 1.0, 1.0, "runner"
    else:
        bucket = bool(entry.get("compiled")) if compiled is None else compiled
        rate_factor, startup_factor = host_factors(table, device, bucket)
        basis = "host" if table.get(host_key(device, bucket)) else "default"
    rate_factor *= unlike_share(entry, compiled, checkpointing, graphs)
    rate = entry["param_tokens_per_s"] * rate_factor / params
    if not (rate > 0 and math.isfinite(rate)):
        return None
    startup = float(entry.get("startup_s", 0.0)) * startup_factor
    compile_s = max(0.0, float(compile_s))
    return Estimate(
        seconds=startup + compile_s + tokens / rate,
        tokens=tokens,
        tokens_per_s=rate,
        startup_s=startup,
        n_gpus=n_gpus,
        device=device,
        key=key,
        compile_s=compile_s,
        basis=basis,
    )


def refine(
    table: dict[str, dict[str, float]],
    key: str,
    *,
    tokens_per_s: float,
    params: int,
    startup_s: float | None,
    compiled: bool | None = None,
    checkpointing: bool | None = None,
    graphs: bool | None = None,
) -> dict[str, dict[str, float]]:
    """The table with one finished job's measurement folded into `key` (a new dict), with how it
    ran (`compiled`, `checkpointing`, `graphs`; None: not known, not checked). A job unlike the key's shipped
    default (`like_default`) leaves it alone: a 0.5B model's `fast` run would otherwise stand for
    every 8B `fast` estimate after it. Under a key without a default, a job run otherwise than the
    entry's last one replaces it rather than blending two different speeds (an entry kept before
    flags were blends with any job, as it always did)."""
    if not (tokens_per_s > 0 and math.isfinite(tokens_per_s)) or params <= 0:
        return dict(table)
    if not like_default(key, compiled, params, checkpointing, graphs):
        return dict(table)
    measured = tokens_per_s * params
    how = tuple(zip(RUN_FLAGS, (compiled, checkpointing, graphs), strict=True))
    old = table.get(key)
    if old and not all(_same(flag, old, value) for flag, value in how):
        old = None
    flags = {flag: int(value) for flag, value in how if value is not None}
    if old:
        rate = (1 - REFINE_WEIGHT) * old["param_tokens_per_s"] + REFINE_WEIGHT * measured
        startup = old.get("startup_s", 0.0)
        if startup_s is not None and startup_s >= 0:
            startup = (1 - REFINE_WEIGHT) * startup + REFINE_WEIGHT * startup_s
        runs = old.get("runs", 0) + 1
    else:
        # The runner's first job of this recipe replaces the shipped default: that was measured on
        # another machine, this on the runner's own (and a job run otherwise replaces the last).
        rate = measured
        default = (DEFAULT_CALIBRATION.get(key) or {}).get("startup_s", 0.0)
        startup = startup_s if startup_s is not None and startup_s >= 0 else default
        runs = 1
    kept = {flag: old[flag] for flag, _ in how if old and flag in old}
    entry = {"param_tokens_per_s": rate, "startup_s": round(startup, 1), "runs": runs, **kept, **flags}
    return {**table, key: entry}


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
    def usable(key: str, entry: Any) -> bool:
        if not isinstance(entry, dict):
            return False
        if key.startswith(HOST_PREFIX):
            field = "rate"
        elif key.startswith(COMPILED_PREFIX):
            field = "compile_s"
        else:
            field = "param_tokens_per_s"
        value = entry.get(field)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return {str(k): v for k, v in data.items() if usable(str(k), v)}


def save_table(path: Path, table: dict[str, dict[str, float]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
