"""Help that teaches: every preset in a line, every short key with meaning, defaults and allowed values."""

from __future__ import annotations

import pytest

from bot.cli.main import for_terminal, main
from bot.render import render_help
from runners.errors import UserError
from runners.llamafactory import keys
from runners.llamafactory.recipes import PRESETS, TRAIN_KEYS, Preset


def _text(payload) -> str:
    return "\n".join(b["text"]["text"] for b in payload["blocks"] if b.get("type") == "section")


def test_slack_help_train_lists_every_preset_and_key(monkeypatch) -> None:
    # A preset added to the registry shows up without touching the help.
    monkeypatch.setitem(PRESETS, "quick", Preset("quick", "A quicker recipe", {"learning_rate": 2e-4}))
    payload = render_help("everyone may train here", "train")
    text = _text(payload)
    for name in PRESETS:
        assert f"`{name}`" in text
    assert "A quicker recipe" in text
    for key in keys.TRAIN_KEY_HELP:
        assert f"*{key.key}*" in text
    assert "*lr* (also learning_rate): learning rate · allowed: a number &gt; 0" in text
    assert "default: seed 1e-4, fast 1e-4, seed-cli 5e-5, tiny 0.005, quick 2e-4" in text
    assert "*method*" in text and "lora, qlora, freeze, full" in text
    assert len(payload["blocks"]) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in payload["blocks"] if b.get("type") == "section")


def test_terminal_run_train_help_lists_presets_and_keys(capsys) -> None:
    assert main(["run", "train", "--help"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"  {name}" in out
    listed = {line.split()[0].rstrip(":") for line in out.splitlines() if line.startswith("  ")}
    assert {k.key for k in keys.TRAIN_KEY_HELP} <= listed
    assert all(alias in out for alias in TRAIN_KEYS)  # every other name is given beside its key
    assert "dropout (also lora_dropout): LoRA dropout · allowed: 0 ≤ x < 1" in out


def test_every_train_key_is_documented() -> None:
    documented = {k.arg for k in keys.TRAIN_KEY_HELP}
    assert set(TRAIN_KEYS.values()) <= documented


@pytest.mark.parametrize(
    ("key", "expected"),
    [("learnig_rate", "learning_rate"), ("epoch", "epochs"), ("lora_rnak", "lora_rank"), ("zzz", None)],
)
def test_did_you_mean_looks_at_tunebots_and_llamafactorys_names(key, expected) -> None:
    assert keys.did_you_mean(key, ["learning_rate", "lora_rank", "num_train_epochs"]) == expected


@pytest.mark.parametrize(
    ("args", "typed", "message"),
    [
        ({"lora_dropout": 1.0}, {"dropout": "1"}, "`dropout` (lora_dropout) must be 0 ≤ x < 1, not 1.0"),
        ({"learning_rate": 0.0}, {}, "`lr` (learning_rate) must be > 0"),
        ({"top_p": 1.5}, {}, "`top_p` must be 0 < x ≤ 1"),
        ({"num_train_epochs": float("inf")}, {"epochs": "inf"}, "`epochs` (num_train_epochs) must be > 0"),
    ],
)
def test_out_of_range_values_name_the_range(args, typed, message) -> None:
    with pytest.raises(UserError) as err:
        keys.check_ranges(args, typed)
    assert message in err.value.text()


def test_in_range_values_pass() -> None:
    keys.check_ranges({"lora_dropout": 0.0, "learning_rate": 1e-4, "max_steps": -1, "top_p": 1.0})


def test_the_terminal_names_its_own_help() -> None:
    assert "`tunebot run train --help`" in for_terminal("`help train` lists tunebot's keys")
