"""A job in Block Kit: its root message, its buttons, what its thread is told, and job lists.

Each `render_*` returns `{"text": fallback, "blocks": [...]}` ready for chat.postMessage,
chat.update, chat.postEphemeral or a `respond`. A job's `api_key` is never read here;
`render_deploy_key` takes the key as an argument, for the requester's eyes only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from bot.parsing import COMMAND
from runners.job import RESUMABLE_STATES, Job, JobKind, JobState, state_phrase
from runners.llamafactory.progress import format_eta, progress_bar
from runners.llamafactory.results import compare_metrics
from runners.speed.estimate import describe as describe_estimate
from runners.speed.throughput import sane_rate

from .blocks import (
    BUTTON_TEXT_MAX,
    SECTION_TEXT_MAX,
    code,
    code_block,
    context,
    escape,
    fields_section,
    header,
    link,
    mention,
    message,
    mrkdwn,
    plain,
    section,
    slack_date,
    slack_len,
    truncate,
)
from .scores import scores_line

# Buttons on a job message: action_id -> what it does; the button's value is the job id.
ACTION_EVAL = "job_eval"
ACTION_EXPORT = "job_export"
ACTION_DEPLOY = "job_deploy"
ACTION_CANCEL = "job_cancel"
ACTION_RESUME = "job_resume"
ACTION_UNDEPLOY = "job_undeploy"
JOB_ACTIONS = (ACTION_EVAL, ACTION_EXPORT, ACTION_DEPLOY, ACTION_CANCEL, ACTION_RESUME, ACTION_UNDEPLOY)

STATE_EMOJI = {
    JobState.QUEUED.value: ":hourglass_flowing_sand:",
    JobState.RUNNING.value: ":gear:",
    JobState.SUCCEEDED.value: ":white_check_mark:",
    JobState.FAILED.value: ":x:",
    JobState.CANCELLED.value: ":no_entry_sign:",
    JobState.INTERRUPTED.value: ":warning:",
    JobState.STARTING.value: ":hourglass:",
    JobState.SERVING.value: ":large_green_circle:",
    JobState.STOPPED.value: ":black_square_for_stop:",
}


def kind_emoji(kind: str) -> str:
    """The kind's emoji, from its view (bot/render/kinds/); "" for a kind without one."""
    from .kinds import view_of

    return view_of(kind).emoji

METRIC_LABELS = (("rouge-1", "ROUGE-1"), ("rouge-2", "ROUGE-2"), ("rouge-l", "ROUGE-L"), ("bleu-4", "BLEU-4"))


# -- jobs -----------------------------------------------------------------------------------------


def kind_label(job: Job) -> str:
    return f"{str(job.kind).capitalize()} #{job.id}"


def short_model(model: str | None) -> str:
    model = (model or "").rstrip("/")
    return model.rsplit("/", 1)[-1] if model else "?"


