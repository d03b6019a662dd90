"""What the runner works out for a train job before it runs: the dataset's token count, the model's
size, the `fast` plan for this GPU, and the time estimate. Glue over `tokencount`, `fastplan`,
`throughput` and `estimate`; the worker calls it off its loop (counting takes seconds).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..env import is_set
from ..errors import UserError
from ..hardware import Hardware
from ..llamafactory.recipes import TRAIN_KEYS, parse_yaml_spec
from . import estimate as eta
from .fastplan import CHECKPOINTED_FLAGS, CUDAGRAPH_FLAGS, GPU_FLAGS, plan_fast, shape_of
from .throughput import param_count
from .tokencount import TokenCount, count_tokens

log = logging.getLogger(__name__)

FAST_PRESET = "fast"
# Keys of the plan: a user who sets one of these keeps their own shape (the flags still apply).
_SHAPE_KEYS = ("cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps")
# Keys that, set by the user, mean no CUDA graphs: a compile mode implies compiling (transformers
# turns torch_compile on for any mode), a backend of theirs may not take a mode, and graphs with
# gradient checkpointing are not measured.
_NO_GRAPHS_IF_SET = frozenset({
    "torch_compile", "torch_compile_backend", "disable_gradient_checkpointing", "gradient_checkpointing",
})
# The fill LLaMA-Factory's greedy packing reaches on realistic length spreads (measured ~0.97).
PACK_FILL = 0.97


@dataclass
class Prepared:
    args: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def model_config(model: str) -> dict[str, Any]:
    try:
        data = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def user_keys(spec: dict[str, Any], names: dict[str, str] = TRAIN_KEYS) -> set[str]:
    """LLaMA-Factory keys the user set explicitly (key=value pairs or a pasted YAML); `names`: the
    kind's friendly keys (`lr` → `learning_rate`; eval's `batch` → `per_device_eval_batch_size`)."""
    keys = set()
    for raw in (spec.get("pairs") or {}):
        key = str(raw).strip().lower().replace("-", "_")
        keys.add(names.get(key, key))
    if spec.get("yaml"):
        try:
            keys |= set(parse_yaml_spec(spec["yaml"]))
        except UserError:
            pass
    return keys


def _gpu(hardware: Hardware, slots: list[str] | None):
    if not hardware.gpus:
        return None
    for gpu in hardware.gpus:
        if slots and gpu.index == slots[0]:
            return gpu
    return hardware.gpus[0]


def is_compiled(args: dict[str, Any]) -> bool:
    """Whether the trainer will torch.compile the model (the flag, or a compile mode/backend)."""
    mode_or_backend = args.get("torch_compile_mode") or args.get("torch_compile_backend")
    return is_set(args.get("torch_compile")) or bool(mode_or_backend)


def uses_graphs(args: dict[str, Any]) -> bool:
    """Whether the compiled step is replayed as CUDA graphs (Inductor's `reduce-overhead` mode)."""
    return is_compiled(args) and str(args.get("torch_compile_mode") or "") == "reduce-overhead"


def uses_checkpointing(args: dict[str, Any]) -> bool:
    """Whether the trainer recomputes activations: LLaMA-Factory checkpoints unless told not to,
    and the HF trainer does when its own flag asks, whatever LLaMA-Factory was told."""
    asked = is_set(args.get("gradient_checkpointing"))
    return asked or not is_set(args.get("disable_gradient_checkpointing"))


def tokens_per_epoch(count: TokenCount, args: dict[str, Any]) -> int:
    cutoff = int(args.get("cutoff_len") or count.cutoff)
    packing = bool(args.get("packing") or args.get("neat_packing"))
    # LLaMA-Factory packs cutoff_len - 1 tokens (data_args.__post_init__).
    return count.total_at(cutoff - 1 if packing else cutoff)


def tokens_per_step(count: TokenCount, args: dict[str, Any], n_gpus: int) -> float:
    per_device = int(args.get("per_device_train_batch_size") or 1) * int(
        args.get("gradient_accumulation_steps") or 1
    )
    cutoff = int(args.get("cutoff_len") or count.cutoff)
    if args.get("packing") or args.get("neat_packing"):
        return per_device * n_gpus * (cutoff - 1) * PACK_FILL
    return per_device * n_gpus * min(count.mean, cutoff)


def apply_fast(
    args: dict[str, Any], count: TokenCount, params: int | None, config: dict[str, Any], memory_bytes: int,
    keep: set[str],
    n_gpus: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fast preset's arguments for this GPU, and what was decided (for the job's record).
    CUDA graphs are planned on one GPU only (measured there; data parallel is not), and not when the
    user set how (or whether) to compile or checkpoint."""
    args = {**args, **{k: copy.deepcopy(v) for k, v in GPU_FLAGS.items() if k not in keep}}
    if is_set(args.get("fp16")) and "logging_nan_inf_filter" not in keep:
        # fp16's loss scaler meets inf losses routinely and skips those steps; unfiltered, one of
        # them would make every later logged loss nan. Only bf16 runs skip the check.
        args.pop("logging_nan_inf_filter", None)
    lora = str(args.get("finetuning_type", "lora")) == "lora" and not args.get("quantization_bit")
    if params is None or keep & set(_SHAPE_KEYS) or not lora:
        # The memory model is LoRA's on bf16 weights; other methods keep the seed's shape.
        why = (
            "the model's size is unknown" if params is None
            else "you set the batch shape" if keep & set(_SHAPE_KEYS)
            else "the memory plan is made for LoRA on bf16 weights"
        )
        args.update({k: v for k, v in CHECKPOINTED_FLAGS.items() if k not in keep})
        return args, {"plan": None, "plan_note": f"seed's batch shape kept: {why}"}
    try:
        plan = plan_fast(memory_bytes, shape_of(config, params), count.mean, count.longest, count.cutoff)
    except ValueError as exc:
        args.update({k: v for k, v in CHECKPOINTED_FLAGS.items() if k not in keep})
        return args, {"plan": None, "plan_note": f"seed's batch shape kept: {exc}"}
    planned = plan.args()
    if n_gpus > 1 or keep & _NO_GRAPHS_IF_SET:
        for key in CUDAGRAPH_FLAGS:
            planned.pop(key, None)
    # Packing without cross-attention: each sample attends only to itself, as unpacked.
    args.update({k: v for k, v in planned.items() if k not in keep}, packing=True, neat_packing=True)
    return args, {"plan": plan.to_dict()}


def prepare(
    args: dict[str, Any],
    *,
    preset: str | None,
    spec: dict[str, Any],
    hardware: Hardware,
    slots: list[str] | None,
    cache_dir: Path,
    table: dict[str, dict[str, float]],
    env: dict[str, str] | None = None,
    apply_plan: bool = True,
) -> Prepared:
    """Count, plan and estimate. A failed count leaves the job as it was (it still runs)."""
    info: dict[str, Any] = {}
    n_gpus = max(1, len(slots or []) or 1)
    config = model_config(str(args.get("model_name_or_path", "")))
    params = param_count(config) if config else None
    gpu = _gpu(hardware, slots)
    try:
        count = count_tokens(args, cache_dir, env=env)
    except Exception as exc:  # an estimate is a nicety: the job runs without one
        log.warning("token count failed: %s", exc)
        info["count_error"] = str(exc)[:300]
        return Prepared(args, info)
    info["dataset_tokens"] = count.summary()
    if params:
        info["params"] = params
    if gpu is not None:
        info["gpu"] = gpu.name
    if apply_plan and preset == FAST_PRESET and gpu is not None:
        args, decided = apply_fast(
            args, count, params, config, gpu.memory_mib * 2**20, user_keys(spec), n_gpus=n_gpus
        )
        info.update(decided)
    per_epoch = tokens_per_epoch(count, args)
    info["tokens_per_epoch"] = per_epoch
    step_tokens = tokens_per_step(count, args, n_gpus)
    info["tokens_per_step"] = int(step_tokens)
    total = eta.training_tokens(
        per_epoch,
        float(args.get("num_train_epochs") or 0),
        max_steps=int(args.get("max_steps") or 0) or None,
        tokens_per_step=step_tokens,
    )
    if params:
        compiled = gpu is not None and is_compiled(args)
        compile_s = 0.0
        if compiled:
            key = eta.compile_key(config or {}, args)
            compile_s = eta.compile_seconds(table, key, eta.cold_compile_seconds(args))
        est = eta.estimate(
            table,
            tokens=total,
            params=params,
            gpu_name=gpu.name if gpu else None,
            recipe=preset,
            n_gpus=n_gpus,
            compile_s=compile_s,
            compiled=compiled,
            checkpointing=uses_checkpointing(args),
            graphs=uses_graphs(args),
        )
        if est is not None:
            info["estimate"] = est.to_dict()
    return Prepared(args, info)
