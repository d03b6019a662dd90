"""The fast eval: the batch from the GPU's memory, the eval set sorted by length (and put back in
order), greedy decoding on request; a CPU runner's eval unchanged (issue 9, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runners.errors import UserError
from runners.hardware import Gpu, Hardware
from runners.llamafactory.recipes import ModelSource, eval_recipe
from runners.queue import JobQueue
from runners.speed import evalprep
from runners.speed.evalplan import EvalShape, eval_shape_of, kv_bytes_per_token, per_sample_bytes, plan_eval
from runners.worker import Worker, wait_for

from .test_worker import CPU, FINAL, fake_settings, tiny_train

MIB = 2**20
LLAMA3_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "head_dim": 128,
}
SHAPE_8B = eval_shape_of(LLAMA3_8B, 8_030_261_248)
H200, A100_80, RTX_24 = 143_771 * MIB, 81_559 * MIB, 24_564 * MIB


def test_llama3_8b_kv_cache_is_128_kib_a_token():
    assert kv_bytes_per_token(SHAPE_8B) == 2 * 32 * 8 * 128 * 2 == 131_072
    # 1,024 prompt + 512 new tokens: 192 MiB of cache, +10% while it grows
    each = per_sample_bytes(SHAPE_8B, 1024, 512)
    assert 131_072 * 1536 * 1.1 < each < 131_072 * 1536 * 1.1 + 400 * MIB


def test_an_h200_takes_every_sample_of_a_small_eval_set_at_once():
    plan = plan_eval(H200, SHAPE_8B, prompt_tokens=1024, new_tokens=512, samples=64)
    assert plan.batch == 64 and plan.n_batches == 1
    assert plan.max_fit > 200  # room for far more
    assert plan.est_peak_bytes <= 0.9 * H200


def test_batches_are_capped_and_evened_out():
    plan = plan_eval(H200, SHAPE_8B, prompt_tokens=1024, new_tokens=512, samples=1000)
    assert plan.batch <= 256
    assert plan.n_batches * plan.batch >= 1000
    assert plan.n_batches * plan.batch - 1000 < plan.n_batches  # no near-empty last batch
    evened = plan_eval(H200, SHAPE_8B, prompt_tokens=256, new_tokens=128, samples=300)
    assert (evened.batch, evened.n_batches) == (150, 2)


@pytest.mark.parametrize("card", [H200, A100_80, RTX_24])
def test_the_plan_fits_the_card_and_uses_it(card):
    plan = plan_eval(card, SHAPE_8B, prompt_tokens=1024, new_tokens=512, samples=100_000)
    assert plan.est_peak_bytes <= 0.9 * card
    # one more sample per batch would not fit (unless the cap stopped it)
    if plan.batch < 256:
        assert plan.est_peak_bytes + plan.per_sample_bytes > 0.9 * card - plan.per_sample_bytes


def test_smaller_cards_get_smaller_batches():
    sizes = [plan_eval(c, SHAPE_8B, prompt_tokens=1024, new_tokens=512, samples=10_000).batch
             for c in (H200, A100_80, RTX_24)]
    assert sizes[0] > sizes[1] > sizes[2] >= 1
    assert 100 <= sizes[1] <= 200 and 4 <= sizes[2] <= 20
    # shorter prompts and answers: more at once on the same card
    short = plan_eval(RTX_24, SHAPE_8B, prompt_tokens=256, new_tokens=128, samples=10_000).batch
    assert short > sizes[2]


def test_a_model_that_does_not_fit_says_so():
    seventy = EvalShape(params=70_000_000_000, layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128,
                        intermediate=28672, vocab=128256)
    with pytest.raises(ValueError, match="do not fit in 80 GiB"):
        plan_eval(A100_80, seventy, prompt_tokens=1024, new_tokens=512, samples=64)
    with pytest.raises(ValueError):
        plan_eval(H200, SHAPE_8B, prompt_tokens=0, new_tokens=512, samples=64)


# --- the sorted copy ---------------------------------------------------------------------------
def _registry(tmp_path: Path, rows: list[dict], jsonl: bool = False) -> Path:
    folder = tmp_path / "datasets"
    folder.mkdir()
    name = "ev.jsonl" if jsonl else "ev.json"
    text = "\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows)
    (folder / name).write_text(text)
    (folder / "dataset_info.json").write_text(json.dumps({"ev": {"file_name": name, "formatting": "alpaca"}}))
    return folder


ROWS = [{"instruction": "q" * n, "input": "", "output": f"a{i}"} for i, n in enumerate([5, 50, 1, 20, 50, 9])]


@pytest.mark.parametrize("jsonl", [False, True])
def test_the_sorted_copy_is_longest_first_and_maps_back(tmp_path, jsonl):
    folder = _registry(tmp_path, ROWS, jsonl)
    dest = tmp_path / "job" / "eval-data"
    order = evalprep.sorted_copy(folder, "ev", None, dest)
    assert order == [1, 4, 3, 5, 0, 2]  # ties (rows 1 and 4) keep their order
    copied = [json.loads(line) for line in (dest / "ev.jsonl").read_text().splitlines()]
    assert copied == [ROWS[i] for i in order]
    info = json.loads((dest / "dataset_info.json").read_text())
    assert info == {"ev": {"file_name": "ev.jsonl", "formatting": "alpaca"}}
    # the registry itself is untouched
    assert json.loads((folder / "dataset_info.json").read_text())["ev"]["file_name"].startswith("ev.json")


def test_max_samples_is_taken_before_sorting(tmp_path):
    order = evalprep.sorted_copy(_registry(tmp_path, ROWS), "ev", 3, tmp_path / "d")
    assert order == [1, 0, 2]  # the first three rows of the file, sorted


def test_what_cannot_be_sorted_is_named(tmp_path):
    folder = _registry(tmp_path, ROWS)
    with pytest.raises(ValueError, match="not a local file"):
        evalprep.sorted_copy(folder, "missing", None, tmp_path / "d")
    info = json.loads((folder / "dataset_info.json").read_text())
    info["hub"] = {"hf_hub_url": "org/set", "file_name": "x.json"}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="hub"):
        evalprep.sorted_copy(folder, "hub", None, tmp_path / "d")


def test_an_eval_set_too_large_to_sort_at_launch_runs_unsorted(tmp_path, monkeypatch):
    monkeypatch.setattr(evalprep, "MAX_SORT_BYTES", 100)
    work = tmp_path / "job"
    work.mkdir()
    args, info = evalprep.prepare_eval(_eval_args(tmp_path), {}, work, GPU1, ["0"])
    assert info["eval_sorted"].startswith("not sorted: ev is larger than")
    assert args["dataset_dir"] == str(tmp_path / "datasets")  # the registry's own file
    assert not (work / "eval_order.json").exists()


def test_predictions_go_back_to_the_original_order(tmp_path):
    order = [1, 4, 3, 5, 0, 2]
    out = tmp_path / "output"
    out.mkdir()
    sorted_lines = [json.dumps({"predict": f"p{i}", "label": f"a{i}"}) for i in order]
    (out / "generated_predictions.jsonl").write_text("\n".join(sorted_lines) + "\n")
    assert evalprep.restore_order(out, order)
    lines = (out / "generated_predictions.jsonl").read_text().splitlines()
    back = [json.loads(line)["label"] for line in lines]
    assert back == [f"a{i}" for i in range(6)]
    # a finish retried (database error, runner restart) restores again: the same order, not a reshuffle
    assert evalprep.restore_order(out, order)
    lines = (out / "generated_predictions.jsonl").read_text().splitlines()
    again = [json.loads(line)["label"] for line in lines]
    assert again == back
    # a prediction holding a raw line separator (valid JSON) is one row, not two
    odd = [json.dumps({"predict": "a\u2028b", "label": f"a{i}"}, ensure_ascii=False) for i in order]
    (out / "generated_predictions.sorted.jsonl").unlink()
    (out / "generated_predictions.jsonl").write_text("\n".join(odd) + "\n", encoding="utf-8")
    assert evalprep.restore_order(out, order)
    lines = (out / "generated_predictions.jsonl").read_text(encoding="utf-8").split("\n")
    assert [json.loads(line)["label"] for line in lines if line] == [f"a{i}" for i in range(6)]
    # a file that does not match the order is left alone
    assert not evalprep.restore_order(out, [0, 1])
    assert not evalprep.restore_order(out, [0, 0, 1, 2, 3, 4])


# --- the job's arguments on a GPU ----------------------------------------------------------------
GPU1 = Hardware(host="gpuhost", gpus=(Gpu("0", "NVIDIA H200", 143_771, 9.0),), cpu_count=16)


def _eval_args(tmp_path: Path, **extra) -> dict:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA3_8B))
    return {
        "model_name_or_path": str(model), "eval_dataset": "ev", "dataset_dir": str(_registry(tmp_path, ROWS)),
        "cutoff_len": 1024, "max_new_tokens": 512, "per_device_eval_batch_size": 2, "bf16": True,
        "max_samples": 100000, **extra,
    }


def test_on_a_gpu_the_eval_gets_the_planned_batch_and_the_sorted_set(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    args, info = evalprep.prepare_eval(_eval_args(tmp_path), {"pairs": {}}, work, GPU1, ["0"])
    assert args["per_device_eval_batch_size"] == 6  # all six samples at once
    assert args["dataset_dir"] == str(work / "eval-data") and info["eval_sorted"] is True
    assert args["media_dir"] == str(tmp_path / "datasets")  # images stay where the registry has them
    assert info["eval_plan"]["batch"] == 6 and info["eval_plan"]["gpu"] == "NVIDIA H200"
    assert json.loads((work / "eval_order.json").read_text())["order"] == [1, 4, 3, 5, 0, 2]


def test_the_users_batch_wins_and_the_set_is_still_sorted(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    args, info = evalprep.prepare_eval(
        _eval_args(tmp_path), {"pairs": {"batch": "2"}}, work, GPU1, ["0"]
    )
    assert args["per_device_eval_batch_size"] == 2
    assert info["eval_plan"]["note"] == "batch kept: you set it"
    assert info["eval_sorted"] is True


def test_a_model_of_unknown_size_keeps_its_batch(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    args, info = evalprep.prepare_eval(
        {**_eval_args(tmp_path), "model_name_or_path": "org/hub-model"}, {}, work, GPU1, ["0"]
    )
    assert args["per_device_eval_batch_size"] == 2 and "unknown" in info["eval_plan"]["note"]


def test_on_a_cpu_nothing_changes(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    args = _eval_args(tmp_path)
    assert evalprep.prepare_eval(dict(args), {}, work, CPU, ["cpu0"]) == (args, {})
    assert not (work / "eval_order.json").exists()


# --- greedy ------------------------------------------------------------------------------------
SOURCE = ModelSource(model="/m", adapter=None, template="llama3", finetuning_type="lora", parent_id=None)


def test_greedy_turns_sampling_off_and_the_defaults_stay_otherwise():
    assert eval_recipe(SOURCE, {"greedy": "true"}, default_dataset="ev").args["do_sample"] is False
    plain = eval_recipe(SOURCE, {}, default_dataset="ev").args
    assert "do_sample" not in plain and (plain["top_p"], plain["temperature"]) == (0.7, 0.95)
    assert "do_sample" not in eval_recipe(SOURCE, {"greedy": "no"}, default_dataset="ev").args
    with pytest.raises(UserError, match="not true or false"):
        eval_recipe(SOURCE, {"greedy": "maybe"}, default_dataset="ev")


# --- through the runner ------------------------------------------------------------------------
def _config(job) -> dict:
    return yaml.safe_load((Path(job.work_dir) / "config.yaml").read_text())


@pytest.mark.parametrize("pairs", [{"do_sample": "false"}, {"greedy": "true"}])
def test_a_gpu_runners_eval_runs_planned_sorted_and_greedy(settings, store, pairs):
    s = fake_settings(settings)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        train = wait_for(store, tiny_train(JobQueue(s, store, hardware=CPU)).id, FINAL, timeout=60)
    finally:
        worker.stop()
    queue = JobQueue(s, store, hardware=GPU1)
    worker = Worker(s, store, hardware=GPU1)
    worker.start()
    try:
        done = wait_for(store, queue.submit_eval(train.id, pairs={**pairs, "compute": "fp32"}).id, FINAL,
                        timeout=60)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    config = _config(done)
    assert config["do_sample"] is False  # a real boolean reaches LLaMA-Factory
    assert config["dataset_dir"] == str(Path(done.work_dir) / "eval-data")
    samples = done.metrics["eval_plan"]["samples"]
    assert samples == 16  # the demo eval set
    assert config["per_device_eval_batch_size"] == done.metrics["eval_plan"]["batch"] == 16
    assert done.args["per_device_eval_batch_size"] == 16  # the job record says what ran
    order = json.loads((Path(done.work_dir) / "eval_order.json").read_text())["order"]
    assert sorted(order) == list(range(16))


def test_a_cpu_runners_eval_is_unchanged(settings, store):
    s = fake_settings(settings)
    queue = JobQueue(s, store, hardware=CPU)
    worker = Worker(s, store, hardware=CPU)
    worker.start()
    try:
        train = wait_for(store, tiny_train(queue).id, FINAL, timeout=60)
        done = wait_for(store, queue.submit_eval(train.id).id, FINAL, timeout=60)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    config = _config(done)
    assert config["per_device_eval_batch_size"] == 2
    assert config["dataset_dir"] == str(s.data_dir / "datasets")
    assert "eval_plan" not in done.metrics and not (Path(done.work_dir) / "eval_order.json").exists()