def finite_number(value: Any) -> float | None:
    """A metric or progress value as a float, or None when it is no number to show (bool, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def progress_text(progress: dict[str, Any]) -> str:
    """`▓▓▓░░ 40%` · step 40/100 · loss 1.234 · ETA 3m 05s · 1,234 tokens/s."""
    percent = finite_number(progress.get("percent"))
    step, total = progress.get("step"), progress.get("total")
    if percent is None and finite_number(step) is not None and finite_number(total):
        percent = 100.0 * float(step) / float(total)
    bits = [f"`{progress_bar(percent)}`"]
    if step is not None:
        bits.append(f"step {step}/{total or '?'}")
    for key, label in (("loss", "loss"), ("eval_loss", "eval loss")):
        value = finite_number(progress.get(key))
        if value is not None:
            bits.append(f"{label} {value:.4g}")
    epoch = finite_number(progress.get("epoch"))
    if epoch is not None:
        bits.append(f"epoch {epoch:.2f}")
    remaining = finite_number(progress.get("remaining_s"))
    if remaining is not None:
        bits.append(f"ETA {format_eta(remaining)}")
    speed = sane_rate(progress.get("tokens_per_s"))
    if speed:
        bits.append(f"{speed:,.0f} tokens/s")
    return " · ".join(bits)


def speed_text(job: Job) -> str:
    """A finished train job's true throughput: '9,522 tokens/s · MFU 39% of the H200's bf16 peak'."""
    metrics = job.metrics or {}
    bits = []
    speed = sane_rate(metrics.get("tokens_per_s"))
    if speed:
        bits.append(f"{speed:,.0f} tokens/s")
    mfu = finite_number(metrics.get("mfu"))
    if mfu is not None and mfu > 0:
        from runners.speed.throughput import short_gpu_name

        bits.append(f"MFU {100 * mfu:.0f}% of the {short_gpu_name(metrics.get('gpu'))}'s bf16 peak")
    return " · ".join(bits)


def estimate_text(job: Job) -> str:
    """The time estimate a train job got before it ran, and once it ended how close it was:
    'about 41 min on 1× H200 (0.7 GPU-h)'; 'estimated about 41 min on 1× H200, took 38 min (−7%)'."""
    est = (job.metrics or {}).get("estimate")
    if job.kind != JobKind.TRAIN.value or not isinstance(est, dict):
        return ""
    seconds = finite_number(est.get("seconds"))
    if seconds is None or seconds <= 0:
        return ""
    if not job.is_final:
        return describe_estimate(est)
    actual = finite_number((job.metrics or {}).get("actual_s"))
    if actual is None or job.state != JobState.SUCCEEDED.value:
        return "estimated " + describe_estimate(est)
    off = 100.0 * (seconds - actual) / actual
    return f"estimated {describe_estimate(est, prefix='')[1:]}, took {format_eta(actual)} ({off:+.0f}%)"


def job_actions(job: Job) -> list[str]:
    """The buttons a job's message offers in its current state (action_ids, in order)."""
    kind, state = job.kind, job.state
    if kind == JobKind.DEPLOY.value:
        if state == JobState.SERVING.value:
            return [ACTION_UNDEPLOY]
        if state in (JobState.QUEUED.value, JobState.STARTING.value):
            return [ACTION_CANCEL]
        return []
    if state in (JobState.QUEUED.value, JobState.RUNNING.value):
        return [ACTION_CANCEL]
    if kind == JobKind.TRAIN.value:
        if state == JobState.SUCCEEDED.value:
            return [ACTION_EVAL, ACTION_EXPORT, ACTION_DEPLOY]
        if state in RESUMABLE_STATES:
            return [ACTION_RESUME]
    if kind == JobKind.EXPORT.value and state == JobState.SUCCEEDED.value:
        return [ACTION_DEPLOY]
    return []


def _confirm(title: str, text: str, confirm: str, deny: str) -> dict[str, Any]:
    return {
        "title": plain(title, 100),
        "text": mrkdwn(text, 300),
        "confirm": plain(confirm, 30),
        "deny": plain(deny, 30),
        "style": "danger",
    }


def _button(action_id: str, job: Job) -> dict[str, Any]:
    labels = {
        ACTION_EVAL: "Eval",
        ACTION_EXPORT: "Export",
        ACTION_DEPLOY: "Deploy",
        ACTION_CANCEL: "Cancel",
        ACTION_RESUME: "Resume",
        ACTION_UNDEPLOY: "Undeploy",
    }
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": plain(labels[action_id], BUTTON_TEXT_MAX),
        "value": str(job.id),
    }
    if action_id in (ACTION_EVAL, ACTION_RESUME):
        button["style"] = "primary"
    if action_id == ACTION_CANCEL:
        button["style"] = "danger"
        then = " It can be resumed from its last checkpoint." if job.kind == JobKind.TRAIN.value else ""
        button["confirm"] = _confirm(
            f"Cancel {kind_label(job)}?", f"The run stops now.{then}", "Cancel it", "Keep it"
        )
    if action_id == ACTION_UNDEPLOY:
        button["style"] = "danger"
        button["confirm"] = _confirm(
            f"Stop {kind_label(job)}?",
            "Its URL stops answering and its GPU is freed.",
            "Undeploy",
            "Keep serving",
        )
    return button


def actions_block(job: Job) -> dict[str, Any] | None:
    buttons = [_button(action_id, job) for action_id in job_actions(job)]
    return {"type": "actions", "block_id": f"job_actions_{job.id}", "elements": buttons} if buttons else None


def _with_actions(blocks: list[dict[str, Any]], job: Job) -> list[dict[str, Any]]:
    block = actions_block(job)
    return [*blocks, block] if block else blocks


