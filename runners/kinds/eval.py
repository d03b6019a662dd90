"""Evaluation: `llamafactory-cli train` with do_predict; leaves scores and sample predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..job import Job, JobKind
from ..llamafactory.command import command_argv
from ..llamafactory.results import read_predict_results, sample_predictions
from .base import Kind, MissingOutput, register


def collect(job: Job) -> dict[str, Any]:
    artifacts, metrics = dict(job.artifacts), dict(job.metrics)
    output = Path(job.work_dir) / "output"
    scores = read_predict_results(output)
    if not scores:
        raise MissingOutput("The evaluation ended without predict_results.json.")
    metrics.update(scores)
    artifacts["predictions"] = str(output / "generated_predictions.jsonl")
    artifacts["results"] = str(output / "predict_results.json")
    artifacts["samples"] = sample_predictions(output, n=3)
    return {"artifacts": artifacts, "metrics": metrics}


EVAL = register(Kind(JobKind.EVAL.value, argv=command_argv, collect=collect))
