"""The train form (a modal like LLaMA-Factory's WebUI) and reading its answers back into key=value pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runners.errors import UserError
from runners.llamafactory.recipes import COMPUTE_TYPES, METHODS, TRAIN_KEYS, compute_type_of, method_of

from .blocks import (
    MODAL_TITLE_MAX,
    OPTION_TEXT_MAX,
    plain,
    section,
    truncate,
)

TRAIN_FORM_CALLBACK = "train_form"


@dataclass(frozen=True)
class FormField:
    key: str  # block_id and action_id; a key=value key the engine accepts
    label: str
    hint: str = ""
    options: tuple[tuple[str, str], ...] = ()  # (value, label) for a select
    multiline: bool = False
    placeholder: str = ""


_METHOD_LABELS = {
    "lora": "LoRA",
    "qlora": "QLoRA (4-bit LoRA)",
    "freeze": "Freeze (train the last layers)",
    "full": "Full fine-tuning",
}
_COMPUTE_LABELS = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "pure_bf16": "pure bf16"}

FORM_FIELDS: tuple[FormField, ...] = (
    FormField(
        "model",
        "Model",
        "A local path on the GPU host, or a Hugging Face model id.",
        placeholder="/models/Meta-Llama-3-8B-Instruct",
    ),
    FormField("method", "Fine-tuning method", options=tuple((m, _METHOD_LABELS.get(m, m)) for m in METHODS)),
    FormField(
        "dataset",
        "Dataset",
        "A registered dataset (`/tune datasets`); several: train,extra.",
        placeholder="train",
    ),
    FormField("learning_rate", "Learning rate", placeholder="1e-4"),
    FormField(
        "compute", "Compute type", options=tuple((c, _COMPUTE_LABELS.get(c, c)) for c in COMPUTE_TYPES)
    ),
    FormField("gradient_accumulation_steps", "Gradient accumulation steps", placeholder="2"),
    FormField("loraplus_lr_ratio", "LoRA+ learning-rate ratio", "0 turns LoRA+ off.", placeholder="16"),
    FormField(
        "lora_target", "LoRA target modules", "`all`, or names such as q_proj,v_proj.", placeholder="all"
    ),
    FormField("num_train_epochs", "Epochs", placeholder="3"),
    FormField("cutoff_len", "Cutoff length (tokens)", placeholder="2048"),
    FormField("per_device_train_batch_size", "Batch size per device", placeholder="2"),
    FormField(
        "yaml",
        "Or paste a LLaMA-Factory YAML",
        "If you paste one, it is the config: only the fields above that you changed are applied on top.",
        multiline=True,
        placeholder="model_name_or_path: ...\nlearning_rate: 1.0e-4",
    ),
)
_FORM_KEYS = {f.key for f in FORM_FIELDS}
# LLaMA-Factory's names (and the engine's short keys) for the form's fields.
_FIELD_OF = {
    **{alias: target for alias, target in TRAIN_KEYS.items() if target in _FORM_KEYS},
    "model": "model",
    "model_name_or_path": "model",
    "finetuning_type": "method",
    "quantization_bit": "method",
    "bf16": "compute",
    "fp16": "compute",
    "pure_bf16": "compute",
    "compute_type": "compute",
    "precision": "compute",
}


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def form_defaults(defaults: dict[str, Any]) -> dict[str, str]:
    """The form's initial values from a preset's LLaMA-Factory arguments (or the form's own keys)."""
    out: dict[str, str] = {}
    for key, value in defaults.items():
        target = key if key in _FORM_KEYS else _FIELD_OF.get(key)
        if target and target not in ("method", "compute") and value not in (None, ""):
            out.setdefault(target, _as_text(value))
    if "method" in defaults:
        out["method"] = str(defaults["method"])
    elif "finetuning_type" in defaults:
        out["method"] = method_of(defaults)
    if "compute" in defaults:
        out["compute"] = str(defaults["compute"])
    elif any(k in defaults for k in ("bf16", "fp16", "pure_bf16")):
        out["compute"] = compute_type_of(defaults)
    for key in ("model", "dataset"):  # the form's own keys win over LLaMA-Factory's names
        if defaults.get(key):
            out[key] = _as_text(defaults[key])
    return out


def _input_block(spec: FormField, initial: str | None) -> dict[str, Any]:
    if spec.options:
        options = [{"text": plain(label, OPTION_TEXT_MAX), "value": value} for value, label in spec.options]
        element: dict[str, Any] = {
            "type": "static_select",
            "action_id": spec.key,
            "options": options,
            "placeholder": plain("Choose", 150),
        }
        chosen = [o for o in options if o["value"] == initial]
        if chosen:
            element["initial_option"] = chosen[0]
    else:
        element = {"type": "plain_text_input", "action_id": spec.key, "multiline": spec.multiline}
        if spec.placeholder:
            element["placeholder"] = plain(spec.placeholder, 150)
        if initial:
            element["initial_value"] = truncate(initial, 3000)
    block: dict[str, Any] = {
        "type": "input",
        "block_id": spec.key,
        "optional": True,
        "label": plain(spec.label, 150),
        "element": element,
    }
    if spec.hint:
        block["hint"] = plain(spec.hint, 150)
    return block


def render_train_modal(
    defaults: dict[str, Any], *, private_metadata: str = "", title: str = "Fine-tune a model"
) -> dict[str, Any]:
    """The `/tune train` form, mirroring LLaMA-Factory's WebUI, filled in from `defaults` (the
    engine's `seed` preset). Returns the view for views.open; its callback_id is "train_form"."""
    initial = form_defaults(defaults)
    blocks = [
        section("The fields start at the `seed` recipe. Each job gets a message here with its progress."),
        *[_input_block(spec, initial.get(spec.key)) for spec in FORM_FIELDS],
    ]
    return {
        "type": "modal",
        "callback_id": TRAIN_FORM_CALLBACK,
        "title": plain(title, MODAL_TITLE_MAX),
        "submit": plain("Train", MODAL_TITLE_MAX),
        "close": plain("Cancel", MODAL_TITLE_MAX),
        "private_metadata": private_metadata[:3000],
        "blocks": blocks,
    }


def _initial_values(blocks: Sequence[dict[str, Any]]) -> dict[str, str]:
    initial: dict[str, str] = {}
    for block in blocks:
        element = block.get("element") or {}
        if "initial_value" in element:
            initial[block.get("block_id", "")] = element["initial_value"]
        elif element.get("initial_option"):
            initial[block.get("block_id", "")] = element["initial_option"]["value"]
    return initial


def modal_values(view_or_state: dict[str, Any]) -> dict[str, str]:
    """A submitted train form -> key=value pairs for the engine (`yaml` holds a pasted YAML).

    Give it the submitted `view` (preferred) or just `view["state"]`. With the view, when a YAML
    was pasted, fields left at their initial value are dropped: the YAML is the config and only
    what the person changed goes on top of it.
    """
    state = view_or_state.get("state", view_or_state)
    values: dict[str, str] = {}
    for block_id, actions in (state.get("values") or {}).items():
        for entry in actions.values():
            kind = entry.get("type")
            if kind in ("static_select", "radio_buttons"):
                value = (entry.get("selected_option") or {}).get("value")
            else:
                value = entry.get("value")
            if value is None:
                continue
            value = str(value) if block_id == "yaml" else str(value).strip()
            if value.strip():
                values[block_id] = value
    if "yaml" in values and "blocks" in view_or_state:
        initial = _initial_values(view_or_state["blocks"])
        values = {k: v for k, v in values.items() if k == "yaml" or initial.get(k) != v}
    return values


def render_modal_errors(error: UserError, values: dict[str, str] | None = None) -> dict[str, Any]:
    """A view_submission answer that shows the engine's complaint under the field it is about."""
    field = (error.field or "").strip().lower()
    block = field if field in _FORM_KEYS else _FIELD_OF.get(field)
    if block is None:
        block = "yaml" if values and "yaml" in values else "model"
    return {"response_action": "errors", "errors": {block: truncate(error.text(), 2000)}}
