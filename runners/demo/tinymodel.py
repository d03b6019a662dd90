"""Local stand-in models: a byte-level BPE tokenizer with Llama-3's special tokens and a random Llama.

No model hub is reachable from dev/CI machines or the lent GPU hosts, so demos, tests and
benchmarks build their model here. `template: llama3` works with these because the tokenizer
carries Llama-3's special tokens (at the top of the vocabulary, as Llama-3 has them).

Shapes: `tiny` (hidden 64, 2 layers; trains in seconds on a CPU) and `llama3-8b` (Llama-3-8B's
exact configuration, created in bf16 on the GPU when there is one).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .data import demo_text

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerBase

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"

# Llama-3.1's first special tokens, in its order (ids vocab-256 .. vocab-246 in the 8B layout).
# <|eom_id|> is here because LLaMA-Factory's llama3 template adds it as a stop word otherwise,
# growing the tokenizer past the embedding.
NAMED_SPECIAL_TOKENS = [
    BOS, END_OF_TEXT, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>", PAD,
    "<|reserved_special_token_2|>", START_HEADER, END_HEADER, EOM, EOT, "<|python_tag|>",
]

# Llama-3-Instruct's chat format; LLaMA-Factory uses its own `llama3` template, other tools this.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# One CJK character (or full-width punctuation mark) per pre-token: a tiny model then sees 法国
# as 法 + 国 in every row, instead of one opaque token per phrase.
_CJK_CHAR = r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]"

# Words of the chat format and of common system prompts, so they are single tokens too.
_CHAT_WORDS = [
    "system", "user", "assistant", "ipython", "You are a helpful assistant.", "你是一个有用的助手。",
]

MARKER = "tunebot-model.json"
# Bump when what build_model writes changes; cached models built by an older builder are rebuilt.
BUILDER_VERSION = 2
TINY_MODEL_DIR = "tiny-llama3"


@dataclass(frozen=True)
class ModelShape:
    """A Llama configuration and the tokenizer that goes with it."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    # Reserved special tokens after the named ones (Llama-3 has 256 special tokens in all).
    reserved_tokens: int = 0
    # The dtype the weights are created and saved in.
    dtype: str = "float32"
    # Spread of the random output layer; None = the config's initializer_range (0.02). LoRA
    # leaves lm_head frozen, and at 0.02 the logits of a 64-wide model stay within about ±1.3:
    # the loss could hardly fall below ln(vocab). At 0.2 a few dozen LoRA steps halve it.
    lm_head_std: float | None = None


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, lm_head_std=0.2,
    ),
    # meta-llama/Meta-Llama-3-8B's config.json, weights random.
    "llama3-8b": ModelShape(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
        reserved_tokens=256 - len(NAMED_SPECIAL_TOKENS), dtype="bfloat16",
    ),
}


def special_tokens(reserved_tokens: int = 0) -> list[str]:
    first_reserved = 3  # reserved_special_token_0..2 are among the named ones
    extra = [f"<|reserved_special_token_{first_reserved + i}|>" for i in range(reserved_tokens)]
    return NAMED_SPECIAL_TOKENS + extra


