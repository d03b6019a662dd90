"""The help message and the answer to a mistake (a `UserError`)."""

from __future__ import annotations

from typing import Any

from bot.parsing import COMMAND, SUBCOMMANDS, THREAD_COMMANDS
from runners.errors import UserError

from .blocks import (
    code,
    code_block,
    context,
    escape,
    header,
    message,
    section,
)

_HELP_GROUPS = (
    ("Fine-tune", ("train",)),
    ("Results", ("eval", "export", "deploy", "undeploy")),
    ("Jobs", ("status", "jobs", "cancel", "resume")),
    ("Datasets", ("datasets", "dataset add")),
    (
        "Channel digests",
        ("schedule daily", "schedule weekly", "schedule cron", "schedule list", "schedule off"),
    ),
)


def render_help(allowed_summary: str, topic: str | None = None) -> dict[str, Any]:
    """What tunebot does, every command with its usage, and who may spend GPU time here."""
    if topic and topic.lower() in SUBCOMMANDS:
        spec = SUBCOMMANDS[topic.lower()]
        example = code(f"{COMMAND} {spec.example}")
        text = f"*{COMMAND} {escape(spec.usage)}*\n{escape(spec.summary)}.\nExample: {example}"
        return message(f"{COMMAND} {spec.usage}", [section(text), context(escape(allowed_summary))])
    blocks: list[dict[str, Any]] = [
        header("tunebot: fine-tune, evaluate, export and deploy LLMs"),
        section(
            f"Each job gets a message that shows its progress, and a thread for everything about it. "
            f"`{COMMAND} train` alone opens a form like LLaMA-Factory's WebUI."
        ),
    ]
    for title, names in _HELP_GROUPS:
        lines = [f"*{title}*"]
        for name in names:
            spec = SUBCOMMANDS[name]
            lines.append(f"{code(f'{COMMAND} {spec.usage}')} {escape(spec.summary)}")
        blocks.append(section("\n".join(lines)))
    replies = ", ".join(f"`{word}`" for word in THREAD_COMMANDS)
    blocks.append(
        section(
            f"*In a job's thread* reply {replies} to act on that job; `@tunebot help` answers anywhere. "
            "In a deployed model's thread, anything else you write is a chat turn with the model."
        )
    )
    blocks.append(context(f":lock: {escape(allowed_summary)}"))
    return message(f"tunebot help: {COMMAND} train | eval | export | deploy | status | jobs | help", blocks)


def render_error(error: UserError) -> dict[str, Any]:
    """An ephemeral reply to a mistake: the problem in the engine's words and a corrected example."""
    blocks = [section(f":warning: {escape(error.message)}")]
    if error.fix:
        fix = error.fix
        shown = code_block(fix, 2900) if "\n" in fix or "`" in fix else code(fix)
        blocks.append(section(f"*Fix:* {shown}"))
    return message(error.text(), blocks)
