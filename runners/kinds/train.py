"""Fine-tuning: `llamafactory-cli train`; leaves an adapter (or full weights) and trainer results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..job import Job, JobKind
from ..llamafactory.command import command_argv
from .base import Kind, MissingOutput, register


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


TRAIN = register(
    Kind(
        JobKind.TRAIN.value,
        argv=command_argv,
        collect=collect,
        follows_trainer_log=True,
        resumable=True,
        estimated=True,
    )
)
