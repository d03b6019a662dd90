"""Check a recipe before it is queued: LLaMA-Factory's own parser judges the arguments, tunebot
checks what the parser cannot (dataset registered, model present, the runner's hardware).

Every complaint becomes one `UserError` naming the field and the fix, and no GPU time is spent.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import threading
import typing
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from ..env import parse_flag
from ..errors import UserError
from ..hardware import Hardware
from ..job import JobKind
from .recipes import Recipe, compute_type_of

_PARSER_LOCK = threading.Lock()
_PRECISION_KEYS = ("bf16", "fp16", "pure_bf16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def llamafactory_available() -> bool:
    try:
        import llamafactory  # noqa: F401
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=2)
def _parser(family: str):
    """LLaMA-Factory's HfArgumentParser for train-style (train, eval) or infer-style (export, deploy) runs."""
    from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS
    from transformers import HfArgumentParser

    classes = _TRAIN_ARGS if family == "train" else _INFER_ARGS
    parser = HfArgumentParser(classes)
    # The declared types, not `Field.type`: HfArgumentParser narrows `str | bool` fields to bool.
    annotations = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclass_fields(cls):
            annotations[f.name] = str(hints.get(f.name, f.type))
    return parser, {a.dest: a for a in parser._actions if a.dest != "help"}, annotations


def _family(kind: str) -> str:
    return "train" if kind in (JobKind.TRAIN.value, JobKind.EVAL.value) else "infer"


def _convert(key: str, value: Any, action, annotation: str) -> Any:
    """Convert one value the way LLaMA-Factory's command line would, with a readable error."""
    if value is None:
        return None
    convert = action.type
    name = getattr(convert, "__name__", "")
    if name == "string_to_bool":
        flag = parse_flag(value)
        if flag is not None:
            return flag
        if "str" in annotation:  # e.g. include_num_input_tokens_seen: str | bool
            return str(value)
        raise UserError(f"`{key}` must be true or false, not {value!r}.", field=key, fix=f"{key}=true")
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [v for v in re.split(r"[,\s]+", str(value)) if v]
        return [_convert_scalar(key, item, convert, action.choices) for item in items]
    return _convert_scalar(key, value, convert, action.choices, action.default)


def _convert_scalar(key: str, value: Any, convert, choices, default: Any = None) -> Any:
    if convert is None or convert is str:
        result = value
        if choices and str(result) not in [str(c) for c in choices]:
            raise _choice_error(key, value, choices)
        return result
    if isinstance(value, bool) and convert in (int, float):
        raise UserError(f"`{key}` must be a number, not {value!r}.", field=key, fix=f"{key}=…")
    try:
        result = convert(value) if not isinstance(value, str) else convert(value.strip())
    except (TypeError, ValueError):
        if choices:
            raise _choice_error(key, value, choices) from None
        kind = {int: "a whole number", float: "a number"}.get(convert, "valid")
        example = {int: "8", float: "1e-4"}.get(convert, "…")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0:
            example = f"{default:g}"  # the argument's own default, e.g. num_train_epochs=3
        raise UserError(
            f"`{key}` must be {kind}, not {value!r}.", field=key, fix=f"{key}={example}"
        ) from None
    if choices and str(getattr(result, "value", result)) not in [
        str(getattr(c, "value", c)) for c in choices
    ]:
        raise _choice_error(key, value, choices)
    return getattr(result, "value", result)


