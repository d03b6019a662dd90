"""The short keys people type for a train job (`lr=1e-4`): what each means, what it may be, and its
default in every preset — the one source the help, did-you-mean and range checks read.

The LLaMA-Factory argument each key stands for is `recipes.TRAIN_KEYS`'; a preset's default is read
from the preset registry (`recipes.PRESETS`), so a new preset shows up in the help by itself.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .recipes import COMPUTE_TYPES, METHODS, PRESETS, TRAIN_KEYS, Preset, compute_type_of, method_of


@dataclass(frozen=True)
class Range:
    """Numbers a key may take: `low`/`high` None = unbounded; `*_open` = the bound itself is excluded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def text(self) -> str:
        """`> 0`, `≥ 1`, `0 ≤ x < 1`."""
        low = None if self.low is None else f"{self.low:g} {'<' if self.low_open else '≤'} "
        high = None if self.high is None else f" {'<' if self.high_open else '≤'} {self.high:g}"
        if low and high:
            return f"{low}x{high}"
        if low:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if high:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return "any number"


POSITIVE = Range(0, None, low_open=True)
AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)


@dataclass(frozen=True)
class KeyHelp:
    key: str  # what people type
    arg: str | None  # the LLaMA-Factory argument (None: tunebot's own, e.g. method, compute, gpus)
    meaning: str
    allowed: str  # in words, for the help
    range: Range | None = None


TRAIN_KEY_HELP: tuple[KeyHelp, ...] = (
    KeyHelp("model", "model_name_or_path", "the base model: a folder on the runner, a name under its "
            "models/ folder, or a hub id", "a path or hub id"),
    KeyHelp("dataset", "dataset", "registered training data (`datasets` lists them); several: a,b",
            "registered dataset names"),
    KeyHelp("method", None, "how the weights are tuned", ", ".join(METHODS)),
    KeyHelp("compute", None, "number format of the training", ", ".join(COMPUTE_TYPES)),
    KeyHelp("template", "template", "the model's chat format (LLaMA-Factory's template name)",
            "e.g. llama3, qwen, default"),
    KeyHelp("lr", "learning_rate", "learning rate", "a number > 0", POSITIVE),
    KeyHelp("epochs", "num_train_epochs", "passes over the dataset", "a number > 0", POSITIVE),
    KeyHelp("steps", "max_steps", "stop after this many optimizer steps (overrides epochs)",
            "a whole number ≥ 1", AT_LEAST_1),
    KeyHelp("batch", "per_device_train_batch_size", "examples per GPU per step", "a whole number ≥ 1",
            AT_LEAST_1),
    KeyHelp("grad_accum", "gradient_accumulation_steps", "steps whose gradients add up to one update",
            "a whole number ≥ 1", AT_LEAST_1),
    KeyHelp("cutoff", "cutoff_len", "longest example in tokens (longer ones are cut)", "a whole number ≥ 1",
            AT_LEAST_1),
    KeyHelp("samples", "max_samples", "use at most this many examples of the dataset", "a whole number ≥ 1",
            AT_LEAST_1),
    KeyHelp("rank", "lora_rank", "LoRA rank (size of the adapter)", "a whole number ≥ 1", AT_LEAST_1),
    KeyHelp("alpha", "lora_alpha", "LoRA scaling (often 2 × rank)", "a whole number ≥ 1", AT_LEAST_1),
    KeyHelp("dropout", "lora_dropout", "LoRA dropout", "0 ≤ x < 1", Range(0, 1, high_open=True)),
    KeyHelp("target", "lora_target", "layers that get LoRA", "all, or names like q_proj,v_proj"),
    KeyHelp("loraplus", "loraplus_lr_ratio", "LoRA+ learning-rate ratio of B to A (0: off)", "a number ≥ 0",
            AT_LEAST_0),
    KeyHelp("warmup", "warmup_steps", "steps the learning rate ramps up over", "a whole number ≥ 0",
            AT_LEAST_0),
    KeyHelp("scheduler", "lr_scheduler_type", "how the learning rate changes", "cosine, linear, constant, …"),
    KeyHelp("gpus", None, "GPUs for the job (one process each)", "a whole number ≥ 1", AT_LEAST_1),
)
# Ranges of LLaMA-Factory arguments people may give by their own name or in a YAML, too.
ARG_RANGES: dict[str, Range] = {
    **{k.arg: k.range for k in TRAIN_KEY_HELP if k.arg and k.range},
    "per_device_eval_batch_size": AT_LEAST_1,
    "max_new_tokens": AT_LEAST_1,
    "temperature": POSITIVE,
    "top_p": Range(0, 1, low_open=True),
}
_SHORT_OF = {k.arg: k.key for k in TRAIN_KEY_HELP if k.arg}


def aliases(key: KeyHelp) -> list[str]:
    """Other names for the key (`learning_rate` for `lr`), the LLaMA-Factory name first."""
    names = [key.arg] if key.arg and key.arg != key.key else []
    return names + [a for a, arg in TRAIN_KEYS.items() if arg == key.arg and a not in (key.key, key.arg)]


def preset_default(preset: Preset, key: KeyHelp) -> str:
    """What the preset sets for `key`, as people would type it; "—" when it sets nothing."""
    values = preset.values
    if key.key == "method":
        return method_of(values)
    if key.key == "compute":
        return compute_type_of(values)
    if key.key == "gpus":
        return "1"
    value = values.get(key.arg or "")
    if value is None or value == "":
        # seed and seed-cli leave the model and data to the request (or the operator's defaults)
        return _UNSET.get(key.key, "—")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)
    return str(value)


_UNSET = {"model": "— (TUNEBOT_DEFAULT_MODEL)", "dataset": "— (TUNEBOT_DEFAULT_DATASET)"}


def number_text(value: float) -> str:
    """1e-4 as people write it (`1e-4`, not `0.0001` or `1e-04`); 3.0 as `3`."""
    if value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


def presets() -> list[Preset]:
    return list(PRESETS.values())


def check_ranges(args: dict[str, Any], typed: dict[str, str] | None = None) -> None:
    """Numbers out of range are refused, naming the range; `typed` (what the person wrote) names
    the key as they wrote it."""
    written = {TRAIN_KEYS.get(k.strip().lower(), k.strip().lower()): k for k in (typed or {})}
    for arg, allowed in ARG_RANGES.items():
        if arg not in args or args[arg] is None or isinstance(args[arg], bool):
            continue
        try:
            value = float(args[arg])
        except (TypeError, ValueError):
            continue  # not a number: LLaMA-Factory's parser says so
        if math.isfinite(value) and (allowed.holds(value) or (arg == "max_steps" and value == -1)):
            continue  # max_steps -1 is the trainer's own "no limit"
        name = written.get(arg) or _SHORT_OF.get(arg) or arg
        also = f" ({arg})" if name != arg else ""
        raise UserError(
            f"`{name}`{also} must be {allowed.text()}, not {args[arg]!r}.",
            field=name,
            fix=f"{name}=… in the range {allowed.text()} (`help train` lists every key)",
        )


def did_you_mean(key: str, known: list[str]) -> str | None:
    """The closest of tunebot's short keys and `known` (LLaMA-Factory's argument names)."""
    ours = [k.key for k in TRAIN_KEY_HELP] + list(TRAIN_KEYS)
    close = difflib.get_close_matches(key, ours + known, n=1, cutoff=0.6)
    return close[0] if close else None
