"""Issue 9 on a CPU: the `fast` plan per card, the throughput and MFU arithmetic, the ETA and its
calibration table, the runner's token count (real LLaMA-Factory), and a neat-packing run whose
reported throughput is never negative or absurd."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runners.hardware import Hardware
from runners.job import Job
from runners.llamafactory import recipes
from runners.llamafactory.progress import read_trainer_log
from runners.runtime import Runtime
from runners.speed import estimate as eta
from runners.speed.fastplan import HEADROOM, FastPlan, ModelShape, plan_fast
from runners.speed.measure import measure
from runners.speed.throughput import bf16_peak_flops, mfu, param_count, sane_rate, steady_rate, true_progress
from runners.speed.tokencount import TokenCount, count_tokens
from runners.speed.trainprep import apply_fast, is_compiled, tokens_per_epoch, user_keys
from runners.worker import wait_for

LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
SHAPE_8B = ModelShape(params=8_030_261_248, hidden=4096, layers=32, vocab=128256)
MIB = 2**20
H200, A100_80, RTX_24 = 143_771 * MIB, 81_559 * MIB, 24_564 * MIB
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")


# --- the fast plan -----------------------------------------------------------------------------
def test_llama3_8b_config_gives_its_parameter_count():
    assert param_count(LLAMA3_8B) == 8_030_261_248
    assert param_count({**LLAMA3_8B, "tie_word_embeddings": True}) == 8_030_261_248 - 4096 * 128256
    assert param_count({"hidden_size": 64}) is None


@pytest.mark.parametrize("memory", [H200, A100_80])
def test_big_cards_take_the_seed_step_in_one_compiled_pack_without_checkpointing(memory):
    # The bench's data: mean 354 tokens, longest 1,469 (after the seed's 2,048 cutoff).
    plan = plan_fast(memory, SHAPE_8B, 354.3, 1469)
    assert (plan.batch, plan.accum, plan.checkpointing) == (1, 1, False)
    assert abs(plan.step_tokens - 4 * 354.3) / (4 * 354.3) <= 0.10  # the seed's tokens per step
    assert plan.est_peak_bytes <= memory * HEADROOM
    args = plan.args()
    assert args["torch_compile"] is True and args["enable_liger_kernel"] is False
    assert args["disable_gradient_checkpointing"] is True and args["cutoff_len"] == plan.cutoff
    # one micro-batch a step: the compiled graphs are replayed as CUDA graphs
    assert args["torch_compile_mode"] == "reduce-overhead"


def test_cuda_graphs_only_with_one_micro_batch_a_step_on_one_gpu():
    accumulating = FastPlan(cutoff=2048, batch=1, accum=3, checkpointing=False, target_tokens=6000,
                            step_tokens=6141, est_peak_bytes=40 * 2**30)
    assert accumulating.args()["torch_compile"] is True and "torch_compile_mode" not in accumulating.args()
    count = TokenCount(tuple(sorted([300] * 90 + [1400] * 10)), 2048)
    base = dict(recipes.PRESETS["fast"].values)
    one, _ = apply_fast(base, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    two, info = apply_fast(base, count, SHAPE_8B.params, LLAMA3_8B, H200, set(), n_gpus=2)
    assert one["torch_compile_mode"] == "reduce-overhead"
    assert "torch_compile_mode" not in two and two["torch_compile"] is True and info["plan"]["accum"] == 1
    mine, _ = apply_fast({**base, "torch_compile_mode": "default"}, count, SHAPE_8B.params, LLAMA3_8B, H200,
                         {"torch_compile_mode"})
    assert mine["torch_compile_mode"] == "default"  # the user's own mode wins
    # a user who said whether or how to compile, or to checkpoint, gets no graphs added: any mode
    # would turn compiling back on (transformers), a backend may not take one, graphs with
    # checkpointing are not measured
    for key, value in (("torch_compile", False), ("torch_compile_backend", "cudagraphs"),
                       ("disable_gradient_checkpointing", False), ("gradient_checkpointing", True)):
        theirs, _ = apply_fast({**base, key: value}, count, SHAPE_8B.params, LLAMA3_8B, H200, {key})
        assert "torch_compile_mode" not in theirs and theirs[key] == value, key


def test_a_24gb_card_checkpoints_and_keeps_liger():
    plan = plan_fast(RTX_24, SHAPE_8B, 354.3, 1469)
    assert plan.checkpointing and plan.batch * plan.accum == 1
    assert plan.est_peak_bytes <= RTX_24 * HEADROOM
    assert plan.args()["enable_liger_kernel"] is True and "torch_compile" not in plan.args()
    assert "torch_compile_mode" not in plan.args()
    # Without checkpointing it would not have fitted: that is why it checkpoints.
    assert plan_fast(H200, SHAPE_8B, 354.3).est_peak_bytes > RTX_24 * HEADROOM


@pytest.mark.parametrize("mean", [40, 120, 354.3, 700, 1500, 2048, 5000])
@pytest.mark.parametrize("memory", [H200, A100_80, RTX_24])
def test_every_plan_keeps_the_seed_tokens_per_step_and_fits(mean, memory):
    plan = plan_fast(memory, SHAPE_8B, mean)
    target = 4 * min(mean, 2048)
    assert plan.target_tokens == round(target)
    if target >= 256:  # below the smallest pack, a step holds one short pack
        assert abs(plan.step_tokens - target) / target <= 0.10, plan
    assert plan.cutoff <= 2048 and plan.est_peak_bytes <= memory * HEADROOM
    assert plan.batch >= 1 and plan.accum >= 1


def test_long_samples_take_several_packs_and_the_big_card_batches_them():
    big = plan_fast(H200, SHAPE_8B, 1500)
    small = plan_fast(RTX_24, SHAPE_8B, 1500)
    assert big.cutoff == small.cutoff == 2048
    assert big.batch * big.accum == small.batch * small.accum == 3
    assert big.batch == 3 and not big.checkpointing
    assert small.checkpointing


def test_a_card_too_small_for_the_model_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        plan_fast(8 * 2**30, SHAPE_8B, 354)


def test_apply_fast_packs_without_cross_attention_and_keeps_what_the_user_set():
    count = TokenCount(tuple(sorted([300] * 90 + [1400] * 10)), 2048)
    base = dict(recipes.PRESETS["fast"].values)
    args, info = apply_fast(base, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    assert args["neat_packing"] is True and args["packing"] is True
    assert args["optim"] == "adamw_torch_fused" and args["torch_compile"] is True
    assert info["plan"]["batch"] == 1 and args["learning_rate"] == 1e-4 and args["loraplus_lr_ratio"] == 16.0
    # tunebot counts the tokens itself: the trainer's per-step count (a GPU sync) goes off...
    counted = {**base, "include_num_input_tokens_seen": "non_padding"}
    assert apply_fast(counted, count, SHAPE_8B.params, LLAMA3_8B, H200, set())[0][
        "include_num_input_tokens_seen"] == "no"
    assert args["logging_nan_inf_filter"] is False  # no sync on every micro-step's loss
    # batches reach the GPU by a queued copy from pinned memory, not a blocking one
    assert args["accelerator_config"] == {"non_blocking": True} and args["dataloader_pin_memory"] is True
    args["accelerator_config"]["non_blocking"] = False  # one job's copy, not the module's flags
    again, _ = apply_fast(base, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    assert again["accelerator_config"] == {"non_blocking": True}
    own = {**base, "accelerator_config": {"non_blocking": False, "split_batches": True}}
    assert apply_fast(own, count, SHAPE_8B.params, LLAMA3_8B, H200, {"accelerator_config"})[0][
        "accelerator_config"] == {"non_blocking": False, "split_batches": True}
    fp16 = {**counted, "bf16": False, "fp16": True}
    half, _ = apply_fast(fp16, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    assert "logging_nan_inf_filter" not in half  # fp16: its scaler's inf steps stay filtered
    # ...unless the user asked for it
    kept, _ = apply_fast(counted, count, SHAPE_8B.params, LLAMA3_8B, H200, {"include_num_input_tokens_seen"})
    assert kept["include_num_input_tokens_seen"] == "non_padding"
    mine, info = apply_fast(base, count, SHAPE_8B.params, LLAMA3_8B, H200, {"cutoff_len"})
    assert "neat_packing" not in mine and info["plan"] is None and "batch shape" in info["plan_note"]
    unknown, info = apply_fast(base, count, None, {}, H200, set())
    assert unknown.get("packing") is False and "size is unknown" in info["plan_note"]
    full_args = {**base, "finetuning_type": "full"}
    full, info = apply_fast(full_args, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    assert "neat_packing" not in full and "made for LoRA" in info["plan_note"]
    qlora, info = apply_fast({**base, "quantization_bit": 4}, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    assert "neat_packing" not in qlora and info["plan"] is None


def test_llamafactory_reads_the_fast_flags_from_the_config_the_runner_writes(tmp_path, monkeypatch):
    """The runner writes the job's arguments as YAML (worker/launch.py) and runs `llamafactory-cli
    train config.yaml`; LLaMA-Factory's own reading of that file (OmegaConf, then its parser and
    checks) must give a non-blocking batch copy, CUDA graphs and the rest as meant."""
    import sys

    import yaml
    from llamafactory.hparams.parser import get_train_args, read_args

    count = TokenCount(tuple(sorted([300] * 90 + [1400] * 10)), 2048)
    base = {**recipes.PRESETS["fast"].values, "model_name_or_path": "/m", "dataset": "d"}
    args, _ = apply_fast(base, count, SHAPE_8B.params, LLAMA3_8B, H200, set())
    args.update(output_dir=str(tmp_path / "out"), bf16=False)  # this CPU cannot check bf16
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(args, sort_keys=False, allow_unicode=True), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(config)])
    _, _, training, _, _ = get_train_args(read_args())
    assert training.accelerator_config.non_blocking is True and training.dataloader_pin_memory is True
    assert training.torch_compile is True and training.torch_compile_mode == "reduce-overhead"
    assert training.logging_nan_inf_filter is False and training.include_num_input_tokens_seen == "no"
    assert training.optim == "adamw_torch_fused"


def test_user_keys_read_pairs_and_yaml():
    spec = {"pairs": {"batch": "4", "lr": "1e-3"}, "yaml": "cutoff_len: 512\n"}
    assert user_keys(spec) == {"per_device_train_batch_size", "learning_rate", "cutoff_len"}
    assert user_keys({"yaml": "[unclosed"}) == set()


def test_fast_is_the_default_and_trains_what_seed_trains():
    fast, seed = recipes.PRESETS["fast"].values, recipes.PRESETS["seed"].values
    assert recipes.DEFAULT_PRESET == "fast"
    for key in ("learning_rate", "loraplus_lr_ratio", "lora_target", "lora_rank", "num_train_epochs",
                "lr_scheduler_type", "cutoff_len", "template"):
        assert fast[key] == seed[key], key
    recipe = recipes.train_recipe(pairs={"model": "/m", "dataset": "d"})
    assert recipe.preset == "fast"


# --- tokens, tokens/s, MFU ---------------------------------------------------------------------
def test_token_count_arithmetic():
    count = TokenCount((10, 20, 30, 100), cutoff=128)
    assert (count.samples, count.total, count.longest) == (4, 160, 100)
    assert count.total_at(25) == 10 + 20 + 25 + 25
    assert count.total_at(4096) == 160
    assert tokens_per_epoch(count, {"cutoff_len": 26, "packing": True}) == 10 + 20 + 25 + 25
    assert tokens_per_epoch(count, {"cutoff_len": 25}) == 10 + 20 + 25 + 25


def test_gpu_peaks_and_mfu():
    assert bf16_peak_flops("NVIDIA H200") == 989e12
    assert bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bf16_peak_flops("Some Card") is None
    assert mfu(10_600, 8_030_261_248, "NVIDIA H200") == pytest.approx(4 * 8.03e9 * 10_600 / 989e12, rel=1e-3)
    assert mfu(10_600, 8_030_261_248, "NVIDIA H200", n_gpus=2) == pytest.approx(0.172, abs=1e-3)
    assert mfu(-4.2e18, 8_030_261_248, "NVIDIA H200") is None
    assert mfu(1000, 8_030_261_248, "Some Card") is None


@pytest.mark.parametrize("bad", [-4.2e18, float("nan"), float("inf"), 0, 1e12, True, "fast", None])
def test_no_negative_or_absurd_rate_survives(bad):
    assert sane_rate(bad) is None


def test_true_progress_counts_from_the_epoch_and_drops_llamafactorys_broken_figures():
    broken = {"step": 10, "epoch": 0.5, "elapsed_s": 20.0, "tokens_per_s": -4.2e18, "total_tokens": -(2**62)}
    counted = true_progress(broken, tokens_per_epoch=100_000)
    assert counted["total_tokens"] == 50_000 and counted["tokens_per_s"] == 2_500
    uncounted = true_progress(broken, tokens_per_epoch=None)
    assert "tokens_per_s" not in uncounted and "total_tokens" not in uncounted
    fine = true_progress({"step": 1, "tokens_per_s": 1893.2, "total_tokens": 117376}, None)
    assert fine["tokens_per_s"] == 1893.2 and fine["total_tokens"] == 117376
    early = true_progress({"step": 1, "epoch": 0.01, "elapsed_s": 0.0}, 100_000)
    assert early["total_tokens"] == 1000 and "tokens_per_s" not in early  # no rate from 0 s


# --- ETA ---------------------------------------------------------------------------------------
def test_estimate_is_startup_plus_tokens_over_the_calibrated_rate():
    table = {"H200|fast|1": {"param_tokens_per_s": 8.0e13, "startup_s": 60.0, "runs": 3}}
    est = eta.estimate(table, tokens=24_000_000, params=8_000_000_000, gpu_name="NVIDIA H200", recipe="fast")
    assert est.tokens_per_s == pytest.approx(10_000)
    assert est.seconds == pytest.approx(60 + 2400)
    assert eta.describe(est) == "about 41 min on 1× H200 (0.7 GPU-h)"
    two = eta.estimate(table, tokens=24_000_000, params=8_000_000_000, gpu_name="NVIDIA H200", recipe="fast",
                       n_gpus=2)
    # 0.9 a GPU, and data parallel `fast` runs without the CUDA graphs the one-GPU figure has
    assert two.tokens_per_s == pytest.approx(18_000 * eta.NO_GRAPHS_SHARE) and two.gpu_hours > est.gpu_hours
    seed = {"H200|seed|1": {"param_tokens_per_s": 8.0e13, "startup_s": 60.0, "runs": 3}}
    assert eta.estimate(seed, tokens=24_000_000, params=8_000_000_000, gpu_name="NVIDIA H200", recipe="seed",
                        n_gpus=2).tokens_per_s == pytest.approx(18_000)
    assert eta.estimate({}, tokens=1, params=1, gpu_name="Some Card", recipe="fast") is None
    assert eta.estimate(table, tokens=1, params=1, gpu_name=None, recipe="fast") is None  # CPU: unmeasured


def test_live_progress_measures_from_the_first_logged_step():
    first = {"step": 5, "total": 240, "epoch": 0.02, "elapsed_s": 116.0, "remaining_s": 5452.0}
    later = {"step": 40, "total": 240, "epoch": 0.16, "elapsed_s": 121.0, "remaining_s": 605.0}
    # 5 s after the first point: too soon to tell; the log's own remaining time stays
    assert true_progress(later, 100_000, since=first)["remaining_s"] == 605.0
    late = {"step": 120, "total": 240, "epoch": 0.48, "elapsed_s": 131.5, "remaining_s": 131.5}
    out = true_progress(late, 100_000, since=first)
    assert out["remaining_s"] == pytest.approx(120 * 15.5 / 115, abs=0.05)  # ~16 s, not the log's 131 s
    assert out["tokens_per_s"] == pytest.approx(0.46 * 100_000 / 15.5)
    assert out["total_tokens"] == 48_000
    assert true_progress(late, 100_000)["tokens_per_s"] == pytest.approx(48_000 / 131.5)  # no anchor
    assert true_progress(late, 100_000, since={"step": "x"})["remaining_s"] == 131.5  # unreadable anchor
    # a resumed run: its log clock restarted, its epoch did not: no rate until one is measured
    resumed_first = true_progress(first, 100_000, since=first, resumed=True)
    assert "tokens_per_s" not in resumed_first and resumed_first["total_tokens"] == 2000
    assert true_progress(late, 100_000, since=first, resumed=True)["tokens_per_s"] == pytest.approx(
        0.46 * 100_000 / 15.5)
    unknown_total = {**late, "total": None, "remaining_s": None}
    assert true_progress(unknown_total, 100_000, since=first).get("remaining_s") is None


def test_the_runner_follows_a_compiled_run_from_its_first_logged_step(tmp_path):
    from runners.job import Job
    from runners.store import Store
    from runners.worker.follow import JobFollower
    from runners.worker.running import Running

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    job, _ = store.add_job(Job(kind="train", state="running", work_dir=str(tmp_path / "job")))
    log = tmp_path / "job" / "output" / "trainer_log.jsonl"
    log.parent.mkdir(parents=True)

    def logged(step: int, elapsed: str, remaining: str) -> str:
        return json.dumps({"current_steps": step, "total_steps": 240, "loss": 2.0, "lr": 1e-4,
                           "epoch": step / 250, "percentage": step / 2.4, "elapsed_time": elapsed,
                           "remaining_time": remaining}) + "\n"

    follower = JobFollower(store, {job.id: 100_000})
    run = Running(job.id, {})
    run.follower = follower.trainer_log(store.get(job.id))
    log.write_text(logged(5, "0:01:56", "1:30:52"))  # ~2 min compiling in step 1
    follower.follow(store.get(job.id), run)
    with log.open("a") as fh:
        fh.write(logged(120, "0:02:11", "0:02:11"))
    follower.follow(store.get(job.id), run)
    events = [e.data for e in store.events_since(0, job_id=job.id) if e.type == "progress"]
    assert [e["step"] for e in events] == [5, 120]
    assert events[0]["remaining_s"] == 5452  # too early to measure: the trainer's own guess
    assert events[-1]["remaining_s"] == pytest.approx(120 * 15 / 115, abs=0.05)
    assert events[-1]["tokens_per_s"] == pytest.approx((0.48 - 0.02) * 100_000 / 15)
    latest = store.get(job.id).progress
    assert latest["remaining_s"] == events[-1]["remaining_s"] and latest["total_tokens"] == 48_000


def test_steady_rate_leaves_loading_and_compiling_out():
    # the first logged step came after ~2 min of compiling; then 0.02 epoch every 5 s
    points = [(121.0, 0.02), (126.0, 0.04), (131.0, 0.06), (136.0, 0.08)]
    assert steady_rate(points, 1_000_000) == pytest.approx(0.06 * 1_000_000 / 15)
    # a resumed run: the log's clock restarts; only the last run's points count
    resumed = [(30.0, 0.01), (60.0, 0.03), (3.0, 0.03), (8.0, 0.05), (18.0, 0.09)]
    assert steady_rate(resumed, 1_000_000) == pytest.approx(0.06 * 1_000_000 / 15)
    # what the whole runtime would say instead: 80,000 tokens / 136 s
    assert 80_000 / 136 < steady_rate(points, 1_000_000) / 6
    assert steady_rate(points[:2], 1_000_000) is None  # 5 s of whole-second times: too short to tell
    assert steady_rate(points[:1], 1_000_000) is None
    assert steady_rate([(1.0, 0.5), (20.0, 0.5)], 1_000_000) is None  # no progress
    assert steady_rate(points, None) is None and steady_rate(points, 0) is None
    assert steady_rate([(float("nan"), 0.1), *points], 1_000_000) == pytest.approx(4000)
    assert steady_rate([(0.0, 0.0), (100.0, 1e9)], 1e9) is None  # absurd: never shown


def test_a_compiled_job_is_estimated_with_a_cold_compile_until_the_runner_has_compiled_its_shapes(tmp_path):
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}
    args = {"cutoff_len": 1472, "per_device_train_batch_size": 1, "torch_compile": True}
    key = eta.compile_key(config, args)
    assert key == eta.compile_key(dict(config), {**args, "model_name_or_path": "/elsewhere"})
    assert key != eta.compile_key(config, {**args, "cutoff_len": 2048})
    assert key != eta.compile_key(config, {**args, "torch_compile_mode": "reduce-overhead"})
    assert key != eta.compile_key({**config, "num_hidden_layers": 16}, args)
    assert eta.compile_seconds({}, key) == eta.COLD_COMPILE_S
    graphs = {**args, "torch_compile_mode": "reduce-overhead"}  # CUDA graphs compile longer
    assert eta.cold_compile_seconds(graphs) == 143.0 and eta.cold_compile_seconds(args) == eta.COLD_COMPILE_S
    assert eta.compile_seconds({}, eta.compile_key(config, graphs), eta.cold_compile_seconds(graphs)) == 143.0
    # a cold compile of a shape: the next finds the cache warm (the warm share of it)
    first = eta.record_compile({}, key, 110.0)
    assert eta.compile_seconds(first, key) == pytest.approx(110.0 * eta.WARM_COMPILE_SHARE, abs=0.05)
    table = eta.record_compile(first, key, 21.9)  # a measured warm compile is what comes next
    assert eta.compile_seconds(table, key) == pytest.approx(21.9)
    # cold or warm is told by the time, not by the record: a cache cleared under a record...
    cleared = eta.record_compile(table, key, 112.0)
    assert eta.compile_seconds(cleared, key) == pytest.approx(112.0 * eta.WARM_COMPILE_SHARE, abs=0.05)
    # ...or warm with none (a failed first attempt compiled it, a lost calibration file)
    assert eta.compile_seconds(eta.record_compile({}, key, 22.0), key) == pytest.approx(22.0)
    # a CUDA-graph compile is judged against its own cold figure (143 s)
    assert eta.compile_seconds(eta.record_compile({}, key, 60.0, 143.0), key) == pytest.approx(60.0)
    assert eta.compile_seconds(eta.record_compile({}, key, 80.0, 143.0), key) == pytest.approx(15.2)
    saved = tmp_path / "calibration" / "host.json"  # what the runner keeps between jobs
    eta.save_table(saved, table)
    assert eta.compile_seconds(eta.load_table(saved), key) == pytest.approx(21.9)
    assert eta.record_compile(table, key, float("nan")) == table
    base = {"H200|fast|1": {"param_tokens_per_s": 8.0e13, "startup_s": 60.0, "runs": 3}}
    cold = eta.estimate(base, tokens=24_000_000, params=8_000_000_000, gpu_name="NVIDIA H200", recipe="fast",
                        compile_s=eta.compile_seconds(base, key), compiled=True)
    warm = eta.estimate({**base, **table}, tokens=24_000_000, params=8_000_000_000, gpu_name="NVIDIA H200",
                        recipe="fast", compile_s=eta.compile_seconds(table, key), compiled=True)
    assert cold.seconds == pytest.approx(60 + eta.COLD_COMPILE_S + 2400)
    assert warm.seconds == pytest.approx(60 + 21.9 + 2400)
    assert warm.to_dict()["compile_s"] == pytest.approx(21.9)
    assert is_compiled(args) and is_compiled({"torch_compile_mode": "reduce-overhead"})
    assert not is_compiled({"torch_compile": "false"}) and not is_compiled({})


def test_a_queued_fast_job_is_estimated_with_its_plans_compile(tmp_path, monkeypatch):
    """prepare() as the runner calls it: the plan decides the compile mode, and the estimate counts
    that mode's cold compile (CUDA graphs on one GPU: 143 s; two GPUs: no graphs, 115 s), or what
    the runner expects once it has compiled the shape."""
    from runners.hardware import Gpu, Hardware
    from runners.speed import trainprep

    count = TokenCount(tuple(sorted([300] * 900 + [1400] * 100)), 2048)
    monkeypatch.setattr(trainprep, "count_tokens", lambda args, cache_dir, env=None: count)
    monkeypatch.setattr(trainprep, "model_config", lambda model: dict(LLAMA3_8B))
    cards = Hardware("h", (Gpu("0", "NVIDIA H200", 143_771, 9.0), Gpu("1", "NVIDIA H200", 143_771, 9.0)), 16)
    base = {**recipes.PRESETS["fast"].values, "model_name_or_path": "/m", "dataset": "d"}

    def prepared(slots, table):
        return trainprep.prepare(dict(base), preset="fast", spec={}, hardware=cards, slots=slots,
                                 cache_dir=tmp_path, table=table)

    one = prepared(["0"], {})
    assert one.args["torch_compile_mode"] == "reduce-overhead"
    assert one.info["estimate"]["compile_s"] == pytest.approx(143.0)
    two = prepared(["0", "1"], {})
    assert "torch_compile_mode" not in two.args and two.info["estimate"]["compile_s"] == pytest.approx(115.0)
    known = eta.record_compile({}, eta.compile_key(LLAMA3_8B, one.args), 150.0, 143.0)
    warm = 150.0 * eta.WARM_COMPILE_SHARE
    assert prepared(["0"], known).info["estimate"]["compile_s"] == pytest.approx(warm, abs=0.05)


def test_a_runner_plans_fast_for_the_card_it_was_built_with(settings, monkeypatch):
    """The bench proves the 80/24 GB plans by giving the runner a capped card. Setting
    `worker.hardware` after construction once reached none of the runner's parts (the 24 GB run was
    planned for the whole H200 and ran out of memory under its cap): a runner's hardware is given
    when it is built, and cannot be swapped later."""
    from runners.hardware import Gpu
    from runners.speed import trainprep

    count = TokenCount(tuple(sorted([300] * 900 + [1400] * 100)), 2048)
    monkeypatch.setattr(trainprep, "count_tokens", lambda args, cache_dir, env=None: count)
    monkeypatch.setattr(trainprep, "model_config", lambda model: dict(LLAMA3_8B))
    planned = {}
    for name, mib in (("NVIDIA H200", 143_771), ("NVIDIA GeForce RTX 4090", 24_564)):
        card = Hardware("h", (Gpu("0", name, mib, 8.9),), 16)
        runtime = Runtime(settings, hardware=card)
        queue = runtime.queue  # judges requests by that card too (bf16 here on a CPU machine)
        queue.ensure_demo_datasets()
        tiny = str(settings.models_dir / "tiny-llama3")
        job = queue.submit_train(preset="fast", pairs={"model": tiny, "dataset": "demo"})
        runtime.worker.estimates.prepare_launch(job, ["0"])
        planned[mib] = runtime.store.get(job.id)
        with pytest.raises(AttributeError):
            runtime.worker.hardware = Hardware("h", (), 16)
    big, small = planned[143_771], planned[24_564]
    assert big.metrics["plan"]["checkpointing"] is False
    assert big.args["disable_gradient_checkpointing"] is True
    assert small.metrics["plan"]["checkpointing"] is True
    assert not small.args.get("disable_gradient_checkpointing")
    assert small.metrics["plan"]["est_peak_bytes"] <= 24_564 * 2**20 < big.metrics["plan"]["est_peak_bytes"]


def test_a_finished_compiled_job_reports_its_training_speed_and_teaches_the_runner_its_compile_time():
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}
    args = {"cutoff_len": 1472, "per_device_train_batch_size": 1, "torch_compile": True,
            "torch_compile_mode": "reduce-overhead", "disable_gradient_checkpointing": True}
    eager_args = {**args, "torch_compile": False, "torch_compile_mode": None}
    # the bench's cold run: 120 steps = 0.48 epoch of 356,717 tokens; 131 s in the trainer, of
    # which ~115 s compiling in step 1; the first log line at step 5
    tpe = 356_717
    points = [(116.0 + 0.131 * (s - 5), s / 250) for s in range(5, 121, 5)]
    metrics = {"tokens_per_epoch": tpe, "epoch": 0.48, "train_runtime": 131.2, "params": 8_030_261_248,
               "gpu": "NVIDIA H200"}
    out = measure(metrics, points=points, args=args, config=config, preset="fast", n_gpus=1, wall_s=185.1,
                  first_attempt=True, table={})
    steady = (0.48 - 0.02) * tpe / (0.131 * 115)
    assert out.metrics["tokens_per_s"] == pytest.approx(steady, rel=1e-3)  # not 171,224 / 131 s
    assert out.metrics["mfu"] == pytest.approx(4 * 8_030_261_248 * steady / 989e12, rel=1e-3)
    assert out.metrics["compile_s"] == pytest.approx(131.2 - 0.48 * tpe / steady, rel=1e-3)
    assert out.metrics["actual_s"] == 185.1 and metrics.get("actual_s") is None  # input left alone
    key = eta.compile_key(config, args)
    warm_share = out.metrics["compile_s"] * eta.WARM_COMPILE_SHARE
    assert eta.compile_seconds(out.table, key) == pytest.approx(warm_share, abs=0.1)
    # the runner's first job of the recipe replaces the shipped default (another machine's)
    assert out.table["H200|fast|1"]["startup_s"] == pytest.approx(185.1 - 131.2, abs=0.1)
    assert out.table["H200|fast|1"]["param_tokens_per_s"] == pytest.approx(steady * 8_030_261_248)
    # the next estimate of the same shapes on this runner: the cache is warm now, the measured rate
    est = eta.estimate(out.table, tokens=171_224, params=8_030_261_248, gpu_name="NVIDIA H200", recipe="fast",
                       compile_s=eta.compile_seconds(out.table, key))
    assert est.compile_s == pytest.approx(warm_share, abs=0.1) and 15 < est.compile_s < 25
    # a second job of the same shapes found the cache warm: 22 s; the one after expects that
    warm_points = [(22.0 + 0.131 * (s - 5), s / 250) for s in range(5, 121, 5)]
    warm = measure({**metrics, "train_runtime": 37.3}, points=warm_points, args=args, config=config,
                   preset="fast", n_gpus=1, wall_s=91.0, first_attempt=True, table=out.table)
    assert eta.compile_seconds(warm.table, key) == pytest.approx(37.3 - 0.48 * tpe / steady, abs=0.1)
    assert eta.compile_seconds(warm.table, key) < 25
    # a resumed run teaches no compile time; an eager run has none; too few points: runtime-based
    again = measure(metrics, points=points, args=args, config=config, preset="fast", n_gpus=1, wall_s=185.1,
                    first_attempt=False, table={})
    assert "compile_s" not in again.metrics and key not in again.table
    eager = measure(metrics, points=points, args=eager_args, config=config,
                    preset="fast", n_gpus=1, wall_s=185.1, first_attempt=True, table={})
    assert "compile_s" not in eager.metrics
    short = measure(metrics, points=points[:1], args=eager_args, config=config,
                    preset="fast", n_gpus=1, wall_s=185.1, first_attempt=True, table={})
    assert short.metrics["tokens_per_s"] == pytest.approx(0.48 * tpe / 131.2, rel=1e-3)
    # a resumed run whose last stretch logged too little to measure, or a short compiled run: no
    # figure at all rather than a false one (tokens of the whole job over one attempt's runtime, or
    # over a runtime that is mostly compiling), and nothing taught to the table
    for first, how in ((False, eager_args), (True, args)):
        none = measure({**metrics, "epoch": 3.0, "train_runtime": 40.0}, points=points[:1], args=how,
                       config=config, preset="fast", n_gpus=1, wall_s=60.0, first_attempt=first, table={})
        assert "tokens_per_s" not in none.metrics and "mfu" not in none.metrics and none.table is None
    cpu = measure({**metrics, "gpu": None, "params": None}, points=points, args=args, config=config,
                  preset="tiny", n_gpus=1, wall_s=10.0, first_attempt=True, table={})
    assert cpu.table is None and "mfu" not in cpu.metrics and "compile_s" not in cpu.metrics


def test_training_tokens_honours_a_step_limit():
    assert eta.training_tokens(1000, 3.0) == 3000
    assert eta.training_tokens(1000, 3.0, max_steps=2, tokens_per_step=100) == 200
    assert eta.training_tokens(1000, 1.0, max_steps=50, tokens_per_step=100) == 1000


def test_refine_folds_each_finished_job_into_the_table(tmp_path):
    key = "CPU|tiny|1"
    table = eta.refine({}, key, tokens_per_s=100.0, params=1000, startup_s=10.0)
    assert table[key] == {"param_tokens_per_s": 100_000.0, "startup_s": 10.0, "runs": 1}
    table = eta.refine(table, key, tokens_per_s=300.0, params=1000, startup_s=20.0)
    assert table[key]["param_tokens_per_s"] == pytest.approx(200_000.0) and table[key]["runs"] == 2
    assert eta.refine(table, key, tokens_per_s=float("nan"), params=1000, startup_s=1.0) == table
    # A default (bench) entry is replaced by the first real measurement on this runner.
    fresh = eta.refine({}, "H200|fast|1", tokens_per_s=5000.0, params=8_000_000_000, startup_s=30.0)
    assert fresh["H200|fast|1"] == {"param_tokens_per_s": 4.0e13, "startup_s": 30.0, "runs": 1}
    kept = eta.refine({}, "H200|fast|1", tokens_per_s=5000.0, params=8_000_000_000, startup_s=None)
    assert kept["H200|fast|1"]["startup_s"] == eta.DEFAULT_CALIBRATION["H200|fast|1"]["startup_s"]
    path = tmp_path / "cal" / "host.json"
    eta.save_table(path, table)
    assert eta.load_table(path) == table
    path.write_text("[1, 2]")
    assert eta.load_table(path) == {}


def test_a_short_compiled_run_shows_no_false_speed_but_its_time_beside_the_estimate():
    # fast-80g on the H200: 40 steps at 0.122 s after 27 s of compiling; logged every step, so the
    # log spans ~5 s (too little to measure); the live progress's last figure, tokens over a
    # runtime that is mostly compiling, was 2,091 tokens/s and used to stay in the job's record
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}
    args = {"cutoff_len": 1472, "per_device_train_batch_size": 1, "torch_compile": True,
            "torch_compile_mode": "reduce-overhead"}
    points = [(24.0 + 0.122 * s, s / 250) for s in range(1, 41)]
    points = [(float(int(t)), e) for t, e in points]  # the trainer log's whole seconds
    metrics = {"tokens_per_epoch": 354_290, "epoch": 0.16, "train_runtime": 28.5, "params": 8_030_261_248,
               "gpu": "NVIDIA H200", "tokens_per_s": 2091.4, "mfu": 0.068}
    out = measure(metrics, points=points, args=args, config=config, preset="fast", n_gpus=1, wall_s=58.9,
                  first_attempt=True, table={})
    assert "tokens_per_s" not in out.metrics and "mfu" not in out.metrics
    assert out.metrics["actual_s"] == 58.9 and out.table is None
    # the same run measured over enough of its log keeps its steady figure
    longer = [(24.0 + 0.122 * s, s / 250) for s in range(1, 241)]
    full = measure({**metrics, "epoch": 0.96, "train_runtime": 53.3}, points=longer, args=args, config=config,
                   preset="fast", n_gpus=1, wall_s=84.0, first_attempt=True, table={})
    assert full.metrics["tokens_per_s"] == pytest.approx(354_290 / 250 / 0.122, rel=1e-3)


def test_an_eager_runs_startup_counts_its_first_step_and_final_save():
    # seed-cli-20 on the H200: 140.7 s wall, 87.0 s in the trainer, of which 74.5 s training at the
    # steady rate: the 12.5 s left in the trainer (warm-up, saving) belongs to start-up, or every
    # estimate of an eager run is short by it
    tpe = 347_692
    rate = 1494.0
    epoch = 111_261 / tpe
    points = [(3.0 + 3.724 * (s - 1), epoch * s / 20) for s in range(1, 21)]
    metrics = {"tokens_per_epoch": tpe, "epoch": epoch, "train_runtime": 87.0, "params": 8_030_261_248,
               "gpu": "NVIDIA H200"}
    out = measure(metrics, points=points, args={"cutoff_len": 1024}, config={}, preset="seed-cli", n_gpus=1,
                  wall_s=140.7, first_attempt=True, table={})
    steady = out.metrics["tokens_per_s"]
    assert steady == pytest.approx(rate, rel=0.01)
    # estimated again from what it taught the runner, the same job comes out at its own time (with
    # start-up as wall - runtime it came out 12.5 s short)
    again = eta.estimate(out.table, tokens=111_261, params=8_030_261_248, gpu_name="NVIDIA H200",
                         recipe="seed-cli")
    assert again.seconds == pytest.approx(140.7, abs=0.5)
    assert out.table["H200|seed-cli|1"]["startup_s"] == pytest.approx(140.7 - 111_261 / steady, abs=0.1)
    # a resumed attempt's wall time is not its start-up
    resumed = measure(metrics, points=points, args={"cutoff_len": 1024}, config={}, preset="seed-cli",
                      n_gpus=1, wall_s=140.7, first_attempt=False, table={})
    shipped = eta.DEFAULT_CALIBRATION["H200|seed-cli|1"]
    assert resumed.table["H200|seed-cli|1"]["startup_s"] == shipped["startup_s"]


def test_a_runner_scales_the_defaults_of_recipes_it_has_not_run_by_how_its_host_compares():
    params = 8_030_261_248
    shipped = eta.DEFAULT_CALIBRATION
    seed_rate = shipped["H200|seed|1"]["param_tokens_per_s"] / params
    fresh = eta.estimate({}, tokens=85_030, params=params, gpu_name="NVIDIA H200", recipe="seed")
    assert fresh.tokens_per_s == pytest.approx(seed_rate)
    # this runner's host ran `seed-cli` (eager, host-bound) at 0.8x its default, start-up 1.2x
    cli = shipped["H200|seed-cli|1"]
    table = eta.refine({}, "H200|seed-cli|1", tokens_per_s=0.8 * cli["param_tokens_per_s"] / params,
                       params=params, startup_s=1.2 * cli["startup_s"])
    table = eta.record_host(table, "H200", False, "H200|seed-cli|1",
                            tokens_per_s=0.8 * cli["param_tokens_per_s"] / params, params=params,
                            startup_s=1.2 * cli["startup_s"])
    assert eta.host_factors(table, "H200", False) == pytest.approx((0.8, 1.2))
    seed = eta.estimate(table, tokens=85_030, params=params, gpu_name="NVIDIA H200", recipe="seed")
    assert seed.tokens_per_s == pytest.approx(0.8 * seed_rate)
    assert seed.startup_s == pytest.approx(1.2 * shipped["H200|seed|1"]["startup_s"])
    # a compiled recipe is bound by the GPU, not the host: its default stands
    fast = eta.estimate(table, tokens=85_030, params=params, gpu_name="NVIDIA H200", recipe="fast",
                        compiled=True)
    assert fast.tokens_per_s == pytest.approx(shipped["H200|fast|1"]["param_tokens_per_s"] / params)
    # the runner's own measurement of a recipe is not scaled again
    cli_again = eta.estimate(table, tokens=85_030, params=params, gpu_name="NVIDIA H200", recipe="seed-cli")
    assert cli_again.tokens_per_s == pytest.approx(table["H200|seed-cli|1"]["param_tokens_per_s"] / params)
    # a second job folds in; a broken ratio is held to the range; a recipe with no default adds nothing
    table = eta.record_host(table, "H200", False, "H200|seed|1", tokens_per_s=seed_rate, params=params,
                            startup_s=None)
    assert eta.host_factors(table, "H200", False)[0] == pytest.approx(0.9)
    assert eta.host_factors(table, "H200", False)[1] == pytest.approx(1.2)
    wild = eta.record_host({}, "H200", False, "H200|seed|1", tokens_per_s=1e6, params=params, startup_s=None)
    assert eta.host_factors(wild, "H200", False)[0] == eta.HOST_FACTOR_RANGE[1]
    assert eta.record_host({}, "H200", False, "H200|custom|1", tokens_per_s=10.0, params=params,
                           startup_s=1.0) == {}
    # measure() records it for a finished job, and the table keeps it through save and load
    tpe = 354_290
    points = [(2.0 + 1.0 * s, s * 1417 / tpe) for s in range(1, 61)]
    out = measure({"tokens_per_epoch": tpe, "epoch": 60 * 1417 / tpe, "train_runtime": 66.0, "params": params,
                   "gpu": "NVIDIA H200"}, points=points, args={}, config={}, preset="seed", n_gpus=1,
                  wall_s=110.0, first_attempt=True, table={})
    factor = 1417.0 / seed_rate
    assert eta.host_factors(out.table, "H200", False)[0] == pytest.approx(factor, rel=1e-3)
    assert eta.host_factors(out.table, "H200", True) == (1.0, 1.0)


def test_host_factors_learn_only_from_jobs_that_say_something_about_the_host():
    params = eta.REFERENCE_PARAMS
    cli = eta.DEFAULT_CALIBRATION["H200|seed-cli|1"]
    slow = 0.8 * cli["param_tokens_per_s"] / params

    def record(key, compiled=False, size=params, startup=None):
        return eta.record_host({}, "H200", compiled, key, tokens_per_s=slow * params / size, params=size,
                               startup_s=startup)

    assert host_key_of(record("H200|seed-cli|1")) == ["host|H200|eager"]
    assert record("H200|fast|2", compiled=True) == {}  # data parallel: its default is a guess
    assert record("H200|seed-cli|1", size=500_000_000) == {}  # a 0.5B model tells about itself
    assert record("H200|seed|1", compiled=True) == {}  # a `seed` the user compiled
    # a job without a start-up figure (resumed) leaves start-up unknown, not "as the defaults"
    first = record("H200|seed-cli|1")
    assert "startup" not in first["host|H200|eager"]
    then = eta.record_host(first, "H200", False, "H200|seed-cli|1", tokens_per_s=slow, params=params,
                           startup_s=1.2 * cli["startup_s"])
    assert then["host|H200|eager"]["startup"] == pytest.approx(1.2)
    assert then["host|H200|eager"]["rate"] == pytest.approx(0.8) and then["host|H200|eager"]["runs"] == 2


def test_a_job_unlike_the_default_does_not_stand_for_it():
    # a runner's first `fast` job on a 0.5B model would otherwise become the 8B `fast` figure
    small = eta.refine({}, "H200|fast|1", tokens_per_s=60_000.0, params=500_000_000, startup_s=20.0,
                       compiled=True)
    assert small == {}
    eager = eta.refine({}, "H200|fast|1", tokens_per_s=5_000.0, params=eta.REFERENCE_PARAMS, startup_s=20.0,
                       compiled=False)
    assert eager == {}
    like = eta.refine({}, "H200|fast|1", tokens_per_s=12_000.0, params=eta.REFERENCE_PARAMS, startup_s=20.0,
                      compiled=True)
    assert like["H200|fast|1"]["runs"] == 1
    # a recipe with no default learns from any job, as before
    assert eta.refine({}, "H200|custom|1", tokens_per_s=60_000.0, params=500_000_000, startup_s=20.0,
                      compiled=True)["H200|custom|1"]["runs"] == 1


def test_a_job_run_slower_than_its_default_is_estimated_slower(tmp_path, monkeypatch):
    """`fast` planned for a 24 GB card runs eager with checkpointing; its default was measured
    compiled without: the bench's capped H200 run was estimated at 15,707 tokens/s and trained at
    3,860. A job that should run faster than its default keeps the default's rate (not measured)."""
    from runners.hardware import Gpu
    from runners.speed import trainprep

    params = eta.REFERENCE_PARAMS
    fast = eta.DEFAULT_CALIBRATION["H200|fast|1"]["param_tokens_per_s"] / params
    seed = eta.DEFAULT_CALIBRATION["H200|seed|1"]["param_tokens_per_s"] / params

    def est(recipe, compiled, checkpointing, table=None, gpus=1):
        return eta.estimate(table or {}, tokens=10_000, params=params, gpu_name="NVIDIA H200", recipe=recipe,
                            compiled=compiled, checkpointing=checkpointing, n_gpus=gpus)

    def rate(*how, **kw):
        return est(*how, **kw).tokens_per_s

    assert rate("fast", True, False) == pytest.approx(fast)
    assert est("fast", False, True).basis == "default"
    assert rate("fast", False, False) == pytest.approx(fast * eta.EAGER_SHARE)
    assert rate("fast", False, True) == pytest.approx(fast * eta.EAGER_SHARE * eta.CHECKPOINTING_SHARE)
    assert rate("fast", True, None) == pytest.approx(fast)  # checkpointing unknown: not guessed
    assert rate("fast", None, None) == pytest.approx(fast)  # nor compiling
    assert rate("seed", True, False) == pytest.approx(seed)  # faster than measured: kept, errs long
    # two GPUs: no CUDA graphs either way, so an eager job is not charged for losing them twice
    two = eta.lookup({}, "H200|fast|2")[0]["param_tokens_per_s"] / params
    assert rate("fast", True, False, gpus=2) == pytest.approx(two)
    assert rate("fast", False, False, gpus=2) == pytest.approx(two * eta.EAGER_SHARE / eta.NO_GRAPHS_SHARE)
    # the runner's own figure of a recipe stands for jobs run as it ran, and is shared out the same
    # way for a job run slower (the first finished `fast` job must not make an eager one look fast)
    own = eta.refine({}, "H200|fast|1", tokens_per_s=12_000.0, params=params, startup_s=30.0,
                     compiled=True, checkpointing=False)
    assert own["H200|fast|1"]["compiled"] == 1 and own["H200|fast|1"]["checkpointing"] == 0
    assert est("fast", True, False, own).basis == "runner"
    assert rate("fast", True, False, own) == pytest.approx(12_000.0)
    slower = eta.EAGER_SHARE * eta.CHECKPOINTING_SHARE
    assert rate("fast", False, True, own) == pytest.approx(12_000.0 * slower)
    # an entry kept before the flags were: it ran as its recipe's default
    older = {"H200|fast|1": {"param_tokens_per_s": 12_000.0 * params, "startup_s": 30.0, "runs": 1}}
    assert rate("fast", False, False, older) == pytest.approx(12_000.0 * eta.EAGER_SHARE)
    # under a key with no default, a job run otherwise replaces the entry instead of blending
    custom = eta.refine({}, "H200|custom|1", tokens_per_s=3_000.0, params=params, startup_s=30.0,
                        compiled=False, checkpointing=True)
    assert rate("custom", False, True, custom) == pytest.approx(3_000.0)
    assert rate("custom", True, False, custom) == pytest.approx(3_000.0)  # faster: not measured, kept
    same = eta.refine(custom, "H200|custom|1", tokens_per_s=5_000.0, params=params, startup_s=30.0,
                      compiled=False, checkpointing=True)
    assert same["H200|custom|1"]["param_tokens_per_s"] == pytest.approx(4_000.0 * params)
    other = eta.refine(custom, "H200|custom|1", tokens_per_s=9_000.0, params=params, startup_s=30.0,
                       compiled=True, checkpointing=False)
    assert other["H200|custom|1"]["param_tokens_per_s"] == pytest.approx(9_000.0 * params)
    assert other["H200|custom|1"]["compiled"] == 1 and other["H200|custom|1"]["runs"] == 1
    # such a job teaches neither its recipe's default nor the host
    for changed in ({"compiled": False}, {"checkpointing": True}):
        how = {"compiled": True, "checkpointing": False, **changed}
        assert eta.refine({}, "H200|fast|1", tokens_per_s=3_860.0, params=params, startup_s=60.0, **how) == {}
        assert eta.record_host({}, "H200", how["compiled"], "H200|fast|1", tokens_per_s=3_860.0,
                               params=params, startup_s=60.0, checkpointing=how["checkpointing"]) == {}
    no_ckpt = eta.refine({}, "H200|seed-cli|1", tokens_per_s=2_500.0, params=params, startup_s=40.0,
                         compiled=False, checkpointing=False)
    assert no_ckpt == {}

    # prepare() as the runner calls it, for the bench's capped card: the plan checkpoints, runs eager
    count = TokenCount(tuple(sorted([300] * 900 + [1400] * 100)), 2048)
    monkeypatch.setattr(trainprep, "count_tokens", lambda args, cache_dir, env=None: count)
    monkeypatch.setattr(trainprep, "model_config", lambda model: dict(LLAMA3_8B))
    capped = Hardware("h", (Gpu("0", "NVIDIA H200", 24_564, 9.0),), 16)
    base = {**recipes.PRESETS["fast"].values, "model_name_or_path": "/m", "dataset": "d"}
    out = trainprep.prepare(dict(base), preset="fast", spec={}, hardware=capped, slots=["0"],
                            cache_dir=tmp_path, table={})
    assert out.info["plan"]["checkpointing"] is True and not is_compiled(out.args)
    shipped = eta.DEFAULT_CALIBRATION["H200|fast|1"]["param_tokens_per_s"]
    assert out.info["estimate"]["tokens_per_s"] == pytest.approx(
        shipped * eta.EAGER_SHARE * eta.CHECKPOINTING_SHARE / out.info["params"], rel=1e-9
    )
    assert out.info["estimate"]["compile_s"] == 0.0


def test_cuda_graphs_unknown_flags_and_several_gpus_in_the_shares():
    from runners.speed.trainprep import uses_checkpointing, uses_graphs

    params = eta.REFERENCE_PARAMS
    fast = eta.DEFAULT_CALIBRATION["H200|fast|1"]["param_tokens_per_s"] / params

    def est(table, compiled, checkpointing=False, graphs=None, gpus=1):
        return eta.estimate(table, tokens=10_000, params=params, gpu_name="NVIDIA H200", recipe="fast",
                            compiled=compiled, checkpointing=checkpointing, graphs=graphs, n_gpus=gpus)

    # compiled without the CUDA graphs the default had (a key the user set leaves them out)
    assert est({}, True, graphs=False).tokens_per_s == pytest.approx(fast * eta.NO_GRAPHS_SHARE)
    assert est({}, True, graphs=True).tokens_per_s == pytest.approx(fast)
    # not known whether it compiles: the host factor of the way the entry ran, no share
    hosts = {"host|H200|eager": {"rate": 0.5, "runs": 1}, "host|H200|compiled": {"rate": 1.0, "runs": 1}}
    assert est(hosts, None).tokens_per_s == pytest.approx(fast)
    assert est(hosts, False).tokens_per_s == pytest.approx(fast * 0.5 * eta.EAGER_SHARE)
    unknown = eta.record_host({}, "H200", None, "H200|fast|1", tokens_per_s=1e4, params=params, startup_s=9.0)
    assert unknown == {}
    # two GPUs: the runner's own entry from a compiled run (no graphs there) charges an eager job
    # the eager share over what graphs would have given, once
    two = eta.refine({}, "H200|fast|2", tokens_per_s=20_000.0, params=params, startup_s=40.0,
                     compiled=True, checkpointing=False, graphs=False)
    assert two["H200|fast|2"]["graphs"] == 0
    assert est(two, True, gpus=2).tokens_per_s == pytest.approx(20_000.0)
    once = 20_000.0 * eta.EAGER_SHARE / eta.NO_GRAPHS_SHARE
    assert est(two, False, gpus=2).tokens_per_s == pytest.approx(once)
    # and a small model's run on two GPUs does not stand for every 8B one after it
    assert eta.refine({}, "H200|fast|2", tokens_per_s=60_000.0, params=500_000_000, startup_s=20.0,
                      compiled=True, checkpointing=False, graphs=False) == {}
    assert eta.refine({}, "H200|custom|2", tokens_per_s=60_000.0, params=500_000_000, startup_s=20.0,
                      compiled=True)["H200|custom|2"]["runs"] == 1  # no default: anything goes
    # how a job runs, read from its arguments
    assert uses_graphs({"torch_compile": True, "torch_compile_mode": "reduce-overhead"})
    assert not uses_graphs({"torch_compile": True}) and not uses_graphs({"torch_compile_mode": "default"})
    assert uses_checkpointing({}) and not uses_checkpointing({"disable_gradient_checkpointing": True})
    assert uses_checkpointing({"disable_gradient_checkpointing": True, "gradient_checkpointing": True})
    config = {"model_type": "llama", "hidden_size": 4096}
    plain = {"cutoff_len": 1472, "torch_compile": True}
    key = eta.compile_key(config, plain)
    assert key == eta.compile_key(config, {**plain, "gradient_checkpointing": None})  # recorded keys stay
    assert key != eta.compile_key(config, {**plain, "gradient_checkpointing": True})


def test_a_finish_measures_a_job_once_and_a_failed_measurement_costs_no_success():
    from runners.worker.finish import Finisher
    from runners.worker.running import Running

    class Estimates:
        calls = 0
        fail = False

        def measure(self, job, metrics):
            self.calls += 1
            if self.fail:
                raise ValueError("a broken trainer log")
            metrics["tokens_per_s"] = 11_983.1

    est = Estimates()
    finisher = Finisher(None, None, follow=None, estimates=est, uploads=None)
    job = Job(id=7, kind="train", progress={"step": 40, "tokens_per_s": 2091.4})
    run = Running(job_id=7, handle={})
    values = {"metrics": {"train_runtime": 28.5}}
    finisher._measure(job, run, values)
    assert values["progress"] == {"step": 40, "tokens_per_s": 11_983.1}
    # the finish retried after a database error: the same figures, the table not taught twice
    again = {"metrics": {"train_runtime": 28.5}}
    finisher._measure(job, run, again)
    assert est.calls == 1 and again["metrics"]["tokens_per_s"] == 11_983.1
    est.fail = True
    broken = {"metrics": {"train_runtime": 28.5}}
    finisher._measure(job, Running(job_id=7, handle={}), broken)  # logged, not raised
    assert broken == {"metrics": {"train_runtime": 28.5}}


def host_key_of(table):
    return [k for k in table if k.startswith(eta.HOST_PREFIX)]


def test_host_factors_survive_the_tables_save_and_load(tmp_path):
    table = eta.record_host({}, "H200", True, "H200|fast|1", tokens_per_s=11_000.0, params=8_030_261_248,
                            startup_s=30.0)
    path = tmp_path / "cal.json"
    eta.save_table(path, table)
    assert eta.load_table(path) == table
    path.write_text(json.dumps({"host|H200|eager": {"rate": "fast"}, "host|H200|compiled": {"rate": 0.9}}))
    assert list(eta.load_table(path)) == ["host|H200|compiled"]


def test_checkpointing_changes_what_a_compile_cache_holds():
    config = {"model_type": "llama", "hidden_size": 4096}
    args = {"cutoff_len": 1472, "per_device_train_batch_size": 1, "torch_compile": True}
    checkpointing_off = {**args, "disable_gradient_checkpointing": True}
    assert eta.compile_key(config, args) != eta.compile_key(config, checkpointing_off)


# --- the runner's count, and a packed run on a CPU (real LLaMA-Factory) ------------------------
def test_the_runner_counts_tokens_with_llamafactory_and_caches_them(settings, monkeypatch):
    runtime = Runtime(settings)
    runtime.queue.ensure_demo_datasets()
    from runners.datasets import dataset_dir
    from runners.demo.tinymodel import ensure_tiny_model

    args = {
        "model_name_or_path": str(ensure_tiny_model(settings.models_dir)),
        "template": "llama3",
        "dataset": "demo",
        "dataset_dir": str(dataset_dir(settings.data_dir)),
        "cutoff_len": 32,
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}
    count = count_tokens(args, settings.cache_dir, env=env)
    assert count.samples == 64 and 0 < count.longest <= 32 and count.cutoff == 32
    assert count.total == sum(count.lengths)

    def no_subprocess(*a, **k):
        raise AssertionError("counted again")

    monkeypatch.setattr("runners.speed.tokencount.subprocess.run", no_subprocess)
    assert count_tokens(args, settings.cache_dir) == count  # cached per dataset, tokenizer, cutoff
    with pytest.raises(AssertionError, match="counted again"):
        count_tokens({**args, "cutoff_len": 16}, settings.cache_dir)


def test_a_neat_packing_run_reports_true_throughput_and_a_second_job_gets_an_estimate(settings):
    settings.estimate = True
    runtime = Runtime(settings, hardware=Hardware(host="cpuhost", gpus=(), cpu_count=2))
    store, queue = runtime.store, runtime.queue
    runtime.start(web=False)
    try:
        pairs = {"neat_packing": "true", "epochs": "4", "cutoff": "256"}
        job = wait_for(store, queue.submit_train(preset="tiny", pairs=pairs).id, FINAL, timeout=300)
        assert job.state == "succeeded", f"{job.error}\n{job.log_tail}"
        per_epoch = job.metrics["tokens_per_epoch"]
        assert 0 < per_epoch == job.metrics["dataset_tokens"]["tokens"]
        log_file = Path(job.work_dir, "output", "trainer_log.jsonl")
        lines = [json.loads(x) for x in log_file.read_text().splitlines()]
        assert any("epoch" in line for line in lines)
        progress = [e.data for e in store.events_since(0, job_id=job.id) if e.type == "progress"]
        for point in progress:
            if point.get("total_tokens") is not None:
                assert 0 <= point["total_tokens"] <= 4 * per_epoch
            if point.get("tokens_per_s") is not None:
                assert 0 < point["tokens_per_s"] <= 10 * per_epoch
        assert job.metrics["total_tokens"] == round(job.metrics["epoch"] * per_epoch)
        # the finished job's progress shows the measured figure, not the last live one
        assert job.progress["tokens_per_s"] == job.metrics["tokens_per_s"]
        # the steady rate when the log spans 10 s or more; a shorter run (a tiny one may train in
        # under a second): tokens over the trainer's precise runtime
        points = [(p.elapsed_s, p.epoch) for p in read_trainer_log(log_file) if p.loss is not None]
        steady = steady_rate(points, per_epoch)
        expected = steady or job.metrics["total_tokens"] / job.metrics["train_runtime"]
        assert job.metrics["tokens_per_s"] == pytest.approx(expected, rel=0.01)
        assert "estimate" not in job.metrics or job.metrics["estimate"] is None  # CPU: nothing measured yet
        table = eta.load_table(settings.calibration_dir / f"{runtime.worker.host}.json")
        assert table["CPU|tiny|1"]["runs"] == 1

        second = queue.submit_train(preset="tiny", pairs={**pairs, "epochs": "2"})
        second = wait_for(store, second.id, FINAL, timeout=300)
        assert second.state == "succeeded"
        estimates = [e.data for e in store.events_since(0, job_id=second.id) if e.type == "estimate"]
        assert estimates and estimates[0]["device"] == "CPU" and estimates[0]["seconds"] > 0
        assert second.metrics["estimate"]["seconds"] > 0 and second.metrics["actual_s"] > 0
    finally:
        runtime.stop()


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite only here: these tests are about the arithmetic and the runner, not the database."""
    return f"sqlite:///{tmp_path / 'tunebot.db'}"


# --- what people see ---------------------------------------------------------------------------
def _train_job(**changes) -> Job:
    import time

    from runners.job import Job

    now = time.time()
    values = dict(id=7, kind="train", state="queued", model="/models/llama3", dataset="alpaca", method="lora",
                  preset="fast", user="U1", channel="C1", created_at=now - 60)
    values.update(changes)
    return Job(**values)


ESTIMATE = {"seconds": 2460.0, "n_gpus": 1, "device": "H200", "gpu_hours": 0.68, "tokens": 1,
            "tokens_per_s": 1, "startup_s": 60, "key": "H200|fast|1"}


def test_the_root_message_shows_the_estimate_while_queued_and_running():
    from bot.render import render_job_message

    queued = render_job_message(_train_job(metrics={"estimate": ESTIMATE}))
    assert "about 41 min on 1× H200 (0.7 GPU-h)" in json.dumps(queued, ensure_ascii=False)
    assert "about 41 min" in queued["text"]
    running = _train_job(state="running", started_at=1.0, metrics={"estimate": ESTIMATE},
                         progress={"step": 3, "total": 10, "remaining_s": 125.0, "tokens_per_s": 9522.2})
    text = json.dumps(render_job_message(running), ensure_ascii=False)
    assert "about 41 min on 1× H200" in text and "ETA 2m 05s" in text and "9,522 tokens/s" in text
    nothing = json.dumps(render_job_message(_train_job(metrics={"estimate": None})), ensure_ascii=False)
    assert "GPU-h" not in nothing


def test_the_finished_post_says_how_close_the_estimate_was_and_the_mfu():
    import time as _t

    from bot.render import render_finished

    done = _train_job(
        state="succeeded", started_at=_t.time() - 2300, finished_at=_t.time(),
        metrics={"estimate": ESTIMATE, "actual_s": 2300.0, "tokens_per_s": 9522.2, "mfu": 0.3866,
                 "gpu": "NVIDIA H200", "total_tokens": 21_900_000, "train_runtime": 2240.0},
        progress={"step": 100, "total": 100, "loss": 1.8},
    )
    text = json.dumps(render_finished(done), ensure_ascii=False)
    assert "MFU 39% of the H200's bf16 peak" in text
    assert "estimated 41 min on 1× H200 (0.7 GPU-h), took 38m 20s (+7%)" in text
    assert "21,900,000 tokens seen" in text


def test_the_queued_reply_says_an_estimate_is_coming_and_show_and_digest_carry_the_figures():
    from bot.cli.terminal import job_details
    from bot.render.replies import render_queued
    from bot.schedules.digest import results_text

    assert "time estimate follows" in render_queued(_train_job())["text"]
    assert "time estimate follows" not in render_queued(_train_job(kind="eval"))["text"]
    done = _train_job(state="succeeded", started_at=1.0, finished_at=2301.0, log_path="/x/job.log",
                      metrics={"estimate": ESTIMATE, "actual_s": 2300.0, "tokens_per_s": 9522.2,
                               "mfu": 0.3866, "gpu": "NVIDIA H200"})
    shown = job_details(done)
    assert "MFU 39%" in shown and "took 38m 20s (+7%)" in shown
    assert "9,522 tokens/s · MFU 39%" in results_text(done)


def test_a_broken_count_from_llamafactory_is_never_shown():
    from bot.render import progress_text, render_finished
    from bot.story.progress import PostedState, render_progress_post
    from runners.llamafactory.progress import Progress

    broken = {"step": 5, "total": 10, "tokens_per_s": -4.2e18, "total_tokens": -(2**63)}
    assert "tokens/s" not in progress_text(broken)
    done = _train_job(state="succeeded", started_at=1.0, finished_at=60.0, progress=broken,
                      metrics={"tokens_per_s": -2.3e18, "total_tokens": -(2**63)})
    text = json.dumps(render_finished(done))
    assert "tokens/s" not in text and "tokens seen" not in text and "e+18" not in text
    point = Progress(step=5, total=10, tokens_per_s=-4.2e18)
    from bot.story.progress import Decision

    post = json.dumps(render_progress_post(_train_job(state="running", started_at=1.0), [point],
                                           PostedState(), Decision("progress"), now=60.0))
    assert "not counted" in post and "-4" not in post


def test_an_estimate_event_edits_the_root_message():
    from bot.story.posts import EDIT_ROOT, thread_posts
    from runners.job import JobEvent

    posts = thread_posts(_train_job(metrics={"estimate": ESTIMATE}), JobEvent(id=3, job_id=7, at=1.0,
                                                                          type="estimate", data=ESTIMATE))
    assert [p.action for p in posts] == [EDIT_ROOT]
    from bot.cli.terminal import describe_event

    assert describe_event("estimate", ESTIMATE) == "estimate: about 41 min on 1× H200 (0.7 GPU-h)"
