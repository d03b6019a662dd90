"""Hostile text through every parser and the command line: a generated corpus of 500+ strings, each
answered with a plain message (a `UserError`, or a non-zero exit with one line), never a traceback,
a hang or an exit code 0 for nonsense."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.parsing import parse_command, parse_pasted_yaml, parse_thread_reply
from runners.datasets import validate_dataset_name
from runners.errors import UserError
from runners.store import parse_job_id

ROOT = Path(__file__).resolve().parents[1]


def hostile_strings() -> list[str]:
    """Long, deep, odd-unicode, control-character, injection-shaped and numeric-edge strings."""
    atoms = ["🦙", "x", "²", "١", "\u202e", "\u200b", "\0", "\x1b[31m", "\r", "\n", "\t", "<!channel>",
             "<@U1>", "&amp;", "'", '"', "“", "`", "=", "＝", "[", "{", "]", "..", "/", "\\", "~", "$HOME",
             "%s", "{0}", "${{x}}", "*", "&a", "!!python/object:os.system", "-", "#", "9"]
    sizes = [1, 2, 10, 500, 3000]
    strings: list[str] = [atom * size for atom, size in itertools.product(atoms, sizes)]
    strings += [a + b for a, b in itertools.product(atoms[:14], atoms[14:28])]
    strings += ["99999999999999999999999", "-5", "1e309", "nan", "inf", "-0", "0x10", "0b1", "1_000",
                "１２", "²³", "Ⅻ", "", " ", "#", "job-", "job#99999999999999999999"]
    strings += ["[" * n for n in (10, 100, 500, 5000)] + ["{" * n for n in (10, 500, 5000)]
    strings += ["a: &a [*a]", "a: !!binary AAAA", "? [a]\n: b", "--- !!set {a}", "a: b\n" * 5000]
    strings += [f"train {k}={v}" for k, v in itertools.product(
        ("model", "lr", "batch", "dataset", "tokenized_path", "deepspeed", "output_dir", "x" * 300),
        ("🦙" * 3000, "/etc", "-1", "0", "../../..", "\n", "'unclosed", "a=b=c"))]
    strings += [f"{cmd} {ref}" for cmd, ref in itertools.product(
        ("status", "cancel", "resume", "eval", "undeploy", "export", "deploy"),
        ("99999999999999999999999", "²", "-1", "#", "1.5", "🦙"))]
    strings += ["```yaml\n" + "[" * 500 + "\n```", "train\n" + "a: " * 1000, "dataset add " + "x" * 100,
                "dataset add demo", "dataset add name\n", "schedule cron " + "* " * 50,
                "schedule daily 25:99 Mars/Olympus", "help " + "🦙" * 1000]
    return strings


def test_the_corpus_is_large_enough():
    assert len(hostile_strings()) >= 500


def _plain(call) -> str | None:
    """Run `call`; a UserError's text is returned (checked plain), any other exception fails."""
    try:
        call()
    except UserError as err:
        text = err.text()
        assert "Traceback" not in text
        assert len(text) < 2000, text[:200]  # never the whole of a long input
        return text
    return None


def test_every_hostile_string_through_the_parsers_is_a_result_or_a_plain_message():
    for text in hostile_strings():
        _plain(lambda t=text: parse_command(t))
        _plain(lambda t=text: parse_thread_reply(t, "U0BOT"))
        _plain(lambda t=text: parse_pasted_yaml(t))
        _plain(lambda t=text: parse_job_id(t))
        _plain(lambda t=text: validate_dataset_name(t))


@pytest.fixture
def data(tmp_path, shared_models, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    for name in ("TUNEBOT_DATABASE_URL", "TUNEBOT_LOG_LEVEL", "TUNEBOT_CANCEL_GRACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNEBOT_DATA_DIR", str(data))
    return data


def _exit(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        return int(stop.code or 0)


JOB_REFS = ["99999999999999999999999", "²", "١٢", "-1", "#", "1.5", "🦙", "x" * 5000, "0x10", "\n"]


@pytest.mark.parametrize("command", ["show", "logs", "cancel", "resume", "undeploy"])
def test_bad_job_ids_exit_non_zero_with_one_plain_line(data, capsys, command):
    for ref in JOB_REFS:
        assert _exit([command, ref]) != 0, (command, ref)
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip(), (command, ref)
    for kind in ("eval", "export", "deploy"):
        assert _exit(["run", kind, "99999999999999999999999"]) == 2
        assert "is not a job id" in capsys.readouterr().err


def test_bad_dataset_files_and_names_exit_non_zero_with_a_plain_message(data, tmp_path, capsys):
    good = tmp_path / "rows.json"
    good.write_text('[{"instruction": "hi", "output": "hello"}]')
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (["dataset", "add", "name\n", str(good)], "not a usable dataset name"),
        (["dataset", "add", "ok", str(loop)], "symbolic links"),
        (["dataset", "add", "ok", "/" + "a" * 5000], "too long"),
        (["dataset", "add", "ok", str(tmp_path)], "Is a directory"),
        (["dataset", "add", "🦙" * 3000, str(good)], "not a usable dataset name"),
        (["run", "train", "--detach", "tiny", "steps=-5"], "must be ≥ 1"),
        (["run", "train", "--detach", "tiny", "resume_from_checkpoint=/etc"], "points outside"),
        (["run", "train", "--detach", "--config", str(loop)], "symbolic links"),
        (["run", "train", "--detach", "--config", "/" + "b" * 5000], "too long"),
    ]
    for argv, said in cases:
        assert _exit(argv) == 2, argv[:3]
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, (argv[:3], err[:300])
        assert len(err) < 1000


@pytest.mark.parametrize("argv", [["logs", "1", "-n", "-5"], ["logs", "1", "-n", "²"],
                                  ["chat", "1", "hi", "--max-tokens", "0"], ["logs", "1", "-n", "9" * 30]])
def test_counts_on_the_command_line_must_be_positive(data, capsys, argv):
    assert _exit(argv) == 2
    err = capsys.readouterr().err
    assert "is not a whole number from 1 to 1000000" in err and "Traceback" not in err


def test_a_fifo_as_dataset_or_config_is_refused_without_hanging(data, tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    env = {**os.environ, "TUNEBOT_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    for argv in (["dataset", "add", "piped", str(fifo)], ["run", "train", "--detach", "--config", str(fifo)]):
        done = subprocess.run([sys.executable, "-m", "bot.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=120)  # a hang fails here instead of blocking the suite
        assert done.returncode == 2
        assert "not a regular file" in done.stderr and "Traceback" not in done.stderr


def test_hostile_settings_through_the_cli_are_refused_or_queued_never_a_traceback(data, capsys):
    # A slice of the corpus as key=value values of a train: refused, or (for harmless text) queued.
    values = [s for s in hostile_strings() if len(s) <= 3000][::7]
    for value in values:
        code = _exit(["run", "train", "--detach", "tiny", f"lr={value}"])
        captured = capsys.readouterr()
        assert code in (0, 2) and "Traceback" not in captured.err
        if code == 0:
            assert "queued as" in captured.out
        else:
            assert captured.err.startswith("tunebot: ")