def build_tokenizer(dest: Path, vocab_size: int = 512, *, reserved_tokens: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on the demo text and save it as a transformers fast tokenizer.

    The vocabulary has exactly `vocab_size` entries, special tokens last (Llama-3's layout): the
    merges the demo text supports, then unreachable filler entries if the text runs out of
    merges, then the special tokens. So `len(tokenizer) == vocab_size` matches the embedding.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = special_tokens(reserved_tokens)
    n_regular = vocab_size - len(specials)
    if n_regular < 256:
        raise ValueError(f"vocab_size {vocab_size} is too small for 256 bytes and {len(specials)} specials")

    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CJK_CHAR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    trained.train_from_iterator([*_CHAT_WORDS, *demo_text().splitlines()], trainer=trainer)

    # Rebuild the BPE model with filler entries up to n_regular: no merge produces them.
    state = json.loads(trained.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    for i in range(n_regular - len(vocab)):
        vocab[f"<|filler_{i}|>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    bos_id = tokenizer.token_to_id(BOS)
    # Like Llama-3's tokenizer: encode() with special tokens puts <|begin_of_text|> first.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)],
    )
    assert tokenizer.get_vocab_size() == vocab_size, (tokenizer.get_vocab_size(), vocab_size)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOT, pad_token=PAD,
        clean_up_tokenization_spaces=False, model_max_length=131072,
    )
    fast.chat_template = CHAT_TEMPLATE
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(dest)
    return dest


def model_config(shape: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The LlamaConfig of `shape`, its special token ids taken from `tokenizer`."""
    from transformers import LlamaConfig

    spec = SHAPES[shape]
    if len(tokenizer) != spec.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, shape {shape!r} has {spec.vocab_size} rows")
    return LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        hidden_act="silu",
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        # Llama-3-Instruct's: the tokenizer's eos; a Trainer otherwise rewrites it, with a warning.
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


def build_model(dest: Path, *, shape: str = "tiny", device: str | None = None, seed: int = 0) -> Path:
    """Write a random-init Llama of `shape` with its tokenizer to `dest` (a complete model directory).

    `device` defaults to CUDA when present: `llama3-8b` is then created in bf16 directly on the GPU
    (seconds) instead of on the CPU (16 GB of host memory, minutes).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    spec = SHAPES[shape]
    dest = Path(dest)
    build_tokenizer(dest, spec.vocab_size, reserved_tokens=spec.reserved_tokens)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(dest)
    config = model_config(shape, tokenizer)
    dtype = getattr(torch, spec.dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if spec.lm_head_std is not None:
            with torch.no_grad():
                model.lm_head.weight.normal_(0.0, spec.lm_head_std)
    # Like Llama-3-Instruct: a turn ends at <|eot_id|>, a document at <|end_of_text|>.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(END_OF_TEXT)],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest, max_shard_size="5GB")
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return dest


def _model_files(path: Path) -> list[str]:
    names = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        names += ["model.safetensors.index.json", *sorted(set(weight_map.values()))]
    else:
        names.append("model.safetensors")
    return names


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def is_complete(path: Path, shape: str = "tiny") -> bool:
    """True when `path` holds a model this builder wrote, whole, with the installed transformers."""
    try:
        marker = json.loads((path / MARKER).read_text())
        files = _model_files(path)
    except (OSError, ValueError, KeyError):
        return False
    expected = _marker(shape) | {"files": files}
    if any(marker.get(key) != value for key, value in expected.items()):
        return False
    return all((path / name).is_file() and (path / name).stat().st_size > 0 for name in files)


def _marker(shape: str) -> dict:
    return {"builder": BUILDER_VERSION, "shape": shape, "transformers": _transformers_version()}


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_model(models_dir: Path, *, shape: str = "tiny", name: str | None = None) -> Path:
    """The cached model of `shape` under `models_dir`, built on first use.

    A file lock keeps two processes from building at once (the second waits, then finds it
    built); the build goes to a scratch directory renamed into place, and a directory without a
    matching marker or with a missing file is rebuilt.
    """
    models_dir = Path(models_dir)
    path = models_dir / (name or (TINY_MODEL_DIR if shape == "tiny" else shape))
    if is_complete(path, shape):
        return path
    with _exclusive(models_dir / f".{path.name}.lock"):
        if is_complete(path, shape):
            return path
        # Only the lock holder builds: any scratch directory left is from a build that died.
        for stale in models_dir.glob(f".{path.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = path.with_name(f".{path.name}.building-{os.getpid()}-{int(time.time())}")
        build_model(scratch, shape=shape)
        marker = _marker(shape) | {"files": _model_files(scratch)}
        (scratch / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        if path.exists():
            shutil.rmtree(path)
        scratch.rename(path)
    return path


def ensure_tiny_model(models_dir: Path) -> Path:
    """The tiny demo model under `models_dir` (built once, about a second on a CPU)."""
    return ensure_model(models_dir, shape="tiny")
