"""How jobs read in a terminal: one-line summaries, details, and a live progress bar."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from runners.events import EventKind, kind_of
from runners.job import FINAL_STATES, Job, JobState
from runners.llamafactory.progress import format_eta
from runners.store import Store

from ..render import METRIC_LABELS, estimate_text, finite_number, speed_text
from ..render.scores import score_with_base

STATE_MARK = {
    "queued": "…",
    "running": "▶",
    "starting": "▶",
    "serving": "●",
    "succeeded": "✓",
    "failed": "✗",
    "cancelled": "■",
    "interrupted": "⏸",
    "stopped": "■",
}


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _metric_text(value: Any) -> str:
    """A metric as people read it: 2.6602110397070646 -> 2.66; 1234.5 -> 1,234; ints as they are."""
    number = finite_number(value)
    if number is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.4g}"


def job_line(job: Job) -> str:
    model = job.model.rstrip("/").rsplit("/", 1)[-1] if job.model else "?"
    parts = [f"#{job.id}", job.kind, f"{STATE_MARK.get(job.state, '')} {job.state}", model]
    if job.dataset:
        parts.append(f"on {job.dataset}")
    if job.parent_id:
        parts.append(f"from #{job.parent_id}")
    if job.state == JobState.RUNNING.value and job.progress.get("percent") is not None:
        parts.append(f"{job.progress['percent']:.0f}%")
    if job.url and job.state == JobState.SERVING.value:
        parts.append(job.url)
    return "  ".join(parts)


def progress_line(progress: dict[str, Any]) -> str:
    """The job message's progress line (bot.render), without Slack's code marks."""
    from ..render import progress_text

    return progress_text(progress).replace("`", "")


def metrics_table(metrics: dict[str, Any]) -> str:
    """One score a line; beside the base model's and the gain when the eval has them."""
    base = metrics.get("base") or {}
    rows = [f"  {score_with_base(label, metrics[key], base.get(key))}"
            for key, label in METRIC_LABELS if finite_number(metrics.get(key)) is not None]
    return "\n".join(rows)


def job_details(job: Job, *, family: list[Job] | None = None, show_key: bool = False) -> str:
    """`tunebot show`: times to the second with durations, rounded metrics, the config, the job's
    family; `show_key`: the deployment's chat link with its key (the operator's terminal)."""
    lines = [
        job_line(job),
        f"  asked by {job.user or 'cli'}  created {_when(job.created_at)}"
        f"  started {_when(job.started_at)}  ended {_when(job.finished_at)}",
    ]
    waited = (job.started_at or (None if job.is_final else time.time())) if job.created_at else None
    durations = []
    if waited is not None:
        durations.append(f"queued {format_eta(max(0.0, waited - job.created_at))}")
    ran = job.duration()
    if ran is not None:
        durations.append(f"{'ran' if job.is_final else 'running for'} {format_eta(ran)}")
    if durations:
        lines.append("  " + ", ".join(durations))
    if job.method:
        lines.append(f"  method {job.method}  preset {job.preset or '-'}  slots {','.join(job.slots) or '-'}")
    if job.progress and not (job.is_final and job.kind != "train"):
        lines.append("  " + progress_line(_finished_progress(job)))
    if job.metrics:
        table = metrics_table(job.metrics)
        if table:
            lines.append(table)
        for key in ("train_loss", "train_runtime", "tokens_per_s", "total_tokens", "size_bytes"):
            if job.metrics.get(key) is not None:
                unit = _UNITS.get(key, "")
                lines.append(f"  {key} {_metric_text(job.metrics[key])}{unit}")
        speed = speed_text(job)
        if "MFU" in speed:
            lines.append(f"  {speed.split(' · ')[-1]}")
    estimate = estimate_text(job)
    if estimate:
        lines.append(f"  time: {estimate}")
    for key, value in job.artifacts.items():
        if key in ("samples", "remote", "remote_errors"):
            continue
        if key == "upload_pending":
            lines.append("  artifacts: upload not finished (the next runner on this host uploads them)")
            continue
        lines.append(f"  {key}: {value}")
    if job.work_dir:
        lines.append(f"  config: {Path(job.work_dir) / 'config.yaml'}")
    if job.url:
        lines.append(f"  API: {job.url}")
    if job.chat_url:
        lines.append(f"  chat page: {job.chat_url}")
        if show_key and job.api_key and job.state == JobState.SERVING.value:
            lines.append(f"  chat page with its key (keep it to yourself): {job.chat_url}#key={job.api_key}")
    if job.error:
        lines.append(f"  {job.error}")
    if job.advice:
        lines.append(f"  advice: {job.advice}")
    if job.log_tail and job.state == JobState.FAILED.value:
        lines.append("  last log lines:\n    " + job.log_tail.replace("\n", "\n    "))
    lines.append(f"  log: {job.log_path}")
    if family:
        from ..render.family import family_lines

        lines.extend(family_lines(family))
    return "\n".join(lines)


