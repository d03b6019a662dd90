"""Which run is best: the leaderboard per eval set, its differing keys, its chart, and the CLI."""

from __future__ import annotations

import pytest

from bot.cli import main
from bot.render.compare import leaderboard_table, render_leaderboard
from runners.compare import leaderboard
from runners.errors import UserError
from runners.job import Job
from runners.store import Store

BASE = "/models/Meta-Llama-3-8B"


def train(job_id: int, **args) -> Job:
    values = {"learning_rate": 1e-4, "lora_rank": 8, "num_train_epochs": 3.0, "dataset": "train",
              "model_name_or_path": BASE, **args}
    return Job(id=job_id, kind="train", state="succeeded", preset="seed", dataset=values["dataset"],
               method="lora", args=values, model=BASE)


def evaluation(job_id: int, parent: int | None, rouge_l: float, *, dataset: str = "eval",
               base: float | None = None, model: str = BASE) -> Job:
    metrics = {"rouge-l": rouge_l, "bleu-4": rouge_l / 2}
    spec = {}
    if base is not None:
        metrics["base"] = {"rouge-l": base, "bleu-4": base / 2}
        spec = {"base": {"key": "k", "model": BASE, "run": True}}
    return Job(id=job_id, kind="eval", state="succeeded", parent_id=parent, dataset=dataset,
               metrics=metrics, spec=spec, model=model, finished_at=float(job_id))


def test_rows_are_ranked_by_rouge_l_with_base_models_and_differing_keys() -> None:
    jobs = {1: train(1), 2: train(2, learning_rate=5e-5), 3: train(3, lora_rank=16)}
    evals = [
        evaluation(10, 1, 30.0, base=20.0),
        evaluation(11, 2, 41.2, base=20.0),
        evaluation(12, 3, 35.0),
        evaluation(13, 1, 31.0),  # #1's newest eval on the set counts
        evaluation(14, 2, 99.0, dataset="other"),  # another set: not on this board
    ]
    board = leaderboard.build(evals, jobs, dataset="eval")
    assert [r.label for r in board.rows] == ["#2", "#3", "#1", f"base: {BASE.rsplit('/', 1)[-1]}"]
    assert [r.score for r in board.rows] == [41.2, 35.0, 31.0, 20.0]
    assert board.rows[-1].base
    assert board.differing == ["lr", "rank"]  # epochs, recipe, dataset are the same everywhere
    table = leaderboard_table(board)
    head, first = table.splitlines()[:2]
    assert head.split() == ["#", "model", "ROUGE-L", "BLEU-4", "lr", "rank"]
    assert first.split() == ["1", "#2", "41.2", "20.6", "5e-5", "8"]


def test_the_default_set_is_the_newest_evals_and_named_jobs_narrow_the_board() -> None:
    jobs = {1: train(1), 2: train(2, num_train_epochs=1.0)}
    evals = [evaluation(10, 1, 30.0, base=20.0), evaluation(11, 2, 25.0, dataset="zh", base=10.0)]
    assert leaderboard.build(evals, jobs).dataset == "zh"
    board = leaderboard.build(evals, jobs, dataset="eval", only=[1])
    assert [r.label for r in board.rows] == ["#1", "base: Meta-Llama-3-8B"]
    assert board.differing == list(leaderboard.CORE)  # a board of one says what it was
    with pytest.raises(UserError, match="No succeeded eval on `nosuch`"):
        leaderboard.build(evals, jobs, dataset="nosuch")
    with pytest.raises(UserError, match="Nothing has been evaluated"):
        leaderboard.build([], jobs)


def test_an_export_row_names_its_train_job_and_its_hyperparameters() -> None:
    export = Job(id=5, kind="export", state="succeeded", parent_id=1, args={"model_name_or_path": BASE})
    board = leaderboard.build([evaluation(10, 5, 33.0), evaluation(11, 2, 30.0)],
                              {1: train(1), 2: train(2, lora_rank=4), 5: export}, dataset="eval")
    assert board.rows[0].label == "#5 (export of #1)"
    assert board.rows[0].hyperparameters["rank"] == "8" and board.differing == ["rank"]


def test_the_chart_is_a_real_png(tmp_path) -> None:
    board = leaderboard.build([evaluation(10, 1, 30.0, base=20.0)], {1: train(1)}, dataset="eval")
    path = leaderboard.draw_chart(board, tmp_path / "chart.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_the_slack_answer_has_the_table_and_the_best_models_gain() -> None:
    board = leaderboard.build([evaluation(10, 1, 30.0, base=20.0)], {1: train(1)}, dataset="eval")
    payload = render_leaderboard(board)
    text = "\n".join(b.get("text", {}).get("text", "") for b in payload["blocks"] if b["type"] == "section")
    assert "Best on eval: #1 with ROUGE-L 30.0 (+10.0 over the best base model)." in text
    assert "```" in text and "#1" in text


def test_a_new_best_is_told_apart_from_a_lesser_score() -> None:
    first = evaluation(10, 1, 30.0, base=20.0)
    better = evaluation(11, 2, 35.0)
    worse = evaluation(12, 3, 25.0)
    assert leaderboard.is_new_best(first, []) == (True, 20.0)
    assert leaderboard.is_new_best(better, [first]) == (True, 30.0)
    assert leaderboard.is_new_best(worse, [first, better]) == (False, 35.0)


def test_tunebot_compare_prints_the_board_and_writes_the_chart(tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("TUNEBOT_DATA_DIR", str(data))
    monkeypatch.delenv("TUNEBOT_DATABASE_URL", raising=False)
    store = Store(f"sqlite:///{data / 'tunebot.db'}")
    store.migrate()
    made = (train(1), train(2, learning_rate=5e-5), evaluation(3, 1, 30.0, base=20.0), evaluation(4, 2, 40.0))
    for job in made:
        job.id = None
        store.add_job(job)
    assert main(["compare", "dataset=eval"]) == 0
    out = capsys.readouterr().out
    assert out.index("#2") < out.index("#1") < out.index("base: Meta-Llama-3-8B")
    chart = out.split("bar chart (PNG): ")[1].strip()
    assert open(chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", "dataset=nosuch"]) == 2
    assert "No succeeded eval on `nosuch`" in capsys.readouterr().err
