"""The leaderboard of one eval set as a table: for Slack (Block Kit) and the terminal. Pure."""

from __future__ import annotations

from typing import Any

from runners.compare.leaderboard import Board

from .blocks import code, code_block, context, escape, header, message, section


def leaderboard_table(board: Board) -> str:
    """Rank, model, ROUGE-L, BLEU-4 and the hyperparameters that differ, one row a line."""
    head = ["#", "model", "ROUGE-L", "BLEU-4", *board.differing]
    lines = [head]
    for place, row in enumerate(board.rows, start=1):
        cells = [
            str(place),
            row.label,
            _score(row.scores.get("rouge-l")),
            _score(row.scores.get("bleu-4")),
            *("" if row.base else row.hyperparameters.get(k, "—") for k in board.differing),
        ]
        lines.append(cells)
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(head))]
    numeric = {2, 3}
    out = []
    for cells in lines:
        out.append("  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
    return "\n".join(out)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _summary(board: Board) -> str:
    best = board.best
    if best is None:
        return f"Nothing evaluated on {board.dataset} yet."
    tuned = [r for r in board.rows if not r.base]
    bases = [r for r in board.rows if r.base]
    text = f"Best on {board.dataset}: {best.label} with ROUGE-L {best.score:.1f}"
    if tuned and bases and not best.base:
        text += f" ({best.score - max(b.score for b in bases):+.1f} over the best base model)"
    return text + "."


def render_leaderboard(board: Board, *, chart_in_thread: bool = False) -> dict[str, Any]:
    """The board as a Slack message (a code-block table; the chart goes beside it as a file)."""
    n = len(board.rows)
    blocks = [
        header(f"Leaderboard: {board.dataset}"),
        section(escape(_summary(board))),
        section(code_block(leaderboard_table(board))),
    ]
    models = f"{n} model{'s' if n != 1 else ''}"
    notes = [f"{models} ranked by ROUGE-L on {code(board.dataset)}, each by its newest eval."]
    if board.differing:
        notes.append("Columns after the scores: the hyperparameters that differ between the fine-tunes.")
    notes.append("The bar chart is in the thread." if chart_in_thread
                 else "Name a job (`/tune compare 12`) to get the bar chart in its thread.")
    blocks.append(context(" ".join(notes)))
    return message(_summary(board), blocks)


def leaderboard_text(board: Board, chart: str | None = None) -> str:
    """What `tunebot compare` prints."""
    lines = [f"leaderboard on {board.dataset} (by ROUGE-L)", leaderboard_table(board), _summary(board)]
    if chart:
        lines.append(f"bar chart (PNG): {chart}")
    return "\n".join(lines)
