"""The local stand-in model and the demo dataset (no llamafactory here: the engine tests run it)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from runners.demo import tinymodel  # noqa: E402
from runners.demo.data import EVAL_FILE, TRAIN_FILE, demo_rows, write_demo_datasets  # noqa: E402
from runners.demo.tinymodel import (  # noqa: E402
    BOS,
    EOT,
    NAMED_SPECIAL_TOKENS,
    PAD,
    SHAPES,
    build_tokenizer,
    ensure_tiny_model,
    model_config,
)

MIXED_TEXT = "What is the capital of France? 法国的首都是巴黎。 Unseen: 量子计算 naïve café 🤖 3+4=7"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_tokenizer_round_trips_chinese_and_english_text(tokenizer) -> None:
    ids = tokenizer(MIXED_TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == MIXED_TEXT
    # Trained on the demo text: its words are single tokens, not bytes.
    assert len(tokenizer("The capital of France", add_special_tokens=False)["input_ids"]) == 4
    assert len(tokenizer("首都", add_special_tokens=False)["input_ids"]) == 2


def test_tokenizer_carries_llama3_special_tokens(tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    for token in NAMED_SPECIAL_TOKENS:
        assert token in vocab
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [vocab[token]]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOT, PAD)
    # Llama-3's layout: the special tokens close the vocabulary.
    assert max(vocab[token] for token in NAMED_SPECIAL_TOKENS) == len(tokenizer) - 1
    assert tokenizer(MIXED_TEXT)["input_ids"][0] == tokenizer.bos_token_id


def test_chat_template_writes_llama3_turns(tokenizer) -> None:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1加2等于多少？"}], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n1加2等于多少？<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_tiny_model_loads_and_generates(tiny_model: Path, tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, len(tokenizer))
    assert model.generation_config.eos_token_id[0] == tokenizer.convert_tokens_to_ids(EOT)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1 plus 2?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_second_ensure_uses_the_cache(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tiny_model / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a complete model")

    monkeypatch.setattr(tinymodel, "build_model", no_build)
    assert ensure_tiny_model(tiny_model.parent) == tiny_model
    assert weights.stat().st_mtime_ns == before


def test_incomplete_model_directory_is_rebuilt(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path)
    (path / "model.safetensors").unlink()
    assert not tinymodel.is_complete(path)
    assert ensure_tiny_model(tmp_path) == path
    assert tinymodel.is_complete(path)
    assert (path / "model.safetensors").stat().st_size > 0


def test_scratch_of_a_dead_build_is_cleared(tmp_path: Path) -> None:
    stale = tmp_path / ".tiny-llama3.building-999-1"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    ensure_tiny_model(tmp_path)
    assert not stale.exists()


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_build = tinymodel.build_model

    def counting_build(dest: Path, **kwargs) -> Path:
        calls.append(dest)
        return real_build(dest, **kwargs)

    monkeypatch.setattr(tinymodel, "build_model", counting_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_tiny_model(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


def test_llama3_8b_shape_is_llama3_8b(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = SHAPES["llama3-8b"]
    build_tokenizer(tmp_path, spec.vocab_size, reserved_tokens=spec.reserved_tokens)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 128256
    # The same ids as Llama-3.1's tokenizer.
    assert tokenizer.convert_tokens_to_ids([BOS, EOT]) == [128000, 128009]
    config = model_config("llama3-8b", tokenizer)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (4096, 32, 32)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (8, 14336, 128256)
    assert config.max_position_embeddings == 8192
    assert config.rope_parameters["rope_theta"] == 500000.0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248


def test_demo_datasets_are_alpaca_files(tmp_path: Path) -> None:
    paths = write_demo_datasets(tmp_path)
    assert paths == {"train": tmp_path / TRAIN_FILE, "eval": tmp_path / EVAL_FILE}
    train = json.loads(paths["train"].read_text(encoding="utf-8"))
    evaluation = json.loads(paths["eval"].read_text(encoding="utf-8"))
    assert (len(train), len(evaluation)) == (64, 16)
    for row in train + evaluation:
        assert set(row) == {"instruction", "input", "output"}
        assert all(isinstance(value, str) for value in row.values())
        assert row["instruction"] and row["output"]
    assert train == demo_rows("train")
    # Both languages, and the eval rows are not training rows.
    assert any("首都" in row["instruction"] for row in train)
    assert any("capital" in row["instruction"] for row in train)
    pairs = {(row["instruction"], row["input"]) for row in train}
    assert not [row for row in evaluation if (row["instruction"], row["input"]) in pairs]