def _state_text(job: Job, queue_position: int | None = None) -> str:
    text = f"{STATE_EMOJI.get(job.state, ':grey_question:')} {escape(job.state)}"
    if job.state == JobState.QUEUED.value and queue_position:
        text += f" ({ordinal(queue_position)} in line)"
    if job.attempt and job.attempt > 1:
        text += f" · attempt {job.attempt}"
    return text


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st…"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _job_fields(job: Job, queue_position: int | None = None) -> list[tuple[str, str]]:
    fields = [("State", _state_text(job, queue_position)), ("Asked by", mention(job.user))]
    fields.append(("Model", code(job.model) if job.model else "—"))
    if job.kind in (JobKind.TRAIN.value, JobKind.EVAL.value) or job.dataset:
        fields.append(("Dataset", code(job.dataset) if job.dataset else "—"))
    if job.method:
        fields.append(("Method", escape(job.method)))
    if job.preset:
        fields.append(("Preset", escape(job.preset)))
    if job.parent_id:
        fields.append(("From", f"#{job.parent_id}"))
    if job.kind == JobKind.DEPLOY.value and job.mode:
        fields.append(("Mode", escape(job.mode)))
    return fields


def render_job_message(job: Job, *, queue_position: int | None = None) -> dict[str, Any]:
    """The job's root message, edited in place as the job moves."""
    blocks: list[dict[str, Any]] = [
        header(f"{kind_emoji(job.kind)} {kind_label(job)} · {short_model(job.model)}"),
        fields_section(_job_fields(job, queue_position)),
    ]
    fallback = f"{kind_label(job)} {job.state}: {short_model(job.model)}"
    if job.dataset:
        fallback += f" on {job.dataset}"
    progress = job.progress or {}
    if progress and job.state in (
        JobState.RUNNING.value,
        JobState.SUCCEEDED.value,
        JobState.FAILED.value,
        JobState.CANCELLED.value,
        JobState.INTERRUPTED.value,
    ):
        # A live ETA means nothing once the job ended: the context line says how long it ran.
        shown = progress if job.state == JobState.RUNNING.value else {
            k: v for k, v in progress.items() if k != "remaining_s"}
        blocks.append(section(progress_text(shown)))
        if job.state == JobState.RUNNING.value and finite_number(progress.get("percent")) is not None:
            fallback += f" ({progress['percent']:.0f}%)"
    if job.state == JobState.FAILED.value:
        reason = escape(truncate(job.error or "it stopped with an error", 500))
        blocks.append(section(f"*Failed:* {reason}\nThe reason and the last log lines are in the thread."))
    if job.kind == JobKind.DEPLOY.value and job.state == JobState.SERVING.value:
        lines = []
        if job.chat_url:
            lines.append(f"*Chat page:* {link(job.chat_url)}")
        if job.url and job.url != job.chat_url:
            lines.append(f"*API:* {code(job.url)} (OpenAI-compatible)")
        if lines:
            blocks.append(section("\n".join(lines)))
    times = [f"Asked {slack_date(job.created_at)}"]
    duration = job.duration()
    if duration is not None:
        times.append(("ran " if job.is_final else "running for ") + format_eta(duration))
    estimate = estimate_text(job)
    if estimate:
        times.append(f":stopwatch: {estimate}")
        if job.state == JobState.QUEUED.value:
            fallback += f" ({estimate})"
    blocks.append(context(" · ".join(times)))
    return message(fallback, _with_actions(blocks, job))


def render_started(job: Job, *, config_attached: bool = True) -> dict[str, Any]:
    """The thread's first post: the job has a process now."""
    where = f" on {escape(job.host)}" if job.host else ""
    slots = ""
    if job.slots:
        unit = "CPU slot" if all(str(s).startswith("cpu") for s in job.slots) else "GPU"
        plural = "s" if len(job.slots) != 1 else ""
        slots = f" ({len(job.slots)} {unit}{plural}: {escape(','.join(job.slots))})"
    resumed = " Resuming from its last checkpoint." if job.attempt and job.attempt > 1 else ""
    what = code(job.model)
    if job.dataset:
        what += f" on {code(job.dataset)}"
    if job.method:
        what += f" ({escape(job.method)})"
    text = f":arrow_forward: *{kind_label(job)} started*{where}{slots}: {what}.{resumed}"
    blocks = [section(text)]
    if config_attached:
        blocks.append(context("The exact LLaMA-Factory config it runs with is attached below."))
    return message(f"{kind_label(job)} started: {short_model(job.model)}", blocks)


