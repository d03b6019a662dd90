"""What a job's arguments may do: paths stay in the data dir (or the operator's model roots), nothing
is published unless the operator allows it, numbers are in range, pasted YAML is bounded — all
refused before anything is queued, in plain words."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from runners.errors import UserError
from runners.hardware import Hardware
from runners.inputs import bounded_yaml
from runners.job import Job
from runners.llamafactory import safety
from runners.llamafactory.recipes import parse_yaml_spec
from runners.queue import JobQueue
from runners.settings import Settings
from runners.store import Store, parse_job_id
from runners.worker import Worker

CPU = Hardware(host="cpuhost", gpus=(), cpu_count=2)


@pytest.fixture
def local(tmp_path, shared_models):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    settings = Settings(data_dir=data)
    store = Store(settings.db_url)
    store.migrate()
    yield settings, store
    store.engine.dispose()


def _refused(settings: Settings, store: Store, pairs=None, yaml_text=None) -> str:
    queue = JobQueue(settings, store, hardware=CPU)
    with pytest.raises(UserError) as err:
        preset = "tiny" if yaml_text is None else None
        queue.submit_train(preset=preset, pairs=pairs or {}, yaml_text=yaml_text)
    assert store.list_jobs() == []
    text = err.value.text()
    assert "Traceback" not in text
    return text


# --- item 11: paths and publishing --------------------------------------------------------------

ESCAPES = [
    {"tokenized_path": "/tmp/tokenized"},
    {"cache_dir": "/tmp/cache"},
    {"swanlab_logdir": "/tmp/swan"},
    {"media_dir": "/etc"},
    {"resume_from_checkpoint": "/etc"},
    {"adapter_name_or_path": "/tmp"},
    {"deepspeed": "/etc/passwd"},
    {"tokenized_path": "../../../escaped"},  # relative to the job's folder, then out
    {"cache_dir": "~/.cache/x"},
    {"new_special_tokens_config": "/etc/hostname"},
]


@pytest.mark.parametrize("pairs", ESCAPES, ids=lambda p: next(iter(p)))
def test_path_arguments_outside_the_data_dir_are_refused(local, pairs):
    key = next(iter(pairs))
    text = _refused(*local, pairs=pairs)
    assert f"`{key}` points outside tunebot's data folder" in text


def test_a_pasted_yaml_cannot_point_outside_either(local):
    text = _refused(
        *local,
        yaml_text="model_name_or_path: tiny\ndataset: demo\ntemplate: llama3\ntokenized_path: /tmp/t\n",
    )
    assert "`tokenized_path` points outside" in text


def test_paths_inside_an_inline_deepspeed_config_are_judged_too(local):
    yaml_text = ("model_name_or_path: tiny\ndataset: demo\ntemplate: llama3\n"
                 "deepspeed:\n  zero_optimization:\n    offload_param:\n      nvme_path: /etc\n")
    assert "`deepspeed` points outside" in _refused(*local, yaml_text=yaml_text)


def test_paths_inside_the_job_or_data_dir_are_accepted(local):
    settings, store = local
    queue = JobQueue(settings, store, hardware=CPU)
    job = queue.submit_train(preset="tiny", pairs={"tokenized_path": "tokenized", "steps": "2"})
    assert job.args["tokenized_path"] == "tokenized"  # lands in the job's own folder (its cwd)
    job = queue.submit_train(preset="tiny", pairs={"cache_dir": str(settings.cache_dir / "hf")})
    assert job.args["cache_dir"] == str(settings.cache_dir / "hf")


def test_a_model_outside_the_data_dir_needs_the_operator_to_list_its_root(local, tmp_path, shared_models):
    settings, store = local
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m").symlink_to(shared_models / "tiny-llama3", target_is_directory=True)
    pairs = {"model": str(elsewhere / "m"), "template": "llama3"}
    # The tiny model's real folder is the operator's models/ symlink target: trusted. A copy of the
    # link under another folder resolves there too, so use a real folder for the refusal:
    real = tmp_path / "real-model"
    real.mkdir()
    (real / "config.json").write_text("{}")
    text = _refused(settings, store, pairs={"model": str(real), "template": "llama3"})
    assert "`model_name_or_path` points outside" in text and "TUNEBOT_MODEL_ROOTS" in text
    allowed = replace(settings, model_roots=[tmp_path])
    queue = JobQueue(allowed, store, hardware=CPU)
    assert queue.submit_train(preset="tiny", pairs=pairs).model


@pytest.mark.parametrize(
    "pairs",
    [
        {"push_to_hub": "true", "hub_model_id": "evil/x"},
        {"hub_model_id": "evil/x"},
        {"report_to": "wandb"},
        {"report_to": "none,swanlab"},
        {"use_swanlab": "true"},
        {"hub_token": "hf_abc"},
    ],
    ids=lambda p: "+".join(p),
)
def test_publishing_is_refused_unless_the_operator_allows_it(local, pairs):
    settings, store = local
    text = _refused(settings, store, pairs=pairs)
    assert "would publish" in text or "would send the run's logs" in text
    assert "TUNEBOT_ALLOW_PUBLISHING" in text


def test_the_operator_may_allow_publishing(local):
    settings, store = local
    queue = JobQueue(replace(settings, allow_publishing=True), store, hardware=CPU)
    job = queue.submit_train(preset="tiny", pairs={"push_to_hub": "true", "hub_model_id": "team/model"})
    assert job.args["push_to_hub"] is True


def test_path_arguments_come_from_llamafactorys_dataclasses_and_cover_the_known_ones():
    from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS

    derived = safety.path_arguments()
    assert safety.KNOWN_PATH_ARGUMENTS <= derived
    declared = {f.name for cls in (*_TRAIN_ARGS, *_INFER_ARGS) for f in dataclasses.fields(cls)}
    assert derived <= declared  # every name is a real LLaMA-Factory argument
    # More than the hand list: the dataclasses' own path fields (profiler traces, reward models…).
    assert {"profiler_output_dir", "ref_model", "reward_model", "generation_config"} <= derived
    assert not {"learning_rate", "template", "dataset", "hub_model_id"} & derived
    assert {"push_to_hub", "hub_model_id", "use_swanlab", "export_hub_model_id"} <= set(
        safety.publishing_arguments(declared)
    )


# --- item 15: ranges ----------------------------------------------------------------------------

RANGES = [
    ({"batch": "0"}, "`batch` (per_device_train_batch_size) must be ≥ 1, not 0"),
    ({"epochs": "-1"}, "`epochs` (num_train_epochs) must be > 0, not -1"),
    ({"lr": "-1"}, "`lr` (learning_rate) must be > 0, not -1"),
    ({"cutoff": "0"}, "`cutoff` (cutoff_len) must be ≥ 1, not 0"),
    ({"rank": "0"}, "`rank` (lora_rank) must be ≥ 1, not 0"),
    ({"steps": "-5"}, "`steps` (max_steps) must be ≥ 1, not -5"),
]


@pytest.mark.parametrize(("pairs", "message"), RANGES, ids=lambda v: str(v))
def test_out_of_range_values_are_refused_before_queueing_with_the_range(local, pairs, message):
    assert message in _refused(*local, pairs=pairs)


# --- item 12: bounded YAML ----------------------------------------------------------------------


def _alias_bomb(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        name, prev = chr(97 + i), chr(96 + i)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [8, 9, 20])
def test_an_alias_bomb_is_refused_with_bounded_work(levels):
    bomb = _alias_bomb(levels)
    if levels == 8:
        assert len(bomb) < 400  # the 335-byte class of the report
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="aliases expand to more than"):
            parse_yaml_spec(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # 9**levels items were never built
    root = __import__("yaml").compose(bomb)
    assert bounded_yaml.expanded_size(root) == bounded_yaml.MAX_NODES + 1  # counting stops at the budget


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 500 + "]" * 500, "nested too deeply"),
        ("a: " + "[" * 500, "nested too deeply"),
        ("a: &a [*a]", "refers to itself"),
        ("x: 1\n" * 20_000, "a config is at most 64 KiB"),
    ],
)
def test_deep_recursive_or_huge_yaml_is_a_plain_message(text, message):
    with pytest.raises(UserError, match=message):
        parse_yaml_spec(text)


def test_a_normal_config_still_reads():
    assert parse_yaml_spec("learning_rate: 1.0e-4\nlora_target: all\nnum_train_epochs: 3\n") == {
        "learning_rate": 1e-4,
        "lora_target": "all",
        "num_train_epochs": 3,
    }


# --- item 14: odd input -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["🦙" * 3000, "x" * 10_000, "a/" * 3000, "bad\0name"])
def test_an_absurd_model_name_is_a_plain_message_not_an_os_error(local, model):
    text = _refused(*local, pairs={"model": model})
    assert len(text) < 500  # never the whole input
    assert "model" in text


@pytest.mark.parametrize("key", ["lr", "dataset", "eval_dataset", "stage", "method", "compute", "scheduler",
                                 "optim", "gpus", "template", "z" * 3000])
def test_error_messages_never_quote_long_input_whole(local, key):
    text = _refused(*local, pairs={key: "🦙" * 3000})
    assert "🦙" * 100 not in text and "z" * 100 not in text and len(text) < 600


@pytest.mark.parametrize("ref", ["99999999999999999999999", "²", "١٢", "-1", "1e3", "", " ", "#", "0x10"])
def test_job_ids_that_are_not_plain_numbers_are_refused(ref):
    with pytest.raises(UserError, match="is not a job id"):
        parse_job_id(ref)


def test_jobs_keep_their_caches_and_configs_out_of_the_users_home(local):
    settings, store = local
    worker = Worker(settings, store, hardware=CPU)
    job, _ = store.add_job(Job(kind="train", model="m", work_dir=str(settings.jobs_dir / "1")))
    env = worker._job_env(job, ["cpu0"])
    for name in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HOME", "MPLCONFIGDIR"):
        assert Path(env[name]).is_relative_to(settings.data_dir), name
    assert env["HOME"] != os.path.expanduser("~")


@pytest.mark.parametrize("job_id", ["99999999999999999999999", "9223372036854775808", "12"])
def test_a_chat_page_of_a_huge_or_unknown_job_id_is_a_404_not_a_500(local, job_id):
    from starlette.testclient import TestClient

    from runners.runtime import Runtime
    from runners.webchat import create_chat_app

    settings, _store = local
    runtime = Runtime(settings)
    with TestClient(create_chat_app(runtime.chat_target), raise_server_exceptions=False) as client:
        assert client.get(f"/chat/{job_id}/").status_code == 404
        assert client.get(f"/chat/{job_id}/v1/models").status_code == 404
