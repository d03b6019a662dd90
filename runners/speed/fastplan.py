"""The `fast` recipe's shape for one GPU and one model: pack length, micro-batch, accumulation,
gradient checkpointing. Pure arithmetic, CPU-tested; the runner applies it at launch, where the
GPU's memory and the dataset's token count are known.

The rule: train exactly what `seed` trains (same hyperparameters, same tokens per optimizer step
within 10%), in as few and as large forward passes as memory allows:

- `seed` takes 2 samples x 2 accumulation steps per GPU per optimizer step, so its tokens per step
  are 4 x the dataset's mean sample length (after the seed's 2,048-token cutoff);
- `fast` packs samples without cross-attention (`neat_packing`) into sequences of `cutoff` tokens
  and takes `batch x accum` packs per step, with `batch x accum x cutoff` ~ that target;
- a pack never exceeds the seed's cutoff (2,048), so no sample is cut shorter than `seed` cuts it,
  unless it is longer than a whole step's tokens (then it is cut at the pack length; the plan
  says how many tokens that drops);
- gradient checkpointing only when the micro-batch's activations do not fit without it;
- without checkpointing the model is compiled (torch.compile) and Liger is off; with it, Liger on;
- compiled with one micro-batch a step, the compiled graphs are replayed as CUDA graphs.

Memory model (measured on an H200 with Llama-3-8B, LoRA r8 on all linear layers, Liger kernels,
SDPA, bf16; docs/benchmarks.md): activations ~ 51 bytes x hidden x layers per token without
checkpointing (6.4 MiB/token for 8B) and ~ 5 bytes with it (56 and 6 used, to stay clear);
weights 2 bytes/param; 2.5 GiB for the CUDA context, LoRA weights, optimizer state and allocator
slack; 10% of the card held back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SEED_SAMPLES_PER_STEP = 4  # seed: per_device_train_batch_size 2 x gradient_accumulation_steps 2
SEED_CUTOFF = 2048
PACK_MULTIPLE = 64  # pack lengths are rounded up to this (tensor-core friendly shapes)
MIN_PACK = 256

ACT_BYTES_PER_HIDDEN_LAYER = 56.0  # no checkpointing
ACT_BYTES_PER_HIDDEN_LAYER_CKPT = 6.0  # with gradient checkpointing
FIXED_BYTES = 2.5 * 2**30
HEADROOM = 0.90

# Flags `fast` adds on a GPU (measured effect of each in docs/benchmarks.md).
GPU_FLAGS: dict[str, Any] = {
    "optim": "adamw_torch_fused",
    "dataloader_num_workers": 4,
    "dataloader_pin_memory": True,
    "dataloader_persistent_workers": True,
    # The trainer's own token count waits for the GPU (`.item()`) before every micro-step, and is
    # wrong under packing anyway; tunebot counts tokens itself (runners/speed/throughput.py), and
    # these flags are only applied once that count exists.
    "include_num_input_tokens_seen": "no",
    # The trainer checks every micro-step's loss for nan/inf with a Python `if` on a GPU tensor: a
    # sync that stops the host queuing the next step while the GPU works. Off, a nan/inf loss goes
    # into the logged running loss (every later logged loss reads nan: the run has diverged, which
    # with bf16 it has); fp16 runs keep the check (trainprep.apply_fast), their scaler skips inf steps.
    "logging_nan_inf_filter": False,
    # Accelerate copies each batch to the GPU with a blocking copy by default: the host waits there
    # for the GPU to finish the previous step before it can queue the next one, and the GPU idles
    # while the host runs the trainer's per-step Python. From pinned memory the copy can be queued
    # like a kernel (`dataloader_pin_memory` above); the host then stays a step ahead.
    "accelerator_config": {"non_blocking": True},
}
# Without checkpointing the step is bound by the host launching ~10k small kernels (profiler:
# GPU busy 39% of a step); torch.compile fuses them: 0.156 s/step against 0.275 on an H200
# (Liger's kernels are opaque to the compiler and cost it 40% of that gain, so they go).
# With checkpointing (small cards) Liger stays and nothing is compiled: that pairing is measured.
COMPILED_FLAGS: dict[str, Any] = {"torch_compile": True, "enable_liger_kernel": False}
# With the syncs gone the GPU still waited for the host to launch a compiled step's ~3,800 kernels
# (its kernels take ~0.103 s of a 0.123 s step; on the same machine minutes later, 0.158 s: a slower
# host). CUDA graphs replay each compiled graph with one launch: 0.114 s/step, nvidia-smi 96% busy,
# 0.7-1.5 GB more card memory (Inductor's cudagraph trees; docs/benchmarks.md).
# Measured with one micro-batch per optimizer step only, so only planned there: with gradient
# accumulation, a replay would reuse the buffers the previous micro-batch's gradients came from.
CUDAGRAPH_FLAGS: dict[str, Any] = {"torch_compile_mode": "reduce-overhead"}
CHECKPOINTED_FLAGS: dict[str, Any] = {"enable_liger_kernel": True}
LOGITS_BYTES_PER_VOCAB = 12.0  # no Liger: fp32 logits, their gradient and the bf16 copy


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int = 128_256


@dataclass(frozen=True)
class FastPlan:
    cutoff: int
    batch: int
    accum: int
    checkpointing: bool
    target_tokens: int  # the seed's tokens per optimizer step per GPU
    step_tokens: int  # what a step of this plan holds at most (batch x accum x cutoff)
    est_peak_bytes: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def args(self) -> dict[str, Any]:
        """The LLaMA-Factory arguments this plan sets."""
        return {
            "cutoff_len": self.cutoff,
            "per_device_train_batch_size": self.batch,
            "gradient_accumulation_steps": self.accum,
            "disable_gradient_checkpointing": not self.checkpointing,
            **self.flags(),
        }

    def flags(self) -> dict[str, Any]:
        if self.checkpointing:
            return dict(CHECKPOINTED_FLAGS)
        return {**COMPILED_FLAGS, **(CUDAGRAPH_FLAGS if self.accum == 1 else {})}


def shape_of(config: dict[str, Any], params: int) -> ModelShape:
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 4096)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 32)
    vocab = int(config.get("vocab_size") or 128_256)
    return ModelShape(params=params, hidden=hidden, layers=layers, vocab=vocab)


def activation_bytes(shape: ModelShape, tokens: int, checkpointing: bool) -> float:
    if checkpointing:  # with Liger: its fused loss never holds the logits
        return ACT_BYTES_PER_HIDDEN_LAYER_CKPT * shape.hidden * shape.layers * tokens
    per_token = (
        ACT_BYTES_PER_HIDDEN_LAYER * shape.hidden * shape.layers + LOGITS_BYTES_PER_VOCAB * shape.vocab
    )
    return per_token * tokens


def peak_bytes(shape: ModelShape, tokens: int, checkpointing: bool) -> float:
    return 2.0 * shape.params + FIXED_BYTES + activation_bytes(shape, tokens, checkpointing)


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_fast(
    gpu_memory_bytes: int,
    shape: ModelShape,
    mean_sample_tokens: float,
    max_sample_tokens: int | None = None,
    seed_cutoff: int = SEED_CUTOFF,
) -> FastPlan:
    """The fast recipe's shape for a GPU of `gpu_memory_bytes` and a dataset whose samples average
    `mean_sample_tokens` (after the seed's cutoff). Raises ValueError when even one pack with
    gradient checkpointing cannot fit (the caller falls back to the seed's own shape)."""
    if mean_sample_tokens <= 0:
        raise ValueError("the dataset has no tokens")
    budget = gpu_memory_bytes * HEADROOM
    target = int(round(SEED_SAMPLES_PER_STEP * min(mean_sample_tokens, seed_cutoff)))
    if target <= seed_cutoff:
        # One pack a step holds the seed's step; `+1`: LLaMA-Factory packs cutoff_len - 1 tokens.
        cutoff, packs = max(MIN_PACK, _round_up(target + 1, PACK_MULTIPLE)), 1
    else:
        packs = max(1, round(target / (seed_cutoff - 1)))
        if abs(packs * (seed_cutoff - 1) - target) <= 0.1 * target:
            cutoff = seed_cutoff  # whole seed-length packs hold the step
        else:  # a few shorter packs of equal length do
            packs = math.ceil(target / (seed_cutoff - 1))
            cutoff = min(seed_cutoff, _round_up(target / packs + 1, PACK_MULTIPLE))
    longest = min(max_sample_tokens or 0, seed_cutoff)
    note = ""
    if longest > cutoff - 1:
        note = f"samples longer than {cutoff - 1} tokens are cut there (the seed cuts at {seed_cutoff})"
    for checkpointing in (False, True):
        for batch in range(packs, 0, -1):
            if packs % batch:
                continue
            need = peak_bytes(shape, batch * cutoff, checkpointing)
            if need <= budget:
                return FastPlan(
                    cutoff=cutoff,
                    batch=batch,
                    accum=packs // batch,
                    checkpointing=checkpointing,
                    target_tokens=target,
                    step_tokens=packs * (cutoff - 1),
                    est_peak_bytes=int(need),
                    note=note,
                )
    raise ValueError(
        f"a {shape.params / 1e9:.1f} B model with one {cutoff}-token pack does not fit in "
        f"{gpu_memory_bytes / 2**30:.0f} GiB even with gradient checkpointing"
    )