def _final_loss(job: Job) -> str:
    """What the last trainer-log line said: final loss, eval loss, steps, tokens/s."""
    progress = job.progress or {}
    bits = []
    loss = finite_number(progress.get("loss"))
    if loss is not None:
        bits.append(f"final loss {loss:.4g}")
    eval_loss = finite_number(progress.get("eval_loss"))
    if eval_loss is not None:
        bits.append(f"eval loss {eval_loss:.4g}")
    if progress.get("step") is not None:
        bits.append(f"{progress['step']} steps")
    speed = sane_rate(progress.get("tokens_per_s"))
    if speed:
        bits.append(f"{speed:,.0f} tokens/s")
    return ", ".join(bits)


def _trainer_results(job: Job) -> str:
    """What train_results.json added: average loss, trainer time, throughput (tokens/s only where
    the trainer log did not count them: `_final_loss` shows those)."""
    metrics = job.metrics or {}
    bits = []
    loss = finite_number(metrics.get("train_loss"))
    if loss is not None:
        bits.append(f"average train loss {loss:.4g}")
    runtime = finite_number(metrics.get("train_runtime"))
    if runtime is not None:
        bits.append(f"trainer time {runtime:,.0f} s")
    samples = finite_number(metrics.get("train_samples_per_second"))
    if samples:
        bits.append(f"{samples:,.2f} samples/s")
    speed = sane_rate(metrics.get("tokens_per_s"))
    if speed and not sane_rate((job.progress or {}).get("tokens_per_s")):
        bits.append(f"{speed:,.0f} tokens/s")
    tokens = finite_number(metrics.get("total_tokens"))
    if tokens and 0 < tokens < 1e15:  # LLaMA-Factory's own count under packing can be -9e19
        bits.append(f"{tokens:,.0f} tokens seen")
    mfu = finite_number(metrics.get("mfu"))
    if mfu:
        bits.append(speed_text(job).split(" · ")[-1])
    estimate = estimate_text(job)
    if estimate:
        bits.append(estimate)
    line = " · ".join(bits)
    return line[:1].upper() + line[1:]


def render_finished(job: Job) -> dict[str, Any]:
    """The post when a job ends (a failure goes to `render_failure`), @-mentioning the requester."""
    if job.state == JobState.FAILED.value:
        return render_failure(job, job.error, job.advice, job.log_tail)
    who = mention(job.user)
    took = job.duration()
    took_text = format_eta(took) if took is not None else None
    emoji = STATE_EMOJI.get(job.state, "")
    label = kind_label(job)
    if job.state == JobState.SUCCEEDED.value:
        text = f"{emoji} {who} *{label} finished*" + (f" in {took_text}." if took_text else ".")
        details = _final_loss(job) if job.kind == JobKind.TRAIN.value else ""
        if details:
            text += f" {details[0].upper()}{details[1:]}."
        if job.kind == JobKind.TRAIN.value:
            text += " Next: evaluate, export or deploy it with the buttons below."
    elif job.state == JobState.CANCELLED.value:
        by = f" by {mention(job.cancelled_by)}" if job.cancelled_by else ""
        text = f"{emoji} {who} *{label} was cancelled*{by}" + (f" after {took_text}." if took_text else ".")
    elif job.state == JobState.INTERRUPTED.value:
        text = f"{emoji} {who} *{label} was interrupted*: its process ended while tunebot was away."
    elif job.state == JobState.STOPPED.value:
        by = f" by {mention(job.cancelled_by)}" if job.cancelled_by else ""
        text = f"{emoji} {who} *{label} stopped*{by}; its URL no longer answers."
    else:
        text = f"{emoji} {who} *{label}* {escape(state_phrase(job.state))}."
    if job.kind == JobKind.TRAIN.value and job.state in RESUMABLE_STATES:
        text += " `resume` continues from the last checkpoint."
    blocks = [section(text)]
    trained = job.kind == JobKind.TRAIN.value and job.state == JobState.SUCCEEDED.value
    results = _trainer_results(job) if trained else ""
    if results:
        blocks.append(context(escape(results)))
    plain_text = re.sub(r"[*`]", "", text)
    return message(plain_text, _with_actions(blocks, job), escaped=True)