def _choice_error(key: str, value: Any, choices) -> UserError:
    names = [str(getattr(c, "value", c)) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"{key}={close[0]}" if close else f"one of: {', '.join(names[:12])}"
    return UserError(f"`{key}` cannot be {value!r}.", field=key, fix=hint)


def _unknown_key_error(key: str, known: list[str]) -> UserError:
    from .recipes import TRAIN_KEYS

    close = difflib.get_close_matches(key, known + list(TRAIN_KEYS), n=1, cutoff=0.6)
    fix = f"did you mean `{close[0]}`?" if close else "see LLaMA-Factory's argument list, or `help`"
    return UserError(f"Unknown key `{key}`: LLaMA-Factory has no such argument.", field=key, fix=fix)


_LF_MESSAGES = [
    (
        re.compile(r"`(\w+)` is only valid for LoRA training"),
        "`{0}` only applies to LoRA; use method=lora or leave it out",
    ),
    (
        re.compile(r"Quantization is only compatible with the LoRA"),
        "QLoRA needs method=lora (or method=qlora)",
    ),
    (re.compile(r"Adapter is only valid for the LoRA method"), "an adapter needs finetuning_type lora"),
]


def _translate(exc: Exception) -> UserError:
    text = str(exc).strip() or type(exc).__name__
    match = re.search(r"Some keys are not used by the HfArgumentParser: \[(.*)\]", text)
    if match:
        keys = [k.strip(" '\"") for k in match.group(1).split(",")]
        return UserError(f"Unknown key(s): {', '.join(keys)}.", field=keys[0], fix="leave them out")
    for pattern, fix in _LF_MESSAGES:
        m = pattern.search(text)
        if m:
            field = m.group(1) if m.groups() else None
            return UserError(
                f"LLaMA-Factory rejected the arguments: {text}", field=field, fix=fix.format(*m.groups())
            )
    if text == "Invalid fine-tuning method.":
        return UserError(
            "Invalid fine-tuning method.", field="method", fix="method=lora (or qlora, freeze, full)"
        )
    return UserError(f"LLaMA-Factory rejected the arguments: {text}")


def check_with_llamafactory(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Convert and check `args` with LLaMA-Factory's parser; returns the converted arguments."""
    parser, actions, annotations = _parser(_family(kind))
    converted: dict[str, Any] = {}
    for key, value in args.items():
        action = actions.get(key)
        if action is None:
            raise _unknown_key_error(key, list(actions))
        converted[key] = _convert(key, value, action, annotations.get(key, ""))
    for key, value in converted.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"`{key}` must be a finite number, not {value!r}.", field=key, fix=f"{key}=…")
    if converted.get("template"):
        _check_template(str(converted["template"]))
    # Precision is judged against the runner's hardware (check_hardware), not this process's.
    probe = {k: v for k, v in converted.items() if k not in _PRECISION_KEYS}
    if _family(kind) == "train":
        probe.setdefault("output_dir", "/nonexistent/tunebot-validate")
    with _PARSER_LOCK:
        try:
            parsed = parser.parse_dict(probe)
            from llamafactory.hparams.parser import _check_extra_dependencies, _verify_model_args

            if _family(kind) == "train":
                model_args, data_args, training_args, finetuning_args, _ = parsed
                _verify_model_args(model_args, data_args, finetuning_args)
                _check_extra_dependencies(model_args, finetuning_args, training_args)
            else:
                model_args, data_args, finetuning_args, _ = parsed
                _verify_model_args(model_args, data_args, finetuning_args)
                _check_extra_dependencies(model_args, finetuning_args)
        except UserError:
            raise
        except (ValueError, AssertionError, TypeError) as exc:
            raise _translate(exc) from None
        except ImportError as exc:
            raise UserError(f"The runner lacks a package this needs: {exc}.") from None
    return converted


def _check_template(name: str) -> None:
    from llamafactory.data.template import TEMPLATES

    if name not in TEMPLATES:
        close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        fix = (
            f"template={close[0]}"
            if close
            else "template=llama3 (LLaMA-Factory's name for the model's chat format)"
        )
        raise UserError(f"LLaMA-Factory has no chat template {name!r}.", field="template", fix=fix)


def check_hardware(recipe: Recipe, hardware: Hardware, slots: list[str]) -> None:
    compute = compute_type_of(recipe.args)
    if compute in ("bf16", "pure_bf16") and not hardware.supports_bf16:
        where = (
            "has no GPU" if not hardware.has_gpu else "has a GPU without bf16 support (needs Ampere or newer)"
        )
        raise UserError(
            f"compute={compute} needs a GPU with bf16, and this runner {where}.",
            field="compute",
            fix="compute=fp32" if not hardware.has_gpu else "compute=fp16",
        )
    if compute == "fp16" and not hardware.supports_fp16:
        raise UserError(
            "compute=fp16 needs a GPU, and this runner has none.", field="compute", fix="compute=fp32"
        )
    if recipe.n_slots > len(slots):
        unit = "GPU" if hardware.has_gpu else "slot"
        raise UserError(
            f"This asks for {recipe.n_slots} {unit}s and the runner has {len(slots)}.",
            field="gpus",
            fix=f"gpus={len(slots)}",
        )
    if recipe.n_slots > 1 and not hardware.has_gpu:
        raise UserError("gpus=N>1 needs a GPU host.", field="gpus", fix="gpus=1")
    if recipe.args.get("quantization_bit") not in (None, "", "none") and not hardware.has_gpu:
        raise UserError(
            "QLoRA (4/8-bit) needs a GPU; this runner has none.", field="method", fix="method=lora"
        )


def resolve_model_path(model: str, models_dir: Path) -> str:
    """A model given as a path, a name under the data dir's models/, or a hub id."""
    candidates = [Path(model).expanduser()]
    if not Path(model).is_absolute():
        candidates.append(models_dir / model)
    for path in candidates:
        if path.is_dir():
            if not (path / "config.json").exists():
                raise UserError(
                    f"{path} is a folder but holds no model (no config.json).",
                    field="model",
                    fix="give the folder that holds config.json and the weights",
                )
            return str(path.resolve())
    if _HUB_ID.match(model) and not model.startswith((".", "~")):
        return model  # a hub id: the runner host may download it (not checked here)
    raise UserError(
        f"Model {model!r} was not found on the runner.",
        field="model",
        fix="give a local folder (model=/models/Meta-Llama-3-8B-Instruct) or a name under "
        f"{models_dir}, or a hub id like meta-llama/Meta-Llama-3-8B-Instruct",
    )


def check_adapter(path: str | None) -> None:
    if path and not Path(path).is_dir():
        raise UserError(
            f"The adapter folder {path} is gone from the runner.",
            field="job",
            fix="train again or restore it",
        )


def dataset_names(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]
