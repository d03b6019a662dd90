"""A fine-tune's scores against its base model's, as people read them: `ROUGE-L 41.2 (base 28.9, +12.3)`.

Pure text, shared by the Slack messages (bold gain) and the terminal (plain).
"""

from __future__ import annotations

from typing import Any

from runners.compare.baseline import gains, scores_of

METRIC_LABELS = (("rouge-1", "ROUGE-1"), ("rouge-2", "ROUGE-2"), ("rouge-l", "ROUGE-L"), ("bleu-4", "BLEU-4"))


def score_with_base(label: str, score: float, base: float | None, *, bold: str = "") -> str:
    """`ROUGE-L 41.2 (base 28.9, +12.3)`; the gain wrapped in `bold` (Slack: "*")."""
    text = f"{label} {score:.1f}"
    if base is None:
        return text
    return f"{text} (base {base:.1f}, {bold}{score - base:+.1f}{bold})"


def scores_line(metrics: dict[str, Any], *, bold: str = "") -> str:
    """Every ROUGE/BLEU score of an eval, each beside its base model's when it has one."""
    scores = scores_of(metrics)
    base = scores_of(metrics.get("base") or {})
    return " · ".join(
        score_with_base(label, scores[key], base.get(key), bold=bold)
        for key, label in METRIC_LABELS
        if key in scores
    )


def base_gain(metrics: dict[str, Any], key: str = "rouge-l") -> float | None:
    """The fine-tune's gain over its base model on one metric, if the eval has the base's score."""
    return gains(metrics, metrics.get("base")).get(key)
