"""Short answers to the person who asked (Block Kit, pure): queued, stopping, datasets, prompts.

The job's own story (root message, thread posts) is bot.render's and the notifier's; these are
the replies a listener gives to one person, mostly ephemeral.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.parsing import COMMAND
from runners.job import Job, JobKind

from ..threads import channel_of
from .blocks import code, context, escape, header, message, section
from .job import kind_label, ordinal, short_model

DEMO_NOTE = "Built in: `demo` and `demo-eval` (the `tiny` preset's data)."


def render_text(text: str) -> dict[str, Any]:
    """A one-section message; `text` is mrkdwn written by tunebot (escape what people wrote)."""
    return message(text.replace("*", "").replace("`", ""), [section(text)], escaped=True)


def render_checking(what: str) -> dict[str, Any]:
    """The immediate ack of a command whose checks take a moment."""
    return render_text(f":hourglass_flowing_sand: Checking {code(what)}…")


def render_queued(job: Job, *, position: int | None = None, thread_of: int | None = None,
                  again: bool = False) -> dict[str, Any]:
    """The job is in the queue (or, for a repeated request, already was); where its story goes."""
    label = kind_label(job)
    of = f" of #{job.parent_id}" if job.parent_id else ""
    state = f"is {escape(job.state)}" if again else "is queued"
    if position and job.state == "queued":
        state += f" ({ordinal(position)} in line)"
    if thread_of:
        where = f"It reports in #{thread_of}'s thread."
    elif channel_of(job):
        where = "Its message here shows its progress; everything else goes into that message's thread."
    else:
        where = f"`{COMMAND} status {job.id}` shows how it goes."
    text = f":inbox_tray: *{label}*{of} ({code(short_model(job.model))}) {state}. {where}"
    if job.kind == "train" and not again and job.state == "queued":
        # The runner counts the dataset's tokens (the bot has no tokenizer and must answer now).
        text += " A time estimate follows there once the runner has counted the dataset's tokens."
    return render_text(text)


def render_cancel(job: Job) -> dict[str, Any]:
    if job.is_final:
        return render_text(f":no_entry_sign: *{kind_label(job)}* is {escape(job.state)}.")
    verb = "is stopping" if job.kind == JobKind.DEPLOY.value else "will stop in a moment"
    return render_text(f":octagonal_sign: Cancel requested: *{kind_label(job)}* {verb}.")


def render_resumed(job: Job) -> dict[str, Any]:
    where = job.progress.get("resumed_from") if job.progress else None
    start = f"from {code(where)}" if where else "from the start (no checkpoint was saved)"
    return render_text(f":arrows_counterclockwise: *{kind_label(job)}* is queued again, {start}. "
                       "Its story goes on in its thread.")


def render_datasets(infos: Sequence[Any]) -> dict[str, Any]:
    """The registered datasets: name, format, rows, where they came from."""
    if not infos:
        text = (f"No datasets yet. Share a JSON or JSONL file with the message `{COMMAND} dataset add NAME`, "
                f"or run `{COMMAND} dataset add NAME` and reply to my prompt with the file. {DEMO_NOTE}")
        return message(text, [section(text)])
    lines = []
    for info in infos:
        rows = f"{info.rows:,} rows" if info.rows is not None else "rows unknown"
        source = f" from {code(info.source_filename)}" if getattr(info, "source_filename", None) else ""
        lines.append(f"• {code(info.name)} · {escape(info.format)} · {rows}{source}")
    blocks = [header("Datasets"), section("\n".join(lines)),
              context(f"Train on one: `{COMMAND} train dataset=NAME`. {DEMO_NOTE}")]
    return message("Datasets: " + ", ".join(i.name for i in infos), blocks)


def render_dataset_added(info: Any, *, user: str | None = None) -> dict[str, Any]:
    """A dataset was checked and registered: rows, format, a sample."""
    verb = "replaced" if getattr(info, "replaced", False) else "added"
    who = f"<@{user}> " if user else ""
    source = f" from {code(info.source_filename)}" if getattr(info, "source_filename", None) else ""
    text = (f":white_check_mark: {who}Dataset {code(info.name)} {verb}{source}: *{info.rows:,} rows*, "
            f"{escape(info.format)} format.")
    blocks = [section(text)]
    samples = getattr(info, "samples", None) or []
    if samples:
        first = samples[0]
        preview = escape(str(first)[:400])
        blocks.append(context(f"First row: {preview}"))
    blocks.append(context(f"Train on it: `{COMMAND} train dataset={escape(info.name)}`"))
    return message(f"Dataset {info.name} {verb}: {info.rows} rows, {info.format} format", blocks)


def render_dataset_prompt(name: str, user: str) -> dict[str, Any]:
    """The public prompt a person answers with the file, in its thread."""
    text = (f":inbox_tray: <@{user}> reply in this thread with the JSON or JSONL file for dataset "
            f"{code(name)} (alpaca, sharegpt or OpenAI-style `messages`). "
            "I check every row before I keep it.")
    return message(f"Reply in this thread with the file for dataset {name}", [section(text)])


