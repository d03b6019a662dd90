"""Fine-tuning: `llamafactory-cli train`; leaves an adapter (or full weights) and trainer results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..job import Job, JobKind
from ..llamafactory.command import command_argv
from ..llamafactory.recipes import Recipe, train_recipe
from .base import Intake, Kind, MissingOutput, Request, register


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def collect(job: Job, folder: Path) -> dict[str, Any]:
    artifacts, metrics = dict(job.artifacts), dict(job.metrics)
    output = folder / "output"
    if not ((output / "adapter_config.json").exists() or (output / "config.json").exists()):
        raise MissingOutput("Training ended without writing an adapter or model.")
    artifacts["adapter"] = str(output)
    results = _read_json(output / "train_results.json")
    for key in ("train_loss", "train_runtime", "train_samples_per_second", "epoch"):
        if key in results:
            metrics[key] = results[key]
    for key in ("tokens_per_s", "total_tokens", "step", "total"):
        if job.progress.get(key) is not None:
            metrics[key] = job.progress[key]
    return {"artifacts": artifacts, "metrics": metrics}


def recipe(request: Request, intake: Intake) -> Recipe:
    """A preset, key=value settings or a whole YAML; the operator's model and dataset by default."""
    return train_recipe(
        preset=request.preset,
        pairs=request.pairs,
        yaml_text=request.yaml_text,
        default_model=intake.settings.default_model,
        default_dataset=intake.settings.default_dataset,
    )


TRAIN = register(
    Kind(
        JobKind.TRAIN.value,
        argv=command_argv,
        collect=collect,
        follows_trainer_log=True,
        resumable=True,
        estimated=True,
        recipe=recipe,
        takes_yaml=True,
        usage="[preset] [key=value …]",
        summary="Fine-tune a model (no arguments: open the form)",
        example="seed model=/models/Meta-Llama-3-8B-Instruct dataset=train",
        order=10,
    )
)
