"""The engine with the real `llamafactory-cli` on CPU: train, eval (ROUGE), export, deploy + chat,
on SQLite and on PostgreSQL; resume of a really interrupted run; bad requests refused up front."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from runners.errors import UserError
from runners.hardware import Hardware
from runners.llamafactory import recipes
from runners.queue import JobQueue
from runners.runtime import Runtime
from runners.store import Store
from runners.worker import Worker, wait_for

from .conftest import wait_until

FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")
CPU = Hardware(host="cpuhost", gpus=(), cpu_count=os.cpu_count() or 2)


def _get(url: str, key: str | None) -> int:
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0  # nothing listens any more


def test_train_eval_export_deploy_chat_with_llamafactory(settings):
    runtime = Runtime(settings, hardware=CPU)
    store, queue = runtime.store, runtime.queue
    runtime.start(web=False)
    try:
        train = queue.submit_train(preset="tiny", pairs={"epochs": "2"})
        assert train.args["include_num_input_tokens_seen"] == "non_padding"
        train = wait_for(store, train.id, FINAL, timeout=300)
        assert train.state == "succeeded", f"{train.error}\n{train.log_tail}"
        output = Path(train.artifacts["adapter"])
        assert (output / "adapter_config.json").exists()
        assert (output / "trainer_log.jsonl").exists()
        assert Path(train.artifacts["plot"]).read_bytes()[:4] == b"\x89PNG"
        progress = [e.data for e in store.events_since(0, job_id=train.id) if e.type == "progress"]
        assert progress[-1]["step"] == progress[-1]["total"] == 16
        assert progress[-1]["loss"] is None or progress[-1]["loss"] < progress[0]["loss"]
        assert any(p.get("tokens_per_s") for p in progress)

        evaluation = queue.submit_eval(train.id, pairs={"max_new_tokens": "16", "samples": "8", "batch": "4"})
        assert evaluation.parent_id == train.id and evaluation.dataset == "demo-eval"
        evaluation = wait_for(store, evaluation.id, FINAL, timeout=300)
        assert evaluation.state == "succeeded", f"{evaluation.error}\n{evaluation.log_tail}"
        for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
            assert isinstance(evaluation.metrics[key], float)
        assert len(evaluation.artifacts["samples"]) == 3
        # The base model was scored in the same job, on the same set with the same settings.
        assert set(evaluation.metrics["base"]) == {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
        base_model = Path(evaluation.spec["base"]["model"]).resolve()
        assert base_model == Path(train.args["model_name_or_path"]).resolve()

        export = wait_for(store, queue.submit_export(train.id).id, FINAL, timeout=300)
        assert export.state == "succeeded", f"{export.error}\n{export.log_tail}"
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(export.artifacts["model"])
        assert merged.config.num_hidden_layers == 2

        deployment = queue.submit_deploy(export.id)
        deployment = wait_for(store, deployment.id, ("serving", *FINAL), timeout=300)
        assert deployment.state == "serving", f"{deployment.error}\n{deployment.log_tail}"
        assert deployment.url == f"http://127.0.0.1:{deployment.port}/v1"
        assert deployment.api_key
        assert _get(f"{deployment.url}/models", deployment.api_key) == 200
        assert _get(f"{deployment.url}/models", None) == 401  # protected by its own key
        answer = runtime.chat(train.id, [{"role": "user", "content": "1 + 1 = ?"}], max_tokens=8)
        assert isinstance(answer, str)
        assert store.get(deployment.id).last_activity >= deployment.last_activity

        queue.undeploy(train.id, by="cli")
        stopped = wait_for(store, deployment.id, FINAL, timeout=60)
        assert stopped.state == "stopped"
        assert _get(f"{deployment.url}/models", deployment.api_key) != 200
        # The API key is never in the stored arguments or the event stream.
        assert deployment.api_key not in json.dumps(stopped.args)
        assert all(deployment.api_key not in json.dumps(e.data) for e in store.events_since(0))
        assert store.leased_slots(CPU.host) == {}
    finally:
        stop_all(runtime)


def stop_all(runtime: Runtime) -> None:
    """Leave no job process behind a failed test (they outlive tunebot by design)."""
    active = runtime.store.list_jobs(states=("queued", "running", "starting", "serving"))
    for job in active:
        runtime.queue.cancel(job.id)
    for job in active:
        wait_for(runtime.store, job.id, FINAL, timeout=60)
    runtime.stop()


def test_resume_continues_a_really_interrupted_run_from_its_checkpoint(tmp_path, shared_models):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    from runners.settings import Settings

    settings = Settings(data_dir=data, poll_interval=0.2, web_port=0)
    store = Store(settings.db_url)
    store.migrate()
    queue = JobQueue(settings, store, hardware=CPU)
    # Long enough (192 steps) that the run is still going when its first checkpoint appears.
    job = queue.submit_train(preset="tiny", pairs={"epochs": "24", "save_steps": "4"})
    worker = Worker(settings, store, hardware=CPU)
    worker.start()
    output = Path(job.work_dir) / "output"
    try:
        wait_until(
            lambda: recipes.last_checkpoint(output) is not None and store.get(job.id).state == "running",
            240,
            interval=0.1,
            what="a checkpoint of the running job",
        )
    finally:
        worker.stop()
    pid = store.get(job.id).handle["pid"]
    os.killpg(pid, signal.SIGKILL)  # the machine lost the run while tunebot was down
    wait_until(lambda: not _running(pid), 30, what="the killed run to be gone")
    killed_at = recipes.last_checkpoint(output)
    assert killed_at is not None and not (output / "adapter_config.json").exists()  # really mid-run

    worker = Worker(settings, store, hardware=CPU)
    worker.start()
    try:
        assert store.get(job.id).state == "interrupted"
        resumed = queue.resume(job.id)
        checkpoint = Path(resumed.args["resume_from_checkpoint"])
        assert checkpoint == killed_at
        done = wait_for(store, job.id, FINAL, timeout=600)
    finally:
        worker.stop()
    assert done.state == "succeeded", f"{done.error}\n{done.log_tail}"
    log = Path(done.log_path).read_text()
    assert "attempt 2" in log
    steps = [e.data["step"] for e in store.events_since(0, job_id=job.id) if e.type == "progress"]
    assert steps[-1] == 192
    # LLaMA-Factory really started from the checkpoint: its second run's first logged step is past it.
    second_run = log.split("attempt 2", 1)[1]
    assert "Continuing training from checkpoint" in second_run or "Resuming training from" in second_run


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


# --- bad input: refused before anything is queued ---------------------------------------------
BAD_TRAIN = [
    ({"dataset": "nosuch"}, "nosuch"),
    ({"model": "/nonexistent/llama"}, "was not found"),
    ({"foo": "1"}, "Unknown key `foo`"),
    ({"lr": "fast"}, "`learning_rate` must be a number, not 'fast'"),
    ({"compute": "bf16"}, "bf16 needs a GPU"),
    ({"method": "full", "loraplus": "16"}, "`loraplus` only applies to LoRA"),
    ({"scheduler": "cosne"}, "lr_scheduler_type=cosine"),
    ({"epochs": "three"}, "must be a number"),
    ({"output_dir": "/tmp/x"}, "set by tunebot"),
    ({"template": "lama3"}, "template=llama3"),
    ({"lr": "nan"}, "`learning_rate` must be a finite number"),
    ({"method": "qlora"}, "needs a GPU"),
    ({"learnig_rate": "1e-4"}, "did you mean `learning_rate`?"),
    ({"foo": "1"}, "`help train` lists tunebot's keys"),
    ({"dropout": "1.5"}, "`dropout` (lora_dropout) must be 0 ≤ x < 1, not 1.5"),
    ({"lr": "-1e-4"}, "`lr` (learning_rate) must be > 0"),
    ({"batch": "0"}, "`batch` (per_device_train_batch_size) must be ≥ 1, not 0"),
]


@pytest.mark.parametrize(("pairs", "message"), BAD_TRAIN)
def test_bad_train_requests_are_refused_with_a_plain_message(tmp_path, shared_models, pairs, message):
    from runners.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    settings = Settings(data_dir=data)
    store = Store(settings.db_url)
    store.migrate()
    queue = JobQueue(settings, store, hardware=CPU)
    with pytest.raises(UserError) as err:
        queue.submit_train(preset="tiny", pairs=pairs)
    assert message in err.value.text()
    assert "Traceback" not in err.value.text()
    assert store.list_jobs() == []


def test_eval_export_deploy_of_a_job_without_adapter_are_refused(settings, store):
    queue = JobQueue(settings, store, hardware=CPU)
    job = queue.submit_train(preset="tiny")
    for submit in (queue.submit_eval, queue.submit_export, queue.submit_deploy):
        with pytest.raises(UserError, match=f"Job #{job.id} has no adapter"):
            submit(job.id)
    assert len(store.list_jobs()) == 1


def test_deploy_on_a_port_in_use_is_refused(settings, store):
    import socket

    queue = JobQueue(settings, store, hardware=CPU)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"Port {port} is already in use"):
            queue.submit_deploy(
                model=str(settings.models_dir / "tiny-llama3"),
                pairs={"template": "llama3", "port": str(port)},
            )
    with pytest.raises(UserError, match="TUNEBOT_WEBCHAT_CLI"):
        queue.submit_deploy(
            model=str(settings.models_dir / "tiny-llama3"), pairs={"template": "llama3", "mode": "webchat"}
        )
    assert store.list_jobs() == []


def test_yaml_spec_is_accepted_and_bad_yaml_refused(settings, store):
    queue = JobQueue(settings, store, hardware=CPU)
    job = queue.submit_train(
        yaml_text=(
            "```yaml\nmodel_name_or_path: tiny\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
            "dataset: demo\ntemplate: llama3\nlearning_rate: 1.0e-3\noutput_dir: /somewhere/else\n"
            "num_train_epochs: 1\n```"
        )
    )
    assert job.args["learning_rate"] == 1e-3
    assert job.args["output_dir"] == str(Path(job.work_dir) / "output")  # ours, not the pasted one
    assert job.args["plot_loss"] is True
    with pytest.raises(UserError, match="line 2"):
        queue.submit_train(yaml_text="model: x\n  bad: [indent\n")
    with pytest.raises(UserError, match="Unknown key `_gpus`"):
        queue.submit_train(yaml_text="_gpus: 0\nmodel_name_or_path: tiny\ndataset: demo\ntemplate: llama3\n")
    with pytest.raises(UserError, match="stage=dpo is not supported"):
        queue.submit_train(
            yaml_text="stage: dpo\nmodel_name_or_path: tiny\ndataset: demo\ntemplate: llama3\n"
        )


def test_unwritable_data_dir_is_a_plain_error(tmp_path):
    from runners.settings import Settings

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        settings = Settings(data_dir=locked / "data")
        if os.geteuid() == 0:
            # root writes anywhere; a file where the folder should be is the same mistake for root
            (locked / "data").parent.chmod(0o700)
            (locked / "data").write_text("not a folder")
        with pytest.raises(UserError) as err:
            Runtime(settings)
        assert "TUNEBOT_DATA_DIR" in err.value.text()
    finally:
        locked.chmod(0o700)


def test_cpu_runner_hardware_is_what_validation_uses(settings, store):
    queue = JobQueue(replace(settings), store, hardware=CPU)
    with pytest.raises(UserError, match="compute=fp32"):
        queue.submit_train(preset="seed", pairs={"model": "tiny", "dataset": "demo"})


def test_an_idle_deployment_is_stopped_and_frees_its_slot(settings):
    settings = replace(settings, deploy_idle=3.0)
    runtime = Runtime(settings, hardware=CPU)
    runtime.start(web=False)
    try:
        model = str(settings.models_dir / "tiny-llama3")
        job = runtime.queue.submit_deploy(model=model, pairs={"template": "llama3"})
        serving = wait_for(runtime.store, job.id, ("serving", *FINAL), timeout=180)
        assert serving.state == "serving", f"{serving.error}\n{serving.log_tail}"
        assert runtime.store.leased_slots(runtime.worker.host)
        stopped = wait_for(runtime.store, job.id, FINAL, timeout=60)
    finally:
        stop_all(runtime)
    assert stopped.state == "stopped"
    assert "idle" in stopped.error and "TUNEBOT_DEPLOY_IDLE" in stopped.error
    assert runtime.store.leased_slots(runtime.worker.host) == {}
