"""The `tunebot` command line: argument order, Slack-style keys, plain errors, terminal hints."""

from __future__ import annotations

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
