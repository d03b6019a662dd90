"""The train presets: `fast` (the default), `seed`, `seed-cli` and `tiny`, as LLaMA-Factory
arguments, and the names tunebot resolves itself (the tiny model, the demo sets). Pure data;
`recipes` turns a preset and what the user typed into a job's arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TINY_MODEL = "tiny"  # resolved by the runner to a locally built tiny Llama
DEMO_DATASET = "demo"  # the embedded Chinese+English demo set (registered on first use)
DEMO_EVAL_DATASET = "demo-eval"

@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any]


# LLaMA-Factory 0.9.5 WebUI defaults for fields the seed document does not give.
_WEBUI_DEFAULTS: dict[str, Any] = {
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "learning_rate": 5e-5,
    "num_train_epochs": 3.0,
    "max_grad_norm": 1.0,
    "max_samples": 100000,
    "cutoff_len": 2048,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 8,
    "val_size": 0,
    "lr_scheduler_type": "cosine",
    "logging_steps": 5,
    "save_steps": 100,
    "warmup_steps": 0,
    "packing": False,
    "optim": "adamw_torch",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0,
    "lora_target": "all",
    "bf16": True,
    "report_to": "none",
    "trust_remote_code": True,
    "ddp_timeout": 180000000,
    "plot_loss": True,
}

# The seed document's WebUI recipe; `fast` trains exactly this (its hyperparameters) sooner.
_SEED: dict[str, Any] = {
    **_WEBUI_DEFAULTS,
    "template": "llama3",
    "learning_rate": 1e-4,
    "bf16": True,
    "gradient_accumulation_steps": 2,
    "loraplus_lr_ratio": 16.0,
    "lora_target": "all",
}

PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "seed",
        "The seed document's WebUI recipe: LoRA+ SFT of Llama-3-8B-Instruct "
        "(lr 1e-4, bf16, grad-accum 2, LoRA+ ratio 16, LoRA on all linear layers)",
        dict(_SEED),
    ),
    "fast": Preset(
        "fast",
        "The seed recipe's training, sooner: same hyperparameters and tokens per optimizer step, "
        "with packing without cross-attention, fused AdamW, the model compiled and replayed as CUDA "
        "graphs (Liger kernels where memory needs checkpointing), no per-step waits on the GPU, and "
        "a batch shape chosen by the runner from its GPU's memory and the model's size",
        {**_SEED, "flash_attn": "sdpa"},
    ),
    "seed-cli": Preset(
        "seed-cli",
        "The seed document's `llamafactory-cli train` command "
        "(LoRA, lr 5e-5, batch 2 x accum 8, cutoff 1024)",
        {
            "stage": "sft",
            "do_train": True,
            "preprocessing_num_workers": 16,
            "finetuning_type": "lora",
            # The document says `bitsandbytes`; LLaMA-Factory 0.9.5 calls it `bnb`.
            "quantization_method": "bnb",
            "template": "llama3",
            "flash_attn": "auto",
            "cutoff_len": 1024,
            "learning_rate": 5e-5,
            "num_train_epochs": 3.0,
            "max_samples": 100000,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 8,
            "lr_scheduler_type": "cosine",
            "max_grad_norm": 1.0,
            "logging_steps": 5,
            "save_steps": 100,
            "warmup_steps": 0,
            "optim": "adamw_torch",
            "packing": False,
            "report_to": "none",
            "bf16": True,
            "plot_loss": True,
            "ddp_timeout": 180000000,
            "lora_rank": 8,
            "lora_alpha": 16,
            "lora_dropout": 0,
            "lora_target": "all",
        },
    ),
    "tiny": Preset(
        "tiny",
        "A tiny local Llama on the embedded demo data: minutes on a CPU, for demos and tests",
        {
            **_WEBUI_DEFAULTS,
            "model_name_or_path": TINY_MODEL,
            "dataset": DEMO_DATASET,
            "template": "llama3",
            "bf16": False,
            "learning_rate": 5e-3,
            "num_train_epochs": 8.0,
            "cutoff_len": 128,
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "logging_steps": 1,
            "save_steps": 8,
            "lora_rank": 16,
            "lora_alpha": 32,
            "lr_scheduler_type": "constant",
            "preprocessing_num_workers": 1,
            "dataloader_num_workers": 0,
        },
    ),
}
DEFAULT_PRESET = "fast"
