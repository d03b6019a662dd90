"""Evaluation: `llamafactory-cli train` with do_predict; leaves scores and sample predictions, and
the base model's scores beside a fine-tune's (runners/compare/baseline.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from ..compare import baseline
from ..hardware import Hardware
from ..job import Job, JobKind, JobState
from ..llamafactory.command import command_argv, llamafactory_cli
from ..llamafactory.recipes import DEMO_DATASET, DEMO_EVAL_DATASET, Recipe, eval_recipe
from ..llamafactory.results import read_predict_results, sample_predictions
from ..settings import Settings
from ..speed import evalprep
from .base import Intake, Kind, MissingOutput, Request, register

log = logging.getLogger(__name__)


def collect(job: Job, folder: Path) -> dict[str, Any]:
    artifacts, metrics = dict(job.artifacts), dict(job.metrics)
    output = folder / "output"
    order = evalprep.read_order(folder)
    if order is not None:  # the run saw the eval set sorted by length: predictions back in order
        restored = evalprep.restore_order(output, order)
        evalprep.restore_order(folder / baseline.BASE_OUTPUT, order)
        # What the post says: in their order, or (LLaMA-Factory dropped a row) left as they ran.
        metrics["eval_order_restored"] = restored
    scores = read_predict_results(output)
    if not scores:
        raise MissingOutput("The evaluation ended without predict_results.json.")
    metrics.update(scores)
    base = baseline.collect(job, folder)
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


def fit_to_gpu(job: Job, work_dir: Path, hardware: Hardware, slots: list[str], store: Any) -> Job:
    """On a GPU: the eval set sorted by length and the batch from the GPU's memory, recorded in
    the job's metrics (`eval_plan`, `eval_sorted`). A second attempt keeps the first one's plan."""
    if not hardware.has_gpu or "eval_plan" in job.metrics:
        return job
    try:
        args, info = evalprep.prepare_eval(dict(job.args), job.spec, work_dir, hardware, slots)
    except Exception:  # a faster eval is a nicety: the job runs as asked rather than fail
        log.exception("planning eval job #%s failed", job.id)
        return job
    if not info:
        return job
    metrics = {**job.metrics, **info}
    store.update(job.id, args=args, metrics=metrics)
    return job.model_copy(update={"args": args, "metrics": metrics})


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
        fit_to_hardware=fit_to_gpu,
        recipe=recipe,
        from_job=True,
        verb="evaluate",
        usage="JOB [dataset=NAME] [key=value …]",
        summary="Score a trained model (ROUGE, BLEU) on an eval set",
        example="12 dataset=eval",
        order=20,
    )
)
