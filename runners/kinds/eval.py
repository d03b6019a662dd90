"""Evaluation: `llamafactory-cli train` with do_predict; leaves scores and sample predictions, and
the base model's scores beside a fine-tune's (runners/compare/baseline.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..compare import baseline
from ..job import Job, JobKind, JobState
from ..llamafactory.command import command_argv, llamafactory_cli
from ..llamafactory.recipes import DEMO_DATASET, DEMO_EVAL_DATASET, Recipe, eval_recipe
from ..llamafactory.results import read_predict_results, sample_predictions
from ..settings import Settings
from .base import Intake, Kind, MissingOutput, Request, register


def collect(job: Job) -> dict[str, Any]:
    artifacts, metrics = dict(job.artifacts), dict(job.metrics)
    output = Path(job.work_dir) / "output"
    scores = read_predict_results(output)
    if not scores:
        raise MissingOutput("The evaluation ended without predict_results.json.")
    metrics.update(scores)
    base = baseline.collect(job)
    if base:
        metrics["base"] = base
    artifacts["predictions"] = str(output / "generated_predictions.jsonl")
    artifacts["results"] = str(output / "predict_results.json")
    artifacts["samples"] = sample_predictions(output, n=3)
    return {"artifacts": artifacts, "metrics": metrics}


def plan_base(job: Job, work_dir: Path, store: Any) -> Job:
    """An eval of a fine-tune also scores its base model, unless the store has those scores for the
    same model, eval set and settings; the plan goes into `spec["base"]`."""
    parent = store.find(job.parent_id) if job.parent_id else None
    evals = store.list_jobs(kinds=[JobKind.EVAL.value], states=[JobState.SUCCEEDED.value])
    plan = baseline.plan(job, parent, evals)
    if plan.get("run"):
        args = baseline.base_args(job.args, plan["model"], work_dir)
        (work_dir / baseline.BASE_CONFIG).write_text(
            yaml.safe_dump(args, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
    spec = {**job.spec, "base": plan}
    store.update(job.id, spec=spec)
    return job.model_copy(update={"spec": spec})


def argv(job: Job, config: Path, settings: Settings) -> list[str]:
    if (job.spec.get("base") or {}).get("run"):
        return baseline.eval_with_base_argv(
            llamafactory_cli(settings), config, config.with_name(baseline.BASE_CONFIG)
        )
    return command_argv(job, config, settings)


def recipe(request: Request, intake: Intake) -> Recipe:
    """Scores of a job's model (or model=PATH) on an eval set; the demo's own set for a demo job."""
    source = intake.source(request, EVAL)
    parent = intake.parent(request)
    demo = parent is not None and parent.args.get("dataset") == DEMO_DATASET
    return eval_recipe(source, request.pairs, default_dataset=DEMO_EVAL_DATASET if demo else None,
                       gpu=intake.has_gpu)


EVAL = register(
    Kind(
        JobKind.EVAL.value,
        argv=argv,
        collect=collect,
        prepare=plan_base,
        recipe=recipe,
        from_job=True,
        verb="evaluate",
        usage="JOB [dataset=NAME] [key=value …]",
        summary="Score a trained model (ROUGE, BLEU) on an eval set",
        example="12 dataset=eval",
        order=20,
    )
)
