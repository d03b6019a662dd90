"""A job request -> the LLaMA-Factory argument set for each kind of job.

Pure functions over plain data: presets, the friendly keys people type (`lr=1e-4`), a pasted
LLaMA-Factory YAML. Values stay as typed here; `validation` converts them with LLaMA-Factory's
own parser, which is the one place each argument is declared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..env import is_set, parse_flag
from ..errors import UserError, shorten
from ..inputs import bounded_yaml
from ..job import Job, JobKind, JobState, state_phrase
from .presets import (  # noqa: F401  (names the rest of tunebot reads through recipes)
    DEFAULT_PRESET,
    DEMO_DATASET,
    DEMO_EVAL_DATASET,
    PRESETS,
    TINY_MODEL,
    Preset,
)

MERGED = "merged"  # the method shown for a model whose LoRA was merged in by an export


# What tunebot always sets on a train run, whatever the preset or YAML says.
_TRAIN_ALWAYS = {"plot_loss": True, "include_num_input_tokens_seen": "non_padding", "save_total_limit": 2}

# Friendly keys (the WebUI's field names and short forms) -> LLaMA-Factory argument names.
TRAIN_KEYS = {
    "model": "model_name_or_path",
    "template": "template",
    "dataset": "dataset",
    "lr": "learning_rate",
    "learning_rate": "learning_rate",
    "epochs": "num_train_epochs",
    "cutoff": "cutoff_len",
    "batch": "per_device_train_batch_size",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "accum": "gradient_accumulation_steps",
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target": "lora_target",
    "loraplus": "loraplus_lr_ratio",
    "lora_plus": "loraplus_lr_ratio",
    "loraplus_ratio": "loraplus_lr_ratio",
    "lora+": "loraplus_lr_ratio",
    "steps": "max_steps",
    "samples": "max_samples",
    "warmup": "warmup_steps",
    "scheduler": "lr_scheduler_type",
}
EVAL_KEYS = {
    "dataset": "eval_dataset",
    "batch": "per_device_eval_batch_size",
    "batch_size": "per_device_eval_batch_size",
    "samples": "max_samples",
    "cutoff": "cutoff_len",
    "template": "template",
}
EXPORT_KEYS = {
    "shard": "export_size",
    "shard_gb": "export_size",
    "device": "export_device",
    "template": "template",
}
DEPLOY_KEYS = {"template": "template"}

COMPUTE_TYPES = ("bf16", "fp16", "fp32", "pure_bf16")
METHODS = ("lora", "qlora", "freeze", "full")
DEPLOY_MODES = ("api", "webchat")

# Keys tunebot owns: where outputs go and where datasets live.
_MANAGED = {"output_dir", "dataset_dir", "export_dir", "overwrite_output_dir", "logging_dir"}


@dataclass
class Recipe:
    """What a front end asked for, resolved: the LLaMA-Factory arguments and what to show."""

    kind: JobKind | str  # a kind declared in runners/kinds/ (JobKind names the built-in ones)
    args: dict[str, Any]
    model: str
    dataset: str | None = None
    method: str | None = None
    preset: str | None = None
    n_slots: int = 1
    mode: str | None = None
    parent_id: int | None = None
    spec: dict[str, Any] = field(default_factory=dict)


def compute_type_of(args: dict[str, Any]) -> str:
    if is_set(args.get("pure_bf16")):
        return "pure_bf16"
    if is_set(args.get("bf16")):
        return "bf16"
    if is_set(args.get("fp16")):
        return "fp16"
    return "fp32"


def parse_yaml_spec(text: str) -> dict[str, Any]:
    """A pasted LLaMA-Factory YAML (code fences allowed) -> its argument dict."""
    body = re.sub(r"^\s*```[a-zA-Z]*\s*\n?|\n?\s*```\s*$", "", text.strip())
    try:
        data = bounded_yaml.load(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"The YAML could not be read{where}: {shorten(getattr(exc, 'problem', None) or exc, 160)}.",
            field="yaml",
            fix="paste a LLaMA-Factory config such as `learning_rate: 1.0e-4` one key per line",
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            "The YAML must be a mapping of LLaMA-Factory arguments (key: value lines).", field="yaml"
        )
    return {str(k): v for k, v in data.items()}


def _apply_compute(args: dict[str, Any], value: str) -> None:
    value = value.strip().lower()
    if value not in COMPUTE_TYPES:
        raise UserError(
            f"compute={shorten(value)!r} is not a compute type.",
            field="compute",
            fix="compute=bf16 (or fp16, fp32, pure_bf16)",
        )
    for key in ("bf16", "fp16", "pure_bf16"):
        args.pop(key, None)
    if value != "fp32":
        args[value] = True


def _apply_method(args: dict[str, Any], value: str) -> None:
    value = value.strip().lower()
    if value not in METHODS:
        raise UserError(
            f"method={shorten(value)!r} is not a fine-tuning method.",
            field="method",
            fix="method=lora (or qlora, freeze, full)",
        )
    if value == "qlora":
        args["finetuning_type"] = "lora"
        args.setdefault("quantization_bit", 4)
        args["quantization_method"] = "bnb"
    else:
        args["finetuning_type"] = value
        args.pop("quantization_bit", None)
    if value in ("freeze", "full"):
        for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "loraplus_lr_ratio"):
            args.pop(key, None)


_LORA_ONLY = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "loraplus_lr_ratio")


def _refuse_lora_keys_without_lora(args: dict[str, Any], pairs: dict[str, str]) -> None:
    """LLaMA-Factory ignores most LoRA settings under freeze/full tuning; say so instead."""
    if str(args.get("finetuning_type", "lora")) == "lora":
        return
    for raw in pairs:
        key = TRAIN_KEYS.get(raw.strip().lower(), raw.strip().lower())
        if key in _LORA_ONLY:
            raise UserError(
                f"`{raw}` only applies to LoRA, and this job uses method={args['finetuning_type']}.",
                field=raw,
                fix=f"leave out {raw}=…, or use method=lora",
            )


def method_of(args: dict[str, Any]) -> str:
    ftype = str(args.get("finetuning_type", "lora"))
    if ftype == "lora" and args.get("quantization_bit") not in (None, "", "none"):
        return "qlora"
    return ftype


def _apply_pairs(args: dict[str, Any], pairs: dict[str, str], keys: dict[str, str]) -> int:
    """Overlay key=value pairs; returns the number of GPUs asked for (gpus=N)."""
    n_slots = 1
    for raw_key, value in pairs.items():
        key = raw_key.strip().lower().replace("-", "_") if raw_key.strip() != "lora+" else "lora+"
        if key in ("compute", "compute_type", "precision"):
            _apply_compute(args, str(value))
        elif key == "method":
            _apply_method(args, str(value))
        elif key == "gpus":
            try:
                n_slots = int(value)
            except ValueError:
                raise UserError(
                    f"gpus={shorten(value)!r} is not a whole number.", field="gpus", fix="gpus=2"
                ) from None
            if n_slots < 1:
                raise UserError("gpus must be at least 1.", field="gpus", fix="gpus=1")
        elif key in _MANAGED:
            raise UserError(
                f"`{key}` is set by tunebot (each job has its own output folder and the dataset registry).",
                field=key,
                fix=f"leave out {key}=…",
            )
        else:
            args[keys.get(key, key)] = value
    return n_slots


def train_recipe(
    *,
    preset: str | None = None,
    pairs: dict[str, str] | None = None,
    yaml_text: str | None = None,
    default_model: str | None = None,
    default_dataset: str | None = None,
) -> Recipe:
    pairs = dict(pairs or {})
    if yaml_text:
        args = parse_yaml_spec(yaml_text)
        for key in _MANAGED & set(args):
            args.pop(key)  # a pasted config's paths are the WebUI host's, not ours
        if preset:
            args = {**PRESETS[_preset_name(preset)].values, **args}
    else:
        args = dict(PRESETS[_preset_name(preset or DEFAULT_PRESET)].values)
    workers = _workers(pairs)
    rest = {k: v for k, v in pairs.items() if k.strip().lower() != "workers"}
    n_slots = _apply_pairs(args, rest, TRAIN_KEYS)
    _refuse_lora_keys_without_lora(args, pairs)
    stage = str(args.get("stage", "sft"))
    if stage != "sft":
        raise UserError(
            f"stage={shorten(stage)} is not supported: tunebot runs supervised fine-tuning (stage sft).",
            field="stage",
            fix="stage: sft",
        )
    args["stage"] = "sft"
    args["do_train"] = True
    args.update(_TRAIN_ALWAYS)
    if not args.get("model_name_or_path"):
        if not default_model:
            raise UserError(
                "No model given.",
                field="model",
                fix="add model=/path/to/Meta-Llama-3-8B-Instruct "
                "(or ask the operator to set TUNEBOT_DEFAULT_MODEL)",
            )
        args["model_name_or_path"] = default_model
    if not args.get("dataset"):
        if not default_dataset:
            raise UserError(
                "No dataset given.",
                field="dataset",
                fix="add dataset=train (see `datasets`), or ask the operator to set TUNEBOT_DEFAULT_DATASET",
            )
        args["dataset"] = default_dataset
    return Recipe(
        kind=JobKind.TRAIN,
        args=args,
        model=str(args["model_name_or_path"]),
        dataset=str(args["dataset"]),
        method=method_of(args),
        preset=None if yaml_text and not preset else _preset_name(preset or DEFAULT_PRESET),
        n_slots=n_slots,
        spec={
            "preset": preset,
            "pairs": pairs,
            "yaml": yaml_text,
            **({"workers": workers} if workers > 1 else {}),
        },
    )


MAX_WORKERS = 64


def _workers(pairs: dict[str, str]) -> int:
    """workers=N: a training spread over N Ray workers (LLaMA-Factory's Ray trainer)."""
    value = next((v for k, v in pairs.items() if k.strip().lower() == "workers"), None)
    if value is None:
        return 1
    try:
        workers = int(str(value).strip())
    except ValueError:
        raise UserError(
            f"workers={value!r} is not a whole number.", field="workers", fix="workers=2"
        ) from None
    if not 1 <= workers <= MAX_WORKERS:
        raise UserError(
            f"workers must be between 1 and {MAX_WORKERS}.", field="workers", fix="workers=2"
        )
    return workers


def _preset_name(name: str) -> str:
    if name not in PRESETS:
        known = ", ".join(PRESETS)
        raise UserError(f"There is no preset {shorten(name)!r}.", field="preset", fix=f"use one of: {known}")
    return name


@dataclass(frozen=True)
class ModelSource:
    """Where eval/export/deploy take their weights from."""

    model: str  # base model path (or a merged export)
    adapter: str | None  # LoRA adapter folder, if any
    template: str | None
    finetuning_type: str
    parent_id: int | None
    compute: str | None = None
    quantization_bit: Any = None


def source_from_job(job: Job, purpose: str) -> ModelSource:
    """The weights a finished train or export job left behind, for `purpose` (eval/export/deploy)."""
    if job.kind == JobKind.TRAIN.value:
        if job.state != JobState.SUCCEEDED.value or not job.artifacts.get("adapter"):
            state = (state_phrase(job.state) if job.state != JobState.SUCCEEDED.value
                     else "finished without an adapter")
            raise UserError(
                f"Job #{job.id} has no adapter to {purpose} yet: it {state}.",
                field="job",
                fix=f"wait until #{job.id} has succeeded (`status {job.id}`), "
                f"or `resume {job.id}` if it stopped",
            )
        ftype = str(job.args.get("finetuning_type", "lora"))
        output = job.artifacts["adapter"]
        if ftype == "lora":
            return ModelSource(
                model=str(job.args["model_name_or_path"]),
                adapter=output,
                template=job.args.get("template"),
                finetuning_type="lora",
                parent_id=job.id,
                compute=compute_type_of(job.args),
                quantization_bit=job.args.get("quantization_bit"),
            )
        # freeze/full fine-tuning writes a whole model.
        return ModelSource(output, None, job.args.get("template"), ftype, job.id, compute_type_of(job.args))
    if job.kind == JobKind.EXPORT.value:
        if job.state != JobState.SUCCEEDED.value or not job.artifacts.get("model"):
            raise UserError(
                f"Export #{job.id} has no merged model yet: it {state_phrase(job.state)}.",
                field="job",
                fix=f"wait until #{job.id} has succeeded (`status {job.id}`)",
            )
        # A merged model: no adapter to load, and people should read "merged", not "lora".
        return ModelSource(job.artifacts["model"], None, job.args.get("template"), MERGED, job.id)
    raise UserError(
        f"Job #{job.id} is {article(job.kind)} job; {purpose} takes a train job or an export job "
        "(or model=PATH for a base model).",
        field="job",
    )


def article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def source_from_model(model: str, template: str | None = None) -> ModelSource:
    return ModelSource(model=model, adapter=None, template=template, finetuning_type="lora", parent_id=None)


def _base_infer_args(source: ModelSource) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model_name_or_path": source.model,
        "finetuning_type": source.finetuning_type if source.adapter else "lora",
        "trust_remote_code": True,
    }
    if source.adapter:
        args["adapter_name_or_path"] = source.adapter
    if source.template:
        args["template"] = source.template
    if source.quantization_bit not in (None, "", "none"):
        args["quantization_bit"] = source.quantization_bit
        args["quantization_method"] = "bnb"
    return args