def render_failure(job: Job, reason: str | None, advice: str | None, tail: str | None) -> dict[str, Any]:
    """Why a job failed, in plain words, what to try, and the last log lines; mentions the requester."""
    why = reason or (
        f"it exited with code {job.exit_code}" if job.exit_code is not None else "it stopped with an error"
    )
    head = (
        f"{STATE_EMOJI[JobState.FAILED.value]} {mention(job.user)} *{kind_label(job)} failed:* {escape(why)}"
    )
    blocks = [section(truncate(head, SECTION_TEXT_MAX))]
    if advice:
        blocks.append(section(f":bulb: *What to try:* {escape(advice)}"))
    if tail and tail.strip():
        blocks.append(section(code_block(tail)))
    fallback = f"{kind_label(job)} failed: {why}"
    return message(fallback, _with_actions(blocks, job))


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name, metrics.get(f"predict_{name}"))
    return finite_number(value)


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    """ROUGE/BLEU by name (LLaMA-Factory may prefix them `predict_`), numbers only."""
    found = {key: _metric(metrics, key) for key, _ in METRIC_LABELS}
    return {key: value for key, value in found.items() if value is not None}


def render_eval_result(
    job: Job,
    metrics: dict[str, Any],
    previous_metrics: dict[str, Any] | None = None,
    samples: Iterable[dict[str, Any]] = (),
    *,
    previous_job_id: int | None = None,
) -> dict[str, Any]:
    """ROUGE-1/2/L and BLEU-4 as a table, with the change since this model's previous eval, and
    three sample predictions."""
    rows = []
    compare = bool(previous_metrics)
    scores = _scores(metrics)
    base = _scores(metrics.get("base") or {})
    changes = compare_metrics(scores, _scores(previous_metrics or {}))
    for key, label in METRIC_LABELS:
        if key not in scores:
            continue
        row = f"{label:<8} {scores[key]:>7.2f}"
        if base:
            row += f"  {base[key]:>7.2f}  {scores[key] - base[key]:>+7.2f}" if key in base else " " * 18
        if compare:
            row += f"  {changes[key]:>+7.2f}" if key in changes else "      new"
        rows.append(row)
    title = f"{'Metric':<8} {'Score':>7}" + (f"  {'Base':>7}  {'Gain':>7}" if base else "")
    title += f"  {'Change':>7}" if compare else ""
    table = "\n".join([title, *rows]) if rows else "No scores were written."
    on = f" on {code(job.dataset)}" if job.dataset else ""
    of = f" of #{job.parent_id}" if job.parent_id else ""
    head = f"{kind_emoji(JobKind.EVAL.value)} {mention(job.user)} *{kind_label(job)}{of}*{on}:"
    if compare:
        since = f" #{previous_job_id}" if previous_job_id else " the previous eval"
        note = f"Change against{since} of this model (positive is better)."
    else:
        note = "The first eval of this model: nothing to compare with yet."
    blocks: list[dict[str, Any]] = [section(head)]
    if base:
        blocks.append(section(scores_line(metrics, bold="*")))
    blocks += [section(code_block(table)), context(note)]
    if base:
        blocks.append(context("Base and gain: the model it was fine-tuned from, on the same eval set "
                              "with the same settings (positive gain: the fine-tune helped)."))
    elif ((job.spec or {}).get("base") or {}).get("run"):
        blocks.append(context(f"The base model's eval failed, so there is no comparison; "
                              f"`logs {job.id}` shows why."))
    speed = eval_speed_line(metrics)
    if speed:
        blocks.append(context(speed))
    for i, sample in enumerate(list(samples)[:3], start=1):
        prompt = " ".join(str(sample.get("prompt") or "").split())
        text = (
            f"*Sample {i}*\n*Prompt:* {escape(truncate(prompt, 600))}\n"
            f"*Model:* {escape(truncate(str(sample.get('predict') or '').strip(), 1000))}\n"
            f"*Expected:* {escape(truncate(str(sample.get('label') or '').strip(), 1000))}"
        )
        blocks.append(section(text))
    scores = scores_line(metrics) if base else ", ".join(
        f"{label} {_metric(metrics, key):.2f}"
        for key, label in METRIC_LABELS
        if _metric(metrics, key) is not None
    )
    return message(f"{kind_label(job)}{of}: {scores or 'no scores'}", blocks)


