"""Export: `llamafactory-cli export`; leaves the merged model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..job import Job, JobKind
from ..llamafactory.command import command_argv
from ..llamafactory.recipes import Recipe, export_recipe
from .base import Intake, Kind, MissingOutput, Request, register


def collect(job: Job, folder: Path) -> dict[str, Any]:
    artifacts, metrics = dict(job.artifacts), dict(job.metrics)
    model_dir = folder / "model"
    if not (model_dir / "config.json").exists():
        raise MissingOutput("The export ended without a merged model (no config.json).")
    artifacts["model"] = str(model_dir)
    metrics["size_bytes"] = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    return {"artifacts": artifacts, "metrics": metrics}


def recipe(request: Request, intake: Intake) -> Recipe:
    return export_recipe(intake.source(request, EXPORT), request.pairs, gpu=intake.has_gpu)


EXPORT = register(
    Kind(
        JobKind.EXPORT.value,
        argv=command_argv,
        collect=collect,
        recipe=recipe,
        from_job=True,
        usage="JOB [key=value …]",
        summary="Merge the adapter into the base model and store it",
        example="12",
        order=30,
    )
)