def _require_template(args: dict[str, Any], purpose: str) -> None:
    if not args.get("template"):
        raise UserError(
            f"{purpose.capitalize()} of a base model needs its chat template.",
            field="template",
            fix="add template=llama3 (LLaMA-Factory's template name for the model)",
        )


def _yes_no(key: str, value: Any) -> bool:
    flag = parse_flag(value)  # the one table of yes/no words
    if flag is None:
        raise UserError(f"{key}={shorten(value)!r} is not true or false.", field=key, fix=f"{key}=true")
    return flag


def eval_recipe(
    source: ModelSource,
    pairs: dict[str, str] | None = None,
    *,
    default_dataset: str | None = None,
    gpu: bool = False,
) -> Recipe:
    args = _base_infer_args(source)
    args.update(
        {
            "stage": "sft",
            "do_predict": True,
            "predict_with_generate": True,
            "cutoff_len": 1024,
            "max_samples": 100000,
            "per_device_eval_batch_size": 2,
            # The WebUI's Evaluate & Predict defaults.
            "max_new_tokens": 512,
            "top_p": 0.7,
            "temperature": 0.95,
            "report_to": "none",
            "ddp_timeout": 180000000,
        }
    )
    if gpu and source.compute in ("bf16", "fp16"):
        args[source.compute] = True
    pairs = dict(pairs or {})
    rest = {k: v for k, v in pairs.items() if k.strip().lower() != "greedy"}
    n_slots = _apply_pairs(args, rest, EVAL_KEYS)
    greedy = [v for k, v in pairs.items() if k.strip().lower() == "greedy"]
    if isinstance(args.get("do_sample"), str):
        # A pair's "false" would reach LLaMA-Factory as a (true) string and keep sampling on.
        args["do_sample"] = _yes_no("do_sample", args["do_sample"])
    if greedy and _yes_no("greedy", greedy[-1]):
        # Greedy decoding: the same answer every run, so scores compare across runs and recipes.
        args["do_sample"] = False
    if not args.get("eval_dataset"):
        if not default_dataset:
            raise UserError(
                "No eval dataset given.", field="dataset", fix="add dataset=eval (see `datasets`)"
            )
        args["eval_dataset"] = default_dataset
    _require_template(args, "evaluation")
    return Recipe(
        kind=JobKind.EVAL,
        args=args,
        model=source.model,
        dataset=str(args["eval_dataset"]),
        method=source.finetuning_type,
        n_slots=n_slots,
        parent_id=source.parent_id,
        spec={"pairs": pairs},
    )


