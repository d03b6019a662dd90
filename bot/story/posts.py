"""What a job's Slack thread gets for each of its events: pure functions, no Slack, no database.

`thread_posts(job, event)` turns one `JobEvent` (by its kind: runners.events) into `Post`s: edit the
job's root message, post in the thread, upload a file into it, or show the requester alone something
(a deployment's API key). The notifier (bot/story/notifier.py) reads the events, does the I/O and hands
the posts to Delivery. `job` is the job as it is now; what the event itself says (its state, error,
metrics) wins over that, so an event read late still tells what happened then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.deploy import model_name
from runners.events import EventKind, kind_of
from runners.job import Job, JobEvent, JobKind, JobState

from .. import render
from ..render.kinds import result_message

EDIT_ROOT = "edit_root"  # re-render the job's root message (render_job_message) in place
THREAD = "thread"  # a post in the job's thread
UPLOAD = "upload"  # a file into the job's thread (files_upload_v2)
EPHEMERAL = "ephemeral"  # to the requester only


@dataclass(frozen=True)
class Post:
    """One thing to do in Slack. Text and blocks stay out of the repr: an ephemeral carries a key."""

    action: str
    text: str = field(default="", repr=False)
    blocks: list[dict[str, Any]] | None = field(default=None, repr=False)
    file: str | None = None  # upload: the file's key in the job store (Store.get_file)
    filename: str | None = None
    title: str | None = None
    user: str | None = None  # ephemeral: who sees it
    redact: bool = False  # upload: a config whose secret values must be masked first (`redact_config`)
    # ephemeral: it shows this deployment's API key (`deploy_key_message`); the outbox keeps only the id
    secret_of: int | None = None


def thread_posts(job: Job, event: JobEvent, *, previous_eval: Job | None = None) -> list[Post]:
    """The posts one event of `job` calls for. `previous_eval`: for an eval's result, this model's
    previous succeeded eval on the same dataset (the notifier finds it), to show the change."""
    data = event.data or {}
    kind = kind_of(event.type)
    if kind in (EventKind.PROGRESS, EventKind.ESTIMATE):  # an estimate shows in the root while it waits
        return [Post(EDIT_ROOT)]
    if kind == EventKind.PLOT:
        return _plot_posts(job, data)
    if kind == EventKind.STATE:
        return [Post(EDIT_ROOT), *_state_posts(_as_of(job, data), data)]
    if kind == EventKind.RESULT:
        return _result_posts(job, data, previous_eval)
    if kind == EventKind.STARTED:
        return _started_posts(job, data)
    if kind == EventKind.CANCEL_REQUESTED:
        who = data.get("by") or job.cancelled_by
        by = f" by {render.mention(who)}" if who else ""
        return [_note(f":hourglass: Stopping {render.kind_label(job)}: cancel requested{by}.")]
    if kind == EventKind.REATTACHED:
        label = render.kind_label(job)
        return [_note(f":arrows_counterclockwise: tunebot restarted and is following {label} again; "
                      "its process kept running.")]
    if kind == EventKind.RESUMED:
        attempt = f" (attempt {job.attempt})" if job.attempt and job.attempt > 1 else ""
        checkpoint = data.get("checkpoint")
        how = f"resuming from {checkpoint}" if checkpoint else "no checkpoint yet: starting over"
        return [_note(f":repeat: {render.kind_label(job)} is queued again{attempt}: {render.escape(how)}.")]
    if kind == EventKind.FETCHING:
        return [_note(f"{render.kind_label(job)}: fetching its inputs from the artifact store")]
    if kind == EventKind.NOTE and data.get("text"):
        return [_note(f"{render.kind_label(job)}: {render.escape(str(data['text']))}")]
    if kind == EventKind.UPLOAD:  # where each artifact was stored, or why it was not (the README's promise)
        return [_upload_note(job, data)]
    return []  # activity: the root message and the progress posts show what matters


def root_message(job: Job, *, queue_position: int | None = None) -> dict[str, Any]:
    """The root message's chat.postMessage/chat.update arguments: text, blocks and metadata."""
    return {**render.render_job_message(job, queue_position=queue_position), "metadata": job_metadata(job)}