def eval_speed_line(metrics: dict[str, Any]) -> str:
    """How the predictions were made: samples/s, and on a GPU runner the batch it fitted to the
    card and whether the rows ran sorted by length. '' when nothing was recorded."""
    parts = []
    rate = metrics.get("samples_per_s")
    runtime = metrics.get("runtime_s")
    if _number(rate) and _number(runtime):
        parts.append(f"{rate:.2f} samples/s ({runtime:.0f} s generating)")
    plan = metrics.get("eval_plan")
    if isinstance(plan, dict) and _number(plan.get("batch")):
        gpu = escape(str(plan.get("gpu") or "the GPU")).replace("NVIDIA ", "")
        parts.append(f"batch {int(plan['batch'])} fitted to the {gpu}'s memory")
    if metrics.get("eval_sorted") is True:
        if metrics.get("eval_order_restored") is False:
            parts.append("rows sorted by length (the predictions file stays in that order: "
                         "LLaMA-Factory left out rows)")
        else:
            parts.append("rows sorted by length (predictions kept in their order)")
    return "Generated: " + ", ".join(parts) + "." if parts else ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def render_export(job: Job, location: str) -> dict[str, Any]:
    """Where the merged model went."""
    where = link(location, truncate(location, 80)) if re.match(r"^https?://", location) else code(location)
    of = f" of #{job.parent_id}" if job.parent_id else ""
    text = f"{kind_emoji(JobKind.EXPORT.value)} {mention(job.user)} *{kind_label(job)}{of} is ready:* {where}"
    return message(f"{kind_label(job)}{of} is ready: {location}", _with_actions([section(text)], job))


def render_deploy(job: Job, url: str | None, chat_url: str | None) -> dict[str, Any]:
    """The deployment's addresses (its API key goes to the requester alone: `render_deploy_key`)."""
    of = f" from #{job.parent_id}" if job.parent_id else ""
    emoji = kind_emoji(JobKind.DEPLOY.value)
    lines = [f"{emoji} {mention(job.user)} *{kind_label(job)}{of} is serving* {code(job.model)}"]
    if chat_url:
        lines.append(f"*Chat page:* {link(chat_url)}")
    if url and url != chat_url:
        lines.append(f"*API:* {code(url)} (OpenAI-compatible)")
    lines.append("Reply in this thread to chat with the model.")
    if job.user:
        lines.append(f"The API key was sent to {mention(job.user)} privately.")
    fallback = f"{kind_label(job)} is serving: {chat_url or url or ''}"
    return message(fallback, _with_actions([section("\n".join(lines))], job))


def render_deploy_key(job: Job, api_key: str, *, model_name: str | None = None) -> dict[str, Any]:
    """The one message that shows a deployment's API key: post it ephemeral, to the requester only."""
    lines = [f":key: Your API key for {kind_label(job)}: {code(api_key)}", "Only you can see this message."]
    if job.chat_url:
        lines.append(f"*Chat page with your key:* {link(f'{job.chat_url}#key={api_key}')}")
    if job.url:
        body = '{"model": "%s", "messages": [{"role": "user", "content": "Hello"}]}' % (model_name or "MODEL")
        example = (
            f"curl {job.url.rstrip('/')}/chat/completions \\\n"
            f"  -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}'"
        )
        lines.append(code_block(example))
    return message(f"Your API key for {kind_label(job)}", [section("\n".join(lines))])


def render_jobs(jobs: Sequence[Job], *, title: str = "Jobs") -> dict[str, Any]:
    """One line per job, newest first as given."""
    if not jobs:
        text = f"No jobs yet. Start one with `{COMMAND} train`."
        return message(text, [section(text)])
    lines = []
    for job in jobs:
        bits = [
            f"{STATE_EMOJI.get(job.state, '')} *#{job.id}* {escape(job.kind)}",
            code(short_model(job.model)),
        ]
        if job.dataset:
            bits.append(f"on {code(job.dataset)}")
        if job.parent_id:
            bits.append(f"from #{job.parent_id}")
        percent = finite_number((job.progress or {}).get("percent"))
        state = escape(job.state) + (
            f" {percent:.0f}%" if job.state == JobState.RUNNING.value and percent else ""
        )
        bits.append(state)
        if job.state == JobState.SERVING.value and (job.chat_url or job.url):
            bits.append(link(job.chat_url or job.url or ""))
        bits.append(mention(job.user))
        lines.append(" · ".join(bits))
    blocks: list[dict[str, Any]] = [header(title)]
    chunk: list[str] = []
    for line in lines:
        line = truncate(line, SECTION_TEXT_MAX)
        if chunk and slack_len("\n".join([*chunk, line])) > SECTION_TEXT_MAX:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(section("\n".join(chunk)))
    fallback = f"{title}: " + ", ".join(f"#{j.id} {j.kind} {j.state}" for j in jobs[:30])
    return message(fallback, blocks)
