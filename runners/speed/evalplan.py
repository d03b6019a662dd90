"""The eval batch for one GPU and one model: how many samples `llamafactory-cli train --do_predict`
generates for at once. Pure arithmetic, CPU-tested; the runner applies it when an eval job starts
on a GPU (runners/speed/evalprep.py).

Why it pays: HF `generate` takes one decoding step for the whole batch in about the time it takes
for one sample (an 8B model's step is bound by reading the weights and by the host launching
kernels, not by the batch), so samples/s grows almost with the batch until memory runs out.
LLaMA-Factory's WebUI default is 2.

Memory model (bf16/fp16 weights, SDPA, left padding, greedy or sampling):
- weights: 2 bytes a parameter; 2.5 GiB for the CUDA context, an adapter and allocator slack;
- KV cache per sample: 2 (K and V) x layers x kv_heads x head_dim x 2 bytes x (prompt + new
  tokens), +10% for the copy `DynamicCache` makes of a layer while it grows;
- prefill, per sample: one layer's activations at a time ((4 x hidden + 3 x intermediate) x 2
  bytes a prompt token) and, in case SDPA falls back to its math kernel under a padding mask, one
  layer's attention scores (heads x prompt^2 x 4 bytes); the last token's fp32 logits;
- 10% of the card held back.
The prompt is planned at the cutoff (LLaMA-Factory cuts prompts there), the answer at
`max_new_tokens`: a batch never holds more, so the plan cannot run out of memory on length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MAX_BATCH = 256  # past this a decoding step stops being free and a bad guess costs the most
FIXED_BYTES = 2.5 * 2**30
HEADROOM = 0.90
KV_GROWTH = 1.10
WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "pure_bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class EvalShape:
    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class EvalPlan:
    batch: int
    n_batches: int
    per_sample_bytes: int
    est_peak_bytes: int
    max_fit: int  # the largest batch memory allows, before the caps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_shape_of(config: dict[str, Any], params: int) -> EvalShape:
    """The sizes the plan needs from a model's config.json (Llama-style names; GPT-2 style too)."""
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def number(*keys: str, default: int) -> int:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return default

    hidden = number("hidden_size", "n_embd", "d_model", default=4096)
    heads = number("num_attention_heads", "n_head", default=32)
    return EvalShape(
        params=params,
        layers=number("num_hidden_layers", "n_layer", "num_layers", default=32),
        hidden=hidden,
        heads=heads,
        kv_heads=number("num_key_value_heads", default=heads),
        head_dim=number("head_dim", default=max(1, hidden // heads)),
        intermediate=number("intermediate_size", "n_inner", default=4 * hidden),
        vocab=number("vocab_size", default=128_256),
    )


def kv_bytes_per_token(shape: EvalShape, dtype_bytes: int = 2) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes


def per_sample_bytes(shape: EvalShape, prompt_tokens: int, new_tokens: int, dtype_bytes: int = 2) -> float:
    kv = kv_bytes_per_token(shape, dtype_bytes) * (prompt_tokens + new_tokens) * KV_GROWTH
    activations = (4 * shape.hidden + 3 * shape.intermediate) * dtype_bytes * prompt_tokens
    scores = shape.heads * prompt_tokens**2 * 4
    logits = shape.vocab * 4 * 2
    return kv + activations + scores + logits


def plan_eval(
    gpu_memory_bytes: int,
    shape: EvalShape,
    *,
    prompt_tokens: int,
    new_tokens: int,
    samples: int,
    weight_bytes: int = 2,
    max_batch: int = MAX_BATCH,
) -> EvalPlan:
    """The batch for `samples` prompts of at most `prompt_tokens`, each answered with at most
    `new_tokens`. Batches are evened out (300 samples that allow 256 go as 2 x 150, not 256 + 44).
    Raises ValueError when not even one sample fits beside the weights (the caller keeps its batch)."""
    if prompt_tokens < 1 or new_tokens < 1 or samples < 1:
        raise ValueError("prompt length, new tokens and sample count must be at least 1")
    budget = gpu_memory_bytes * HEADROOM
    fixed = shape.params * weight_bytes + FIXED_BYTES
    each = per_sample_bytes(shape, prompt_tokens, new_tokens)
    fit = int((budget - fixed) // each) if budget > fixed else 0
    if fit < 1:
        raise ValueError(
            f"a {shape.params / 1e9:.1f} B model and one sample of {prompt_tokens} + {new_tokens} "
            f"tokens do not fit in {gpu_memory_bytes / 2**30:.0f} GiB"
        )
    batch = min(fit, samples, max(1, max_batch))
    n_batches = math.ceil(samples / batch)
    batch = math.ceil(samples / n_batches)
    return EvalPlan(
        batch=batch,
        n_batches=n_batches,
        per_sample_bytes=int(each),
        est_peak_bytes=int(fixed + batch * each),
        max_fit=fit,
    )
