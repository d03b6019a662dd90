"""The base model's scores beside a fine-tune's: computed within the eval job once, then reused."""

from __future__ import annotations

from pathlib import Path

from runners.compare import baseline
from runners.job import Job
from runners.queue import JobQueue
from runners.worker import Worker, wait_for

from .test_worker import CPU, FINAL, fake_settings, tiny_train

EVAL_ARGS = {
    "model_name_or_path": "/models/llama",
    "adapter_name_or_path": "/jobs/1/output",
    "finetuning_type": "lora",
    "eval_dataset": "demo-eval",
    "template": "llama3",
    "max_new_tokens": 32,
    "output_dir": "/jobs/2/output",
    "dataset_dir": "/data/datasets",
}


def test_the_key_is_model_and_settings_not_weights_or_paths() -> None:
    key = baseline.settings_key("/models/llama", EVAL_ARGS)
    moved = {**EVAL_ARGS, "output_dir": "/jobs/9/output", "adapter_name_or_path": "/jobs/8/output"}
    assert baseline.settings_key("/models/llama", moved) == key
    assert baseline.settings_key("/models/other", EVAL_ARGS) != key
    assert baseline.settings_key("/models/llama", {**EVAL_ARGS, "max_new_tokens": 64}) != key
    assert baseline.settings_key("/models/llama", {**EVAL_ARGS, "eval_dataset": "eval"}) != key


def test_base_args_keep_the_eval_settings_and_drop_the_adapter(tmp_path: Path) -> None:
    args = baseline.base_args(EVAL_ARGS, "/models/llama", tmp_path)
    assert "adapter_name_or_path" not in args
    assert args["output_dir"] == str(tmp_path / baseline.BASE_OUTPUT)
    assert {k: args[k] for k in ("eval_dataset", "template", "max_new_tokens")} == {
        "eval_dataset": "demo-eval", "template": "llama3", "max_new_tokens": 32}


def test_an_eval_of_a_base_model_is_its_own_cache_entry() -> None:
    base_eval = Job(id=3, kind="eval", state="succeeded", args={**EVAL_ARGS, "adapter_name_or_path": None})
    base_eval.args.pop("adapter_name_or_path")
    plan = baseline.plan(base_eval, None, [])
    assert plan["self"] and plan["model"] == "/models/llama"
    base_eval.spec = {"base": plan}
    base_eval.metrics = {"rouge-l": 20.0, "bleu-4": 3.0, "runtime_s": 9.0}
    tuned = Job(id=5, kind="eval", args=EVAL_ARGS, parent_id=1)
    parent = Job(id=1, kind="train", args={"model_name_or_path": "/models/llama"})
    cached = baseline.plan(tuned, parent, [base_eval])
    assert cached["scores"] == {"rouge-l": 20.0, "bleu-4": 3.0} and cached["from_job"] == 3
    other = Job(id=6, kind="eval", args={**EVAL_ARGS, "max_new_tokens": 8}, parent_id=1)
    assert baseline.plan(other, parent, [base_eval])["run"] is True


def test_gains_are_the_fine_tunes_score_minus_the_base() -> None:
    assert baseline.gains({"rouge-l": 41.2, "bleu-4": 3.0}, {"rouge-l": 28.9}) == {"rouge-l": 12.3}
    assert baseline.gains({"rouge-l": 41.2}, None) == {}


def _predict_runs(job: Job) -> list[str]:
    path = Path(job.work_dir) / "predict-runs.log"
    return path.read_text().splitlines() if path.exists() else []


def test_base_scores_are_computed_in_the_eval_job_once_and_reused(settings, store) -> None:
    s = fake_settings(settings, FAKE_STEPS="2", FAKE_STEP_SECONDS="0.01")
    queue = JobQueue(s, store, hardware=CPU)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        train = wait_for(store, tiny_train(queue).id, FINAL, timeout=60)
        first = wait_for(store, queue.submit_eval(train.id).id, FINAL, timeout=60)
        second = wait_for(store, queue.submit_eval(train.id).id, FINAL, timeout=60)
        changed = wait_for(store, queue.submit_eval(train.id, pairs={"samples": "4"}).id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert (first.state, second.state, changed.state) == ("succeeded",) * 3, first.error
    # The first eval ran two predicts in one job: the fine-tune's, then the base model's.
    runs = _predict_runs(first)
    assert len(runs) == 2 and runs[0].endswith("output") and runs[1].endswith("None")
    assert first.metrics["rouge-l"] == 8.0 and first.metrics["base"]["rouge-l"] == 4.0
    assert first.spec["base"]["run"] is True
    # The second, same model, set and settings: one predict, the base scores reused from the first.
    assert len(_predict_runs(second)) == 1
    assert second.metrics["base"] == first.metrics["base"]
    assert second.spec["base"]["from_job"] == first.id
    # Other settings are another comparison: computed again.
    assert len(_predict_runs(changed)) == 2 and changed.spec["base"]["key"] != first.spec["base"]["key"]
