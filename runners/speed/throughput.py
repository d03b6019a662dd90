"""True training throughput: tokens seen, tokens/s and MFU, counted by tunebot rather than taken
from LLaMA-Factory.

LLaMA-Factory's `include_num_input_tokens_seen` count goes wrong under `neat_packing` (it printed
-4.2e18 tokens/s on an H200, see docs/benchmarks.md) and counts padding without it. The epoch
fraction it logs is right in every mode, so tunebot counts the dataset's non-padding tokens once
before launch (`runners.speed.tokencount`) and derives tokens seen = epoch x tokens per epoch.

MFU here is the issue's definition: 4 x parameters x tokens/s over the GPU's dense bf16 peak
(forward 2 + backward-through-activations 2 FLOPs per parameter per token for LoRA; attention
not counted). Pure arithmetic; no torch.
"""

from __future__ import annotations

import math
from typing import Any

# Dense bf16 tensor-core peak per GPU, TFLOP/s, from the vendors' datasheets (no sparsity).
# Matched by substring against nvidia-smi's name, most specific first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A40", 150.0),
    ("A30", 165.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L20", 119.5),
    ("L4", 121.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX A6000", 155.0),
    ("RTX 5090", 209.5),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)

# Above this a tokens/s figure is a broken count, not a measurement (an 8-GPU node of the fastest
# cards trains a 1B model at well under 10 M tokens/s).
ABSURD_TOKENS_PER_S = 5e7


def bf16_peak_flops(gpu_name: str | None) -> float | None:
    """The card's dense bf16 peak in FLOP/s, or None for a card not in the table."""
    if not gpu_name:
        return None
    name = gpu_name.upper()
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.upper() in name:
            return tflops * 1e12
    return None


def short_gpu_name(gpu_name: str | None) -> str:
    """'NVIDIA H200' -> 'H200', 'NVIDIA H100 80GB HBM3' -> 'H100'; unknown cards keep their name."""
    if not gpu_name:
        return "GPU"
    name = gpu_name.upper()
    for key, _ in BF16_PEAK_TFLOPS:
        if key.upper() in name:
            return key
    return gpu_name.replace("NVIDIA ", "").strip() or "GPU"


def _int(config: dict[str, Any], *keys: str, default: int = 0) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def param_count(config: dict[str, Any]) -> int | None:
    """Parameters of a decoder-only transformer from its config.json (Llama, Qwen, Mistral...);
    None when the config lacks the sizes. Llama-3-8B's config gives 8,030,261,248."""
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(config, "vocab_size")
    if not (hidden and layers and vocab):
        return None
    intermediate = _int(config, "intermediate_size", "n_inner", default=4 * hidden)
    heads = _int(config, "num_attention_heads", "n_head", default=1)
    kv_heads = _int(config, "num_key_value_heads", default=heads)
    head_dim = _int(config, "head_dim", default=hidden // heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate  # gated MLP (gate, up, down)
    per_layer = attention + mlp + 2 * hidden  # + two norms
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return per_layer * layers + embeddings + hidden


def sane_rate(value: Any) -> float | None:
    """A tokens/s figure worth showing: finite, positive and not absurd; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value) or value <= 0 or value > ABSURD_TOKENS_PER_S:
        return None
    return value


def tokens_seen(epoch: Any, tokens_per_epoch: Any) -> int | None:
    """Non-padding tokens trained on so far: the logged epoch fraction x tokens in one epoch."""
    if isinstance(epoch, bool) or isinstance(tokens_per_epoch, bool):
        return None
    if not isinstance(epoch, (int, float)) or not isinstance(tokens_per_epoch, (int, float)):
        return None
    if not (math.isfinite(epoch) and math.isfinite(tokens_per_epoch)) or epoch < 0 or tokens_per_epoch <= 0:
        return None
    return int(round(epoch * tokens_per_epoch))


def tokens_per_second(tokens: Any, seconds: Any, *, min_seconds: float = 1.0) -> float | None:
    """tokens / seconds when both make sense; else None. The trainer log's elapsed time is whole
    seconds, so by default less than one second says nothing; a precise runtime may ask for less."""
    if isinstance(tokens, bool) or isinstance(seconds, bool):
        return None
    if not isinstance(tokens, (int, float)) or not isinstance(seconds, (int, float)):
        return None
    if seconds < min_seconds or seconds <= 0 or tokens <= 0:
        return None
    return sane_rate(tokens / seconds)


def mfu(tokens_per_s: Any, params: Any, gpu_name: str | None, n_gpus: int = 1) -> float | None:
    """Model FLOPs utilisation, 0-1: 4 x params x tokens/s over n_gpus x the card's bf16 peak."""
    rate = sane_rate(tokens_per_s)
    peak = bf16_peak_flops(gpu_name)
    if rate is None or peak is None or not isinstance(params, int) or params <= 0 or n_gpus < 1:
        return None
    return 4.0 * params * rate / (peak * n_gpus)


def true_progress(
    progress: dict[str, Any],
    tokens_per_epoch: int | None,
    since: dict[str, Any] | None = None,
    *,
    resumed: bool = False,
) -> dict[str, Any]:
    """A trainer-log progress dict with tokens seen and tokens/s counted by tunebot.

    With the dataset's token count known they come from the epoch; without it, LLaMA-Factory's own
    figures are kept only when they are sane (never negative or absurd). `since`: the run's first
    logged point; once ten seconds have passed since it, tokens/s and the time remaining are
    measured from it, so the minutes a compiled model spends compiling in its first step read as
    start-up, not as a slow GPU and a far-off end. `resumed`: a resumed run's log clock restarted
    while its epoch did not, so tokens since the start over that clock would be false: only the
    rate measured from `since` is shown."""
    out = dict(progress)
    seen = tokens_seen(progress.get("epoch"), tokens_per_epoch) if tokens_per_epoch else None
    if seen is not None:
        out["total_tokens"] = seen
        out["tokens_per_s"] = None if resumed else tokens_per_second(seen, progress.get("elapsed_s"))
    else:
        out["tokens_per_s"] = sane_rate(progress.get("tokens_per_s"))
        total = progress.get("total_tokens")
        out["total_tokens"] = total if isinstance(total, int) and 0 < total < 1e15 else None
    if since:
        out.update(_since(progress, since, tokens_per_epoch))
    return {k: v for k, v in out.items() if v is not None or k not in ("tokens_per_s", "total_tokens")}


def _since(progress: dict[str, Any], since: dict[str, Any], tokens_per_epoch: int | None) -> dict[str, Any]:
    numbers = [progress.get("elapsed_s"), since.get("elapsed_s"), progress.get("step"), since.get("step")]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
        return {}
    t, t0, step, step0 = (float(x) for x in numbers)
    if t - t0 < 10.0 or step <= step0:
        return {}
    out: dict[str, Any] = {}
    total = progress.get("total")
    if isinstance(total, int) and total >= step:
        out["remaining_s"] = round((total - step) * (t - t0) / (step - step0), 1)
    rate = steady_rate([(t0, since.get("epoch")), (t, progress.get("epoch"))], tokens_per_epoch)
    if rate is not None:
        out["tokens_per_s"] = rate
    return out


def steady_rate(
    points: list[tuple[float, float]], tokens_per_epoch: Any, *, min_span_s: float = 10.0
) -> float | None:
    """Tokens/s while training, from the trainer log's (elapsed seconds, epoch) points in log order:
    from the first logged step to the last, so loading and compiling (all in the first step) are
    left out. A resumed run restarts the log's clock: only the points after the last restart count.
    None when they span less than `min_span_s` (the log's times are whole seconds)."""
    usable = [
        (float(t), float(e)) for t, e in points
        if isinstance(t, (int, float)) and isinstance(e, (int, float))
        and not isinstance(t, bool) and not isinstance(e, bool)
        and math.isfinite(t) and math.isfinite(e)
    ]
    for i in range(len(usable) - 1, 0, -1):
        if usable[i][0] < usable[i - 1][0]:
            usable = usable[i:]
            break
    if len(usable) < 2 or not isinstance(tokens_per_epoch, (int, float)) or tokens_per_epoch <= 0:
        return None
    (t0, e0), (t1, e1) = usable[0], usable[-1]
    if t1 - t0 < min_span_s or e1 <= e0:
        return None
    return sane_rate((e1 - e0) * tokens_per_epoch / (t1 - t0))