def deploy_key_message(job: Job) -> dict[str, Any] | None:
    """The requester's message with the deployment's API key, while it serves; None otherwise."""
    if not job.api_key or job.state != JobState.SERVING.value:
        return None
    return render.render_deploy_key(job, job.api_key, model_name=model_name(job))


def job_metadata(job: Job) -> dict[str, Any]:
    """Slack message metadata on a job's root: which job it shows and how far it was (a listener
    can map a message to its job; a benchmark can tell which trainer_log line an edit shows)."""
    payload: dict[str, Any] = {"job_id": job.id, "kind": str(job.kind), "state": str(job.state)}
    step = (job.progress or {}).get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        payload["step"] = step
    return {"event_type": "tunebot_job", "event_payload": payload}


def export_location(job: Job, artifacts: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """(where to tell people the export is, the runner's local path if that is not it).

    A remote copy (`artifacts["remote"]`: a URL string, or a dict with `url`/`uri`/`key`, as the
    artifact store records it) is shown first; otherwise the merged model's directory."""
    found = {**(job.artifacts or {}), **(artifacts or {})}
    local = found.get("model") or (str(Path(job.work_dir) / "model") if job.work_dir else "")
    remote = found.get("remote")
    if isinstance(remote, dict):
        remote = remote.get("url") or remote.get("uri") or remote.get("key")
    if remote:
        return str(remote), str(local) if local else None
    return str(local or "the runner"), None


# hf_hub_token, ms_hub_token, om_hub_token, …_api_key, …_secret, …_password (not max_new_tokens).
_SECRET_KEY = re.compile(
    r"^(\s*)((?:[A-Za-z0-9.-]+_)*(?:token|api_key|apikey|secret|password|secret_key))(\s*:\s*)(\S.*)$",
    re.IGNORECASE,
)


def redact_config(text: str) -> str:
    """A LLaMA-Factory YAML with the values of token/secret-like keys (hf_hub_token, …) masked."""
    return "\n".join(_SECRET_KEY.sub(r"\1\2\3'<redacted>'", line) for line in text.split("\n"))


def previous_eval_of(job: Job, candidates: list[Job]) -> Job | None:
    """Among `candidates` (succeeded eval jobs), this eval's predecessor: the newest earlier one of
    the same model (same parent job, or the same model path when there is none) on the same
    dataset. Scores on another eval set do not compare."""
    same = [
        c for c in candidates
        if c.id is not None and job.id is not None and c.id < job.id
        and c.kind == JobKind.EVAL.value and c.state == JobState.SUCCEEDED.value
        and (c.parent_id == job.parent_id if job.parent_id else (not c.parent_id and c.model == job.model))
        and (c.dataset or "") == (job.dataset or "")
    ]
    return max(same, key=lambda c: c.id or 0) if same else None


# --- per event type ------------------------------------------------------------------------


def _as_of(job: Job, data: dict[str, Any]) -> Job:
    """The job as the state event saw it (it may have moved on since, e.g. been resumed)."""
    keep = {k: v for k, v in data.items() if k in Job.model_fields and k not in ("id", "api_key")}
    return job.model_copy(update=keep) if keep else job


def _state_posts(job: Job, data: dict[str, Any]) -> list[Post]:
    state = job.state
    if state == JobState.SERVING.value:
        posts = [_thread(render.render_deploy(job, job.url, job.chat_url))]
        key = deploy_key_message(job)
        if key is not None and job.user:
            posts.append(Post(EPHEMERAL, key["text"], key["blocks"], user=job.user, secret_of=job.id))
        return posts
    if state == JobState.FAILED.value:
        return [_thread(render.render_failure(job, job.error, job.advice, job.log_tail))]
    if state == JobState.SUCCEEDED.value:
        # Eval and export results come with their `result` event, which has the scores and paths.
        return [_thread(render.render_finished(job))] if job.kind == JobKind.TRAIN.value else []
    if state in (JobState.CANCELLED.value, JobState.INTERRUPTED.value):
        return [_thread(render.render_finished(job))]
    if state == JobState.STOPPED.value:
        message = render.render_finished(job)
        if job.error and not job.cancelled_by:  # tunebot stopped it (idle, start-up timeout): say why
            message = _with_context(message, render.escape(job.error))
        return [_thread(message)]
    return []  # queued, running, starting: the root message shows it


def _with_context(message: dict[str, Any], text: str) -> dict[str, Any]:
    """The message with a context line under its first section (before any buttons)."""
    blocks = list(message["blocks"])
    blocks.insert(1, render.context(text))
    return render.message(message["text"], blocks, escaped=True)


def _result_posts(job: Job, data: dict[str, Any], previous_eval: Job | None) -> list[Post]:
    kind = data.get("kind") or job.kind
    metrics = data.get("metrics") or job.metrics or {}
    artifacts = {**(job.artifacts or {}), **(data.get("artifacts") or {})}
    if kind == JobKind.EVAL.value:
        previous = previous_eval.metrics if previous_eval is not None else None
        return [_thread(render.render_eval_result(
            job, metrics, previous, artifacts.get("samples") or [],
            previous_job_id=previous_eval.id if previous_eval is not None else None,
        ))]
    if kind == JobKind.EXPORT.value:
        location, local = export_location(job, artifacts)
        message = render.render_export(job, location)
        if local:
            message = _with_context(message, f"Also on the runner at {render.code(local)}")
        return [_thread(message)]
    message = result_message(job, data)  # another kind's post, from its module in bot/render/kinds/
    return [_thread(message)] if message else []  # train: the state event's post has it all


def _plot_posts(job: Job, data: dict[str, Any]) -> list[Post]:
    if not data.get("final") or not data.get("file"):
        return []  # partial plots go out with the progress posts (story/running.py), the final one here
    return [Post(UPLOAD, file=str(data["file"]), filename=f"loss-{job.id}.png",
                 title=f"Training loss of #{job.id} ({render.short_model(job.model)})")]


def _started_posts(job: Job, data: dict[str, Any]) -> list[Post]:
    config = data.get("config")
    posts = [_thread(render.render_started(job, config_attached=bool(config)))]
    if config:
        posts.append(Post(UPLOAD, file=str(config), filename=f"tunebot-{job.id}-{job.kind}.yaml",
                          title=f"LLaMA-Factory config of #{job.id}", redact=True))
    return posts


def _upload_note(job: Job, data: dict[str, Any]) -> Post:
    """Where an artifact was stored (with its link), or why it was not and where it still is."""
    name = render.escape(str(data.get("name") or "artifacts"))
    if data.get("error"):
        local = f" Its files stay on the runner at {render.code(data['local'])}." if data.get("local") else ""
        return _note(f":warning: {render.kind_label(job)}: the {name} was not uploaded: "
                     f"{render.escape(render.truncate(str(data['error']), 600))}{local}")
    where = str(data.get("location") or "the artifact store")
    shown = render.link(str(data["link"]), where) if data.get("link") else render.code(where)
    size = data.get("size")
    known = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    size_text = f" ({_size(size)})" if known else ""
    return _note(f":package: {render.kind_label(job)}: the {name} is stored at {shown}{size_text}.")


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _thread(message: dict[str, Any]) -> Post:
    return Post(THREAD, message["text"], message["blocks"])


def _note(text: str) -> Post:
    plain = re.sub(r"[*`]", "", re.sub(r":[a-z_]+: ", "", text))
    return Post(THREAD, plain, [render.context(text)])

