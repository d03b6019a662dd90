"""The base model's scores beside a fine-tune's: did the fine-tune help?

An eval of a fine-tuned job (a LoRA adapter, a full/freeze fine-tune, or a merged export) also
needs the scores of the model it started from, on the same eval set with the same settings. Those
are computed once and reused: the key is the base model × every eval argument that is not about
which weights are loaded (dataset, template, cutoff, samples, generation settings, precision…),
so a change of any setting computes them again. The cache is the job store itself: an eval job
records its key in `spec["base"]`, and its base scores in `metrics["base"]` (or, for an eval of
the base model itself, its own scores are the base scores). When nothing matches, the same eval
job runs a second `llamafactory-cli train` for the base model after the fine-tune's predict.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from ..job import Job, JobKind, JobState
from ..llamafactory.results import SCORE_NAMES, read_predict_results

BASE_OUTPUT = "base-output"  # the base model's predict output, beside the job's own `output`
BASE_CONFIG = "base-config.yaml"
# Arguments that say which weights are loaded or where files go: not part of "the same settings".
_NOT_SETTINGS = {
    "model_name_or_path",
    "adapter_name_or_path",
    "finetuning_type",
    "output_dir",
    "dataset_dir",
    "overwrite_output_dir",
    "logging_dir",
    # How many rows go through at once (planned from the runner's GPU memory) changes the speed,
    # not greedy scores: base scores computed on another card or before planning still count.
    "per_device_eval_batch_size",
    "media_dir",  # where a sorted eval set's images are still found: the registry's folder
}


def base_model_of(job: Job, parent: Job | None) -> str | None:
    """The model a fine-tuned job started from; None when the eval is of a base model already."""
    if parent is None:
        return None
    if job.args.get("adapter_name_or_path"):
        return str(job.args["model_name_or_path"])
    # Full/freeze fine-tunes and merged exports: their own job knows the starting model.
    if parent.kind in (JobKind.TRAIN.value, JobKind.EXPORT.value):
        return str(parent.args.get("model_name_or_path") or "") or None
    return None


def settings_key(model: str, args: dict[str, Any]) -> str:
    """A stable key for `model` evaluated with `args` (output paths and loaded weights excluded)."""
    settings = {k: v for k, v in args.items() if k not in _NOT_SETTINGS}
    text = json.dumps({"model": model, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def scores_of(metrics: dict[str, Any]) -> dict[str, float]:
    """ROUGE/BLEU only, numbers only."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k in SCORE_NAMES and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def cached_scores(evals: list[Job], key: str) -> tuple[dict[str, float], int] | None:
    """Among succeeded eval jobs, the base scores recorded under `key` and the job that computed
    them; the newest wins."""
    for job in sorted(evals, key=lambda j: j.id or 0, reverse=True):
        if job.kind != JobKind.EVAL.value or job.state != JobState.SUCCEEDED.value:
            continue
        base = (job.spec or {}).get("base") or {}
        if base.get("key") != key:
            continue
        if base.get("self"):
            scores = scores_of(job.metrics or {})
        else:
            scores = scores_of((job.metrics or {}).get("base") or {})
        if scores:
            return scores, int(base.get("from_job") or job.id)
    return None


def plan(job: Job, parent: Job | None, evals: list[Job]) -> dict[str, Any]:
    """What `job` (an eval about to start) does about the base model; stored as `spec["base"]`:
    `{"key", "model", "self": True}` for an eval of a base model (its scores are the cache entry),
    `{"key", "model", "scores", "from_job"}` when cached, `{"key", "model", "run": True}` otherwise."""
    base = base_model_of(job, parent)
    if base is None:
        return {"key": settings_key(str(job.args.get("model_name_or_path")), job.args),
                "model": str(job.args.get("model_name_or_path")), "self": True}
    key = settings_key(base, job.args)
    found = cached_scores(evals, key)
    if found is not None:
        return {"key": key, "model": base, "scores": found[0], "from_job": found[1]}
    return {"key": key, "model": base, "run": True}


def base_args(args: dict[str, Any], base_model: str, work_dir: Path) -> dict[str, Any]:
    """The eval's own arguments with the base model's weights and an output folder of its own."""
    out = {k: v for k, v in args.items() if k != "adapter_name_or_path"}
    out["model_name_or_path"] = base_model
    out["finetuning_type"] = "lora"  # no adapter: the model as it is
    out["output_dir"] = str(work_dir / BASE_OUTPUT)
    return out


def eval_with_base_argv(cli: list[str], config: Path, base_config: Path) -> list[str]:
    """One process for both predicts: the fine-tune's first (its failure fails the job), then the
    base model's (its failure only loses the comparison; the log says why)."""
    run = shlex.join(cli)
    script = (
        f'{run} train "$1" || exit $?\n'
        'echo "--- tunebot: now the base model, for comparison ---"\n'
        f'{run} train "$2" || echo "--- tunebot: the base model\'s eval failed; no comparison ---"\n'
    )
    return ["/bin/sh", "-c", script, "tunebot-eval", str(config), str(base_config)]


def collect(job: Job, folder: Path | None = None) -> dict[str, float] | None:
    """The base scores of a finished eval: cached ones, or those its second predict wrote (in
    `folder`, the job's outputs; its job folder by default)."""
    base = (job.spec or {}).get("base") or {}
    if base.get("scores"):
        return dict(base["scores"])
    if base.get("run"):
        try:
            scores = scores_of(read_predict_results(Path(folder or job.work_dir) / BASE_OUTPUT))
        except Exception:  # a damaged file only loses the comparison
            return None
        return scores or None
    return None


def gains(scores: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float]:
    """score - base for each metric both have (positive: the fine-tune scored higher)."""
    if not base:
        return {}
    mine, theirs = scores_of(scores), scores_of(base)
    return {k: round(mine[k] - theirs[k], 4) for k in mine if k in theirs}
