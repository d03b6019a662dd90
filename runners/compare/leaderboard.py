"""Which run is best: every evaluated model on one eval set, ranked by ROUGE-L, with the
hyperparameters that differ between them, and a bar chart of the scores.

A row is a model that was evaluated: a train job (its adapter or weights), an export of one, or a
base model (from an eval of it, or from the base scores an eval of a fine-tune computed). Each
shows its newest succeeded eval on the set. Pure over jobs read from the store; the chart is a PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..job import Job, JobKind, JobState
from ..llamafactory.keys import number_text
from .baseline import scores_of

RANK_BY = "rouge-l"
# What may tell two fine-tunes apart: label -> how to read it from the train job.
HYPERPARAMETERS: tuple[tuple[str, str], ...] = (
    ("lr", "learning_rate"),
    ("rank", "lora_rank"),
    ("epochs", "num_train_epochs"),
    ("recipe", "preset"),
    ("dataset", "dataset"),
    ("method", "method"),
    ("batch", "per_device_train_batch_size"),
    ("grad_accum", "gradient_accumulation_steps"),
    ("cutoff", "cutoff_len"),
    ("steps", "max_steps"),
)
# Shown even when they do not differ (a board of one fine-tune still says what it was).
CORE = ("lr", "rank", "epochs", "recipe", "dataset")


@dataclass
class Row:
    label: str  # "#12" (a train job), "#14 (export of #12)", "base: Meta-Llama-3-8B"
    scores: dict[str, float]
    eval_id: int | None  # the eval that gave the scores (for a base row: the one that computed them)
    job_id: int | None = None  # the train/export job evaluated; None for a base model
    base: bool = False
    hyperparameters: dict[str, str] = field(default_factory=dict)
    finished_at: float | None = None

    @property
    def score(self) -> float:
        return self.scores.get(RANK_BY, -math.inf)


@dataclass
class Board:
    dataset: str
    rows: list[Row]
    differing: list[str]  # hyperparameter labels to show, in order

    @property
    def best(self) -> Row | None:
        return self.rows[0] if self.rows else None


def _text(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def hyperparameters_of(train: Job | None) -> dict[str, str]:
    if train is None:
        return {}
    found = {}
    for label, key in HYPERPARAMETERS:
        if key == "preset":
            value = train.preset or ("yaml" if (train.spec or {}).get("yaml") else None)
        elif key == "method":
            value = train.method
        elif key == "dataset":
            value = train.dataset or train.args.get("dataset")
        else:
            value = train.args.get(key)
        found[label] = _text(value)
    return found


def _model_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def build(
    evals: list[Job],
    jobs_by_id: dict[int, Job],
    *,
    dataset: str | None = None,
    only: list[int] | None = None,
) -> Board:
    """The board of `dataset` (default: the newest eval's set) from succeeded eval jobs.

    `jobs_by_id` holds the evals' parents (and an export's train job). `only`: job ids named by the
    asker (train, export or eval jobs): their rows, plus the base models they started from."""
    done = [e for e in evals if e.kind == JobKind.EVAL.value and e.state == JobState.SUCCEEDED.value]
    done.sort(key=lambda e: e.id or 0, reverse=True)
    subjects = _subjects(only, jobs_by_id) if only else None
    if dataset is None:
        pool = [e for e in done if subjects is None or e.parent_id in subjects or e.id in (only or [])]
        if not pool:
            raise UserError(
                "Nothing has been evaluated yet" + (" among those jobs." if only else "."),
                field="job",
                fix="`eval 12` scores train job #12 on an eval set",
            )
        dataset = pool[0].dataset or ""
    rows: dict[str, Row] = {}
    base_models: set[str] = set()
    for ev in (e for e in done if (e.dataset or "") == dataset):
        scores = scores_of(ev.metrics or {})
        base_info = (ev.spec or {}).get("base") or {}
        if ev.parent_id is None:  # an eval of a base model itself
            key = f"base:{ev.model}"
            if key not in rows and scores:
                rows[key] = Row(f"base: {_model_name(ev.model)}", scores, ev.id, base=True,
                                finished_at=ev.finished_at)
            continue
        if subjects is not None and ev.parent_id not in subjects and ev.id not in (only or []):
            continue
        parent = jobs_by_id.get(ev.parent_id)
        train = parent
        label = f"#{ev.parent_id}"
        if parent is not None and parent.kind == JobKind.EXPORT.value:
            train = jobs_by_id.get(parent.parent_id) if parent.parent_id else None
            label = f"#{parent.id} (export of #{parent.parent_id})"
        key = f"job:{ev.parent_id}"
        if key not in rows and scores:
            rows[key] = Row(label, scores, ev.id, job_id=ev.parent_id,
                            hyperparameters=hyperparameters_of(train), finished_at=ev.finished_at)
        base_scores = scores_of((ev.metrics or {}).get("base") or {})
        if base_info.get("model") and base_scores:
            base_models.add(base_info["model"])
            bkey = f"base:{base_info['model']}"
            if bkey not in rows:
                rows[bkey] = Row(f"base: {_model_name(base_info['model'])}", base_scores,
                                 int(base_info.get("from_job") or ev.id), base=True,
                                 finished_at=ev.finished_at)
    if subjects is not None:  # named jobs: keep their base models, not every base ever evaluated
        rows = {k: r for k, r in rows.items() if not r.base or k[5:] in base_models}
    ranked = sorted(rows.values(), key=lambda r: (-r.score, r.base, r.eval_id or 0))
    if not ranked:
        raise UserError(f"No succeeded eval on `{dataset}` yet.", field="dataset",
                        fix=f"`eval 12 dataset={dataset}` scores train job #12 on it")
    return Board(dataset, ranked, differing_keys([r for r in ranked if not r.base]))


def _subjects(only: list[int], jobs_by_id: dict[int, Job]) -> set[int]:
    """The evaluated jobs the named ids stand for (an eval stands for its parent)."""
    found = set()
    for job_id in only:
        job = jobs_by_id.get(job_id)
        if job is not None and job.kind == JobKind.EVAL.value and job.parent_id:
            found.add(job.parent_id)
        else:
            found.add(job_id)
    return found


def differing_keys(rows: list[Row]) -> list[str]:
    """The hyperparameters whose values differ between the fine-tunes; the core ones for a board of one."""
    if len(rows) <= 1:
        return list(CORE)
    return [label for label, _ in HYPERPARAMETERS
            if len({r.hyperparameters.get(label, "—") for r in rows}) > 1]


def is_new_best(ev: Job, earlier: list[Job]) -> tuple[bool, float | None]:
    """Did eval `ev` set the best ROUGE-L on its set (among `earlier` succeeded evals of that set,
    base scores included)? Returns (new best, the previous best or None)."""
    mine = scores_of(ev.metrics or {}).get(RANK_BY)
    if mine is None:
        return False, None
    previous = []
    for other in earlier:
        if other.id == ev.id or (other.dataset or "") != (ev.dataset or ""):
            continue
        if other.state != JobState.SUCCEEDED.value or (other.id or 0) > (ev.id or 0):
            continue
        for scores in (other.metrics or {}, (other.metrics or {}).get("base") or {}):
            value = scores_of(scores).get(RANK_BY)
            if value is not None:
                previous.append(value)
    base = scores_of((ev.metrics or {}).get("base") or {}).get(RANK_BY)
    if base is not None:
        previous.append(base)
    best_before = max(previous) if previous else None
    return (best_before is None or mine > best_before), best_before


def draw_chart(board: Board, path: Path) -> Path:
    """A horizontal bar chart of ROUGE-L (and BLEU-4) per row, best on top, as a PNG at `path`."""
    from ..plots import DPI, Figure, FigureCanvasAgg

    rows = board.rows[:20]
    labels = [r.label for r in rows][::-1]
    rouge = [r.scores.get("rouge-l", 0.0) for r in rows][::-1]
    bleu = [r.scores.get("bleu-4", 0.0) for r in rows][::-1]
    height = max(2.5, 0.5 * len(rows) + 1.5)
    figure = Figure(figsize=(8.0, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(rows)))
    colors = ["#9e9e9e" if r.base else "#1f77b4" for r in rows][::-1]
    axes.barh([p + 0.2 for p in positions], rouge, height=0.4, color=colors, label="ROUGE-L")
    axes.barh([p - 0.2 for p in positions], bleu, height=0.4, color="#ff7f0e", label="BLEU-4")
    for p, value in zip(positions, rouge, strict=True):
        axes.text(value, p + 0.2, f" {value:.1f}", va="center", fontsize=8)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=8)
    axes.set_xlabel("score (%)")
    axes.set_title(f"Leaderboard on {board.dataset} (grey: base models)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def board_for(store: Any, *, dataset: str | None = None, only: list[int] | None = None) -> Board:
    """The board from the store's succeeded evals and the jobs they evaluated."""
    evals = store.list_jobs(kinds=[JobKind.EVAL.value], states=[JobState.SUCCEEDED.value])
    wanted = {e.parent_id for e in evals if e.parent_id} | set(only or [])
    related = {j.id: j for j in store.jobs_by_id(list(wanted))} if wanted else {}
    trained = {j.parent_id for j in related.values() if j.kind == JobKind.EXPORT.value and j.parent_id}
    missing = [i for i in trained if i not in related]
    if missing:
        related.update({j.id: j for j in store.jobs_by_id(missing)})
    for job_id in only or []:
        if job_id not in related:
            store.get(job_id)  # an unknown id is a UserError naming it
    return build(evals, related, dataset=dataset, only=only)
