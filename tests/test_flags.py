"""runners/env.py: one table of yes/no words, read the way LLaMA-Factory reads them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from runners.env import is_set, parse_flag
from runners.errors import UserError
from runners.hardware import Hardware
from runners.llamafactory.recipes import compute_type_of
from runners.llamafactory.validation import check_hardware

CPU = Hardware(host="cpuhost", gpus=(), cpu_count=2)


@pytest.mark.parametrize("word", ["true", "Yes", "1", "on", "y", "T", " TRUE ", True, 1])
def test_true_words(word) -> None:
    assert parse_flag(word) is True and is_set(word)


@pytest.mark.parametrize("word", ["false", "No", "0", "off", "n", "F", False, 0])
def test_false_words(word) -> None:
    assert parse_flag(word) is False and not is_set(word)


@pytest.mark.parametrize("word", ["maybe", "", "2", 2, None])
def test_other_values_are_not_flags(word) -> None:
    assert parse_flag(word) is None and not is_set(word)


@pytest.mark.parametrize("word", ["y", "t", "on", "yes"])
def test_bf16_written_any_true_way_is_bf16_and_refused_on_a_cpu_runner(word) -> None:
    assert compute_type_of({"bf16": word}) == "bf16"
    with pytest.raises(UserError, match="bf16 needs a GPU"):
        check_hardware(SimpleNamespace(args={"bf16": word}), CPU, [])


def test_bf16_off_is_fp32() -> None:
    assert compute_type_of({"bf16": "n", "fp16": "no"}) == "fp32"
