"""`/tune help train` and `tunebot run train --help`: every preset in one line, every short key with
its meaning, its default in each preset and what it may be. Pure text, read from the engine's
preset registry and key table (`runners.llamafactory.keys`), so a new preset or key shows up by itself.
"""

from __future__ import annotations

from runners.llamafactory.keys import TRAIN_KEY_HELP, aliases, preset_default, presets
from runners.llamafactory.recipes import DEFAULT_PRESET


def _code(text: str, slack: bool) -> str:
    return f"`{text}`" if slack else text


def presets_lines(*, slack: bool) -> list[str]:
    lines = []
    for preset in presets():
        default = " (default)" if preset.name == DEFAULT_PRESET else ""
        lines.append(f"• {_code(preset.name, slack)}{default}: {preset.description}")
    return lines


def key_lines(*, slack: bool) -> list[str]:
    """One line per key: `lr (also learning_rate): learning rate · allowed: … · default: seed 1e-4, …`."""
    lines = []
    for key in TRAIN_KEY_HELP:
        names = aliases(key)
        also = f" (also {', '.join(names)})" if names else ""
        defaults = ", ".join(f"{p.name} {preset_default(p, key)}" for p in presets())
        head = f"*{key.key}*" if slack else key.key
        lines.append(f"• {head}{also}: {key.meaning} · allowed: {key.allowed} · default: {defaults}")
    return lines


def usage(command: str, *, slack: bool) -> str:
    return (
        f"{_code(f'{command} [preset] [key=value …]', slack)} — a preset, then any keys to change. "
        f"Any LLaMA-Factory argument works by its own name too ({_code('neat_packing=true', slack)}), "
        "and a pasted LLaMA-Factory YAML is taken as it is."
    )


def terminal_train_help() -> str:
    """What `tunebot run train --help` prints."""
    parts = [
        "usage: tunebot run train [preset] [key=value …] [--config my.yaml] [--detach]",
        "",
        usage("tunebot run train", slack=False),
        "",
        "presets:",
        *("  " + line[2:] for line in presets_lines(slack=False)),
        "",
        "keys (key=value):",
        *("  " + line[2:] for line in key_lines(slack=False)),
        "",
        "Before anything is queued, LLaMA-Factory's own parser judges the keys, and tunebot checks the "
        "dataset, the model and the runner's hardware.",
        "example: tunebot run train tiny lr=1e-3 epochs=2",
    ]
    return "\n".join(parts)
