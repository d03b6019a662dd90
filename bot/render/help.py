"""The help message and the answer to a mistake (a `UserError`)."""

from __future__ import annotations

from typing import Any

from bot.parsing import COMMAND, SUBCOMMANDS, thread_commands
from runners.errors import UserError
from runners.kinds import submittable

from .blocks import (
    SECTION_TEXT_MAX,
    code,
    code_block,
    context,
    escape,
    header,
    message,
    section,
    slack_len,
    truncate,
)
from .kinds import view_of

_HELP_GROUPS = (
    ("Fine-tune", ("train",)),
    ("Results", ("eval", "compare", "export", "deploy", "undeploy", "key")),
    ("Jobs", ("status", "jobs", "cancel", "resume")),
    ("Datasets", ("datasets", "dataset add")),
    (
        "Channel digests",
        ("schedule daily", "schedule weekly", "schedule cron", "schedule list", "schedule off"),
    ),
)


def help_groups() -> list[tuple[str, tuple[str, ...]]]:
    """The help's sections; a job kind not placed above is listed in its view's group."""
    groups = [(title, tuple(names)) for title, names in _HELP_GROUPS]
    placed = {name for _title, names in groups for name in names}
    for kind in submittable():
        if kind.name in placed:
            continue
        title = view_of(kind.name).help_group
        at = next((i for i, (t, _n) in enumerate(groups) if t == title), None)
        if at is None:
            groups.append((title, (kind.name,)))
        else:
            groups[at] = (title, (*groups[at][1], kind.name))
    return groups


def render_help(allowed_summary: str, topic: str | None = None) -> dict[str, Any]:
    """What tunebot does, every command with its usage, and who may spend GPU time here."""
    if topic and topic.lower() in SUBCOMMANDS:
        spec = SUBCOMMANDS[topic.lower()]
        example = code(f"{COMMAND} {spec.example}")
        text = f"*{COMMAND} {escape(spec.usage)}*\n{escape(spec.summary)}.\nExample: {example}"
        blocks = [section(text)]
        if spec.name == "train":
            blocks += _train_help_blocks()
        return message(f"{COMMAND} {spec.usage}", [*blocks, context(escape(allowed_summary))])
    blocks: list[dict[str, Any]] = [
        header("tunebot: fine-tune, evaluate, export and deploy LLMs"),
        section(
            f"Each job gets a message that shows its progress, and a thread for everything about it. "
            f"`{COMMAND} train` alone opens a form like LLaMA-Factory's WebUI."
        ),
    ]
    for title, names in help_groups():
        lines = [f"*{title}*"]
        for name in names:
            spec = SUBCOMMANDS[name]
            lines.append(f"{code(f'{COMMAND} {spec.usage}')} {escape(spec.summary)}")
        blocks.append(section("\n".join(lines)))
    replies = ", ".join(f"`{word}`" for word in thread_commands())
    blocks.append(
        section(
            f"*In a job's thread* reply {replies} to act on that job; `@tunebot help` answers anywhere. "
            "In a deployed model's thread, anything else you write is a chat turn with the model."
        )
    )
    blocks.append(context(f":lock: {escape(allowed_summary)}"))
    return message(f"tunebot help: {COMMAND} train | eval | export | deploy | status | jobs | help", blocks)


def _train_help_blocks() -> list[dict[str, Any]]:
    """Every preset and key, from the engine's registries (bot.render.train_help)."""
    from .train_help import key_lines, presets_lines, usage

    blocks = [section(escape(usage(f"{COMMAND} train", slack=True)))]
    blocks += _line_sections(["*Presets*", *map(escape, presets_lines(slack=True))])
    blocks += _line_sections(["*Keys* (key=value; the default in each preset)",
                              *map(escape, key_lines(slack=True))])
    return blocks


def _line_sections(lines: list[str]) -> list[dict[str, Any]]:
    """Lines packed into as few sections as Slack's 3000-character limit allows."""
    blocks, chunk = [], []
    for line in lines:
        line = truncate(line, SECTION_TEXT_MAX)
        if chunk and slack_len("\n".join([*chunk, line])) > SECTION_TEXT_MAX:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(section("\n".join(chunk)))
    return blocks


def render_error(error: UserError) -> dict[str, Any]:
    """An ephemeral reply to a mistake: the problem in the engine's words and a corrected example."""
    blocks = [section(f":warning: {escape(error.message)}")]
    if error.fix:
        fix = error.fix
        shown = code_block(fix, 2900) if "\n" in fix or "`" in fix else code(fix)
        blocks.append(section(f"*Fix:* {shown}"))
    return message(error.text(), blocks)
