"""The `tunebot` command line: argument order, Slack-style keys, plain errors, terminal hints."""

from __future__ import annotations

import re

import pytest

from bot.cli.main import for_terminal, main
from runners.store import Store


@pytest.fixture
def data(tmp_path, shared_models, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    for name in ("TUNEBOT_DATABASE_URL", "TUNEBOT_LOG_LEVEL", "TUNEBOT_CANCEL_GRACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNEBOT_DATA_DIR", str(data))
    return data


def jobs(data):
    store = Store(f"sqlite:///{data / 'tunebot.db'}")
    return store.list_jobs()


def test_options_may_come_anywhere_among_the_items(data, capsys):
    assert main(["run", "train", "--detach", "tiny", "epochs=1"]) == 0
    [job] = jobs(data)
    assert job.preset == "tiny" and job.args["num_train_epochs"] == 1.0
    assert "queued as #1" in capsys.readouterr().out
    assert main(["status", "1"]) == 0  # `status` is `show`, as in Slack
    assert "#1  train" in capsys.readouterr().out


def test_model_equals_path_works_like_the_model_option(data, capsys):
    assert main(["run", "eval", "model=/nowhere/llama", "dataset=demo-eval", "template=llama3"]) == 2
    assert "Model '/nowhere/llama' was not found" in capsys.readouterr().err
    assert main(["run", "eval", "--model", "/x", "model=/y"]) == 2
    assert "Give the model once" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"TUNEBOT_DATABASE_URL": "bogus://"}, "must be a SQLite or PostgreSQL URL"),
        ({"TUNEBOT_LOG_LEVEL": "LOUD"}, "is not a log level"),
        ({"TUNEBOT_CANCEL_GRACE": "5x"}, "Fix: TUNEBOT_CANCEL_GRACE=30s"),
    ],
)
def test_bad_settings_are_plain_messages(data, capsys, monkeypatch, env, said):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["jobs"]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_the_builtin_demo_set_cannot_be_replaced(data, tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text('[{"instruction": "hi", "output": "hello"}]')
    assert main(["dataset", "add", "demo", str(rows)]) == 2
    assert "built-in demo set" in capsys.readouterr().err
    assert main(["dataset", "add", "mine", str(rows)]) == 0
    assert "added dataset mine: 1 row, alpaca" in capsys.readouterr().out


def test_hints_name_terminal_commands():
    text = "Fix: wait until #3 has succeeded (`status 3`), or `resume 3`; see `datasets`, `eval 12`"
    assert for_terminal(text) == (
        "Fix: wait until #3 has succeeded (`tunebot show 3`), or `tunebot resume 3`; "
        "see `tunebot dataset list`, `tunebot run eval 12`"
    )


def _add(store, **fields):
    from runners.job import Job

    job, _ = store.add_job(Job(**{"model": "/models/tiny-llama3", **fields}))
    return job


def test_show_gives_durations_seconds_rounded_metrics_config_and_the_family(data, capsys):
    store = Store(f"sqlite:///{data / 'tunebot.db'}")
    store.migrate()
    t0 = 1_767_000_000.0
    train = _add(store, kind="train", state="succeeded", created_at=t0, started_at=t0 + 65,
                 finished_at=t0 + 65 + 754, work_dir=str(data / "jobs" / "1"), method="lora",
                 metrics={"train_loss": 2.6602110397070646, "train_runtime": 750.123},
                 progress={"step": 8, "total": 8, "percent": 100.0, "remaining_s": 403.0})
    _add(store, kind="eval", state="succeeded", parent_id=train.id, dataset="demo-eval",
         metrics={"rouge-l": 41.23, "base": {"rouge-l": 28.91}})
    export = _add(store, kind="export", state="succeeded", parent_id=train.id,
                  artifacts={"model": "/data/jobs/3/model"})
    _add(store, kind="deploy", state="serving", parent_id=export.id, method="merged",
         chat_url="http://127.0.0.1:7860/chat/4/", api_key="sk-secret-4", url="http://127.0.0.1:8001/v1")
    assert main(["show", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out)  # to the second
    assert "queued 1m 05s, ran 12m 34s" in out
    assert "train_loss 2.66\n" in out and "2.6602110397070646" not in out
    assert "train_runtime 750 s" in out
    assert "ETA" not in out  # a finished job has no live estimate
    assert f"config: {data / 'jobs' / '1' / 'config.yaml'}" in out
    assert "made from it:" in out
    assert "#2 eval succeeded on demo-eval: ROUGE-L 41.2 (base 28.9, +12.3)" in out
    assert "#3 export succeeded (from #1) → /data/jobs/3/model" in out
    assert "#4 deploy serving (from #3) chat page http://127.0.0.1:7860/chat/4/" in out
    # The deployment's own page: the operator's terminal gets the link with its key.
    assert main(["show", "4"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:7860/chat/4/#key=sk-secret-4" in out and "method merged" in out
    assert main(["key", "1"]) == 0
    out = capsys.readouterr().out
    assert "sk-secret-4" in out and "chat/4/#key=sk-secret-4" in out
    assert main(["key", "2"]) == 2
    assert "has no serving deployment" in capsys.readouterr().err


def test_checking_a_request_prints_no_library_noise(data, capfd):
    assert main(["run", "train", "tiny", "warmup_ratio=0.1", "--detach"]) == 0
    out, err = capfd.readouterr()
    assert "deprecated" not in out + err and "Writing model shards" not in out + err
    assert out.splitlines()[-1] == "queued as #1; `tunebot show 1` for its state"