def export_recipe(source: ModelSource, pairs: dict[str, str] | None = None, *, gpu: bool = False) -> Recipe:
    if not source.adapter:
        raise UserError(
            "Export merges a LoRA adapter into its base model; this source has no adapter.",
            field="job",
            fix="export a LoRA train job: `export 12`",
        )
    args = _base_infer_args(source)
    # Merge on the GPU when there is one; shards of 5 GB like the WebUI.
    args.update({"export_size": 5, "export_device": "auto" if gpu else "cpu", "export_legacy_format": False})
    pairs = dict(pairs or {})
    n_slots = _apply_pairs(args, pairs, EXPORT_KEYS)
    _require_template(args, "export")
    return Recipe(
        kind=JobKind.EXPORT,
        args=args,
        model=source.model,
        method=source.finetuning_type,
        n_slots=n_slots,
        parent_id=source.parent_id,
        spec={"pairs": pairs},
    )


def deploy_recipe(source: ModelSource, pairs: dict[str, str] | None = None) -> Recipe:
    args = _base_infer_args(source)
    args["infer_backend"] = "huggingface"
    pairs = dict(pairs or {})
    mode = str(pairs.pop("mode", "api")).strip().lower()
    if mode not in DEPLOY_MODES:
        raise UserError(
            f"mode={shorten(mode)!r} is not a deploy mode.", field="mode", fix="mode=api (or webchat)"
        )
    port = pairs.pop("port", None)
    if port is not None:
        try:
            port = int(port)
        except ValueError:
            raise UserError(
                f"port={shorten(port)!r} is not a port number.", field="port", fix="port=8000"
            ) from None
        if not 1 <= port <= 65535:
            raise UserError(f"port={port} is out of range.", field="port", fix="port=8000")
    n_slots = _apply_pairs(args, pairs, DEPLOY_KEYS)
    _require_template(args, "deployment")
    return Recipe(
        kind=JobKind.DEPLOY,
        args=args,
        model=source.model,
        method=source.finetuning_type,
        n_slots=n_slots,
        mode=mode,
        parent_id=source.parent_id,
        spec={"pairs": pairs, "mode": mode, "port": port},
    )


def with_outputs(kind: str, args: dict[str, Any], work_dir: Path, dataset_dir: Path) -> dict[str, Any]:
    """The job's own folders filled in: where LLaMA-Factory writes and reads datasets."""
    args = dict(args)
    if kind in (JobKind.TRAIN.value, JobKind.EVAL.value):
        args["output_dir"] = str(work_dir / "output")
        args["dataset_dir"] = str(dataset_dir)
    elif kind == JobKind.EXPORT.value:
        args["export_dir"] = str(work_dir / "model")
    return args


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest `checkpoint-N` folder a train run left, if any."""
    best: tuple[int, Path] | None = None
    if not output_dir.is_dir():
        return None
    for child in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and child.is_dir() and (child / "trainer_state.json").exists():
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, child)
    return best[1] if best else None