_UNITS = {"train_runtime": " s", "tokens_per_s": " tokens/s", "size_bytes": " bytes"}


def _finished_progress(job: Job) -> dict[str, Any]:
    """A finished job's last progress without the live ETA (it means nothing once it ended)."""
    progress = dict(job.progress)
    if job.is_final:
        progress.pop("remaining_s", None)
    return progress


def print_deployment(job: Job) -> None:
    print(f"#{job.id} serving: API {job.url}")
    if job.chat_url:
        key = f"#key={job.api_key}" if job.api_key else ""
        print(f"  chat page: {job.chat_url}{key}")
    if job.api_key:
        print(f"  API key (keep it to yourself): {job.api_key}")


def follow(
    store: Store, job_id: int, *, stop_at_serving: bool = False, out=None, since: int = 0
) -> tuple[Job, int]:
    """Print a job's events after `since` until it ends (or serves); returns the job and the cursor."""
    out = out or sys.stdout
    cursor = since
    tty = out.isatty()
    live_line = False
    quarter = -1
    while True:
        for event in store.events_since(cursor, job_id=job_id):
            cursor = event.id
            if event.type == EventKind.PROGRESS:
                line = progress_line(event.data)
                if tty:  # one line, redrawn
                    out.write("\r" + line + "   ")
                    live_line = True
                elif int((event.data.get("percent") or 0) // 25) > quarter:  # a log: every quarter
                    quarter = int((event.data.get("percent") or 0) // 25)
                    out.write(f"#{job_id} {line}\n")
                out.flush()
                continue
            if live_line:
                out.write("\n")
                live_line = False
            text = _kind_result(store, job_id, event) or describe_event(
                event.type, event.data, plot_path=_plot_path(store, job_id)
            )
            if text:
                out.write(f"#{job_id} {text}\n")
                out.flush()
        job = store.get(job_id)
        if job.state in FINAL_STATES or (stop_at_serving and job.state == JobState.SERVING.value):
            if live_line:
                out.write("\n")
            return job, cursor
        time.sleep(0.3)


# One line per change: "started" says the job runs, and a deployment's URLs are printed once it
# serves (print_deployment), so these states add nothing of their own.
_SILENT_STATES = ("queued", "running", "starting", "serving")


def _plot_path(store: Store, job_id: int) -> str:
    """Where the runner keeps the job's loss plot (the terminal runs beside the runner)."""
    job = store.find(job_id)
    return str((job.artifacts or {}).get("plot") or "") if job is not None else ""


def _kind_result(store: Store, job_id: int, event) -> str | None:
    """A `result` the kind's own view renders (bot/render/kinds/), as the thread would show it."""
    from ..render.kinds import result_message

    if event.type != EventKind.RESULT:
        return None
    message = result_message(store.get(job_id), event.data)
    return blocks_to_text(message) if message else None


def describe_event(kind: str, data: dict[str, Any], *, plot_path: str = "") -> str | None:
    """One event as a terminal line (words made here, from the event's kind and payload)."""
    kind = kind_of(kind)
    if kind == EventKind.STATE:
        if data.get("state") in _SILENT_STATES and not data.get("error"):
            return None
        text = data.get("state", "")
        if data.get("error"):
            text += f": {data['error']}"
        return text
    if kind == EventKind.STARTED:
        return "started"
    if kind == EventKind.CANCEL_REQUESTED:
        return "cancel requested"
    if kind == EventKind.REATTACHED:
        return "tunebot restarted and re-attached to this job"
    if kind == EventKind.RESUMED:
        checkpoint = data.get("checkpoint")
        return f"resuming from {checkpoint}" if checkpoint else "no checkpoint yet: starting over"
    if kind == EventKind.FETCHING:
        return "fetching its inputs from the artifact store"
    if kind == EventKind.NOTE:
        return data.get("text")
    if kind == EventKind.ESTIMATE and data.get("seconds"):
        from runners.speed.estimate import describe

        return "estimate: " + describe(data)
    if kind == EventKind.PLOT and data.get("final"):
        return f"loss plot: {plot_path or data.get('file')}"
    if kind == EventKind.RESULT and data.get("artifacts", {}).get("model"):
        return f"merged model: {data['artifacts']['model']}"
    if kind == EventKind.UPLOAD and data.get("error"):
        return f"{data.get('name')} not uploaded: {data['error']}"
    if kind == EventKind.UPLOAD:
        return f"{data.get('name')} uploaded to {data.get('location')}"
    if kind == EventKind.RESULT:
        metrics = data.get("metrics", {})
        table = metrics_table(metrics)
        return "results:\n" + table if table else None
    return None


def dataset_added(info) -> str:
    verb = "replaced" if getattr(info, "replaced", False) else "added"
    rows = f"{info.rows} row{'' if info.rows == 1 else 's'}"
    return f"{verb} dataset {info.name}: {rows}, {info.format} format ({info.file})"


def dataset_line(info) -> str:
    rows = "?" if info.rows is None else f"{info.rows:,}"
    unit = "row " if info.rows == 1 else "rows"
    return f"{info.name:<20} {info.format:<9} {rows:>7} {unit}  {info.file or ''}"


EMOJI = {
    "arrow_forward": "▶",
    "bar_chart": "📊",
    "package": "📦",
    "rocket": "🚀",
    "key": "🔑",
    "bulb": "💡",
    "white_check_mark": "✅",
    "x": "❌",
    "hourglass_flowing_sand": "⏳",
    "black_square_for_stop": "⏹",
    "double_vertical_bar": "⏸",
    "hourglass": "⌛",
    "large_green_circle": "🟢",
    "brain": "🧠",
    "warning": "⚠️",
}


def blocks_to_text(message: dict[str, Any]) -> str:
    """A Block Kit message as terminal text (what a person would read in Slack)."""
    lines: list[str] = []
    for block in message.get("blocks") or []:
        kind = block.get("type")
        if kind == "header":
            lines.append(block["text"]["text"])
        elif kind == "section":
            if block.get("text"):
                lines.append(block["text"]["text"])
            for field in block.get("fields") or []:
                lines.append("  " + field["text"].replace("\n", " "))
        elif kind == "context":
            lines.append("  " + " ".join(e.get("text", "") for e in block.get("elements", [])))
        elif kind == "actions":
            labels = [e.get("text", {}).get("text", "") for e in block.get("elements", [])]
            lines.append("  [" + "] [".join(labels) + "]")
    text = "\n".join(lines) if lines else message.get("text", "")
    text = re.sub(r"<!date\^\d+\^[^|>]*\|([^>]*)>", r"\1", text)
    text = re.sub(r":([a-z0-9_+-]+):", lambda m: EMOJI.get(m.group(1), m.group(0)), text)
    text = re.sub(r"<(https?://[^|>]+)\|([^>]+)>", r"\2 (\1)", text)
    text = re.sub(r"<(https?://[^>]+)>", r"\1", text)
    text = re.sub(r"<@([^>]+)>", r"@\1", text)
    return re.sub(r"(?<!\w)\*([^*\n]+)\*(?!\w)", r"\1", text)


class ThreadPrinter:
    """Prints, for jobs followed in a terminal, what their Slack thread gets: the same
    `bot.story.posts.thread_posts` the Slack notifier uses, written as text."""

    def __init__(self, store: Store, out=None):
        self.store = store
        self.out = out or sys.stdout
        self.cursor: dict[int, int] = {}
        self.last_quarter: dict[int, int] = {}

    def _print(self, job: Job, text: str) -> None:
        prefix = f"  │ #{job.id} "
        self.out.write(prefix + text.replace("\n", "\n  │    ") + "\n")
        self.out.flush()

    def drain(self, job_id: int) -> None:
        from ..story import posts as feed

        for event in self.store.events_since(self.cursor.get(job_id, 0), job_id=job_id):
            first = job_id not in self.cursor
            self.cursor[job_id] = event.id
            job = self.store.get(job_id)
            if first:
                self._print(job, blocks_to_text(feed.root_message(job)))
            for post in feed.thread_posts(job, event):
                self._show(job, event, post, feed)

    def _show(self, job: Job, event, post, feed) -> None:
        if post.action == feed.EDIT_ROOT:
            # The root message is edited in place on every event; print progress at each quarter.
            if event.type != EventKind.PROGRESS:
                return
            quarter = int((event.data.get("percent") or 0) // 25)
            if quarter > self.last_quarter.get(job.id, 0) or event.data.get("step") == 1:
                self.last_quarter[job.id] = quarter
                self._print(job, "(message edited) " + progress_line(event.data))
        elif post.action == feed.UPLOAD:
            self._print(job, f"[file] {post.title or post.filename}: {post.file}")
        elif post.action == feed.EPHEMERAL:
            self._print(
                job,
                "(only the requester sees this) "
                + blocks_to_text({"text": post.text, "blocks": post.blocks}),
            )
        else:
            self._print(job, blocks_to_text({"text": post.text, "blocks": post.blocks}))
