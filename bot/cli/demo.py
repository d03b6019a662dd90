"""`tunebot demo`: the seed's whole workflow on this machine's CPU, with no Slack token.

A tiny Llama and a small Chinese+English instruction set are built locally (once, cached), then
train -> eval -> export -> deploy -> one chat request -> undeploy run through the same engine
the Slack bot uses, and the messages a Slack thread would get are printed as they come.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from runners.errors import UserError
from runners.job import FINAL_STATES, Job, JobState
from runners.queue import Requester
from runners.runtime import Runtime
from runners.settings import Settings

from ..render import METRIC_LABELS
from . import terminal

DEMO_USER = "demo"
QUESTION = "What is the capital of France?"


def run_demo(settings: Settings, *, keep: bool = False, out=None) -> int:
    out = out or sys.stdout
    say = _printer(out)
    say(f"tunebot demo: a tiny Llama, trained and served on this machine's CPU (data: {settings.data_dir})\n")
    runtime = Runtime(settings).start()
    thread = terminal.ThreadPrinter(runtime.store, out=out)
    try:
        who = Requester(user=DEMO_USER)
        say("$ /tune train tiny")
        train = _run(runtime, thread, runtime.queue.submit_train(preset="tiny", requester=who))
        if train.state != JobState.SUCCEEDED.value:
            return 1
        say(f"\n$ /tune eval {train.id}")
        evaluation = _run(
            runtime,
            thread,
            runtime.queue.submit_eval(train.id, pairs={"max_new_tokens": "32", "batch": "8"}, requester=who),
        )
        say(f"\n$ /tune export {train.id}")
        export = _run(runtime, thread, runtime.queue.submit_export(train.id, requester=who))
        if export.state != JobState.SUCCEEDED.value:
            return 1
        say(f"\n$ /tune deploy {export.id}")
        deployment = _run(
            runtime,
            thread,
            runtime.queue.submit_deploy(export.id, requester=who),
            until=(JobState.SERVING.value, *FINAL_STATES),
        )
        if deployment.state != JobState.SERVING.value:
            return 1
        say(f"\n> (in the thread) {QUESTION}")
        answer = runtime.chat(deployment.id, [{"role": "user", "content": QUESTION}], max_tokens=32)
        say(f"< {answer.strip() or '(an empty answer: the tiny model is random and barely trained)'}")
        page_ok = _chat_page_answers(deployment, say)
        if not keep:
            say(f"\n$ /tune undeploy {deployment.id}")
            runtime.queue.undeploy(deployment.id, by=DEMO_USER)
            deployment = _run(runtime, thread, deployment)
        say("\n" + _summary(train, evaluation, export, deployment, page_ok))
        ok = evaluation.state == JobState.SUCCEEDED.value and page_ok
        if keep:
            say("\nserving until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                runtime.queue.undeploy(deployment.id, by=DEMO_USER)
                _run(runtime, thread, deployment)
        return 0 if ok else 1
    except UserError as exc:
        say(f"tunebot: {exc.text()}")
        return 2
    finally:
        runtime.stop()


def _printer(out):
    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    return say


def _run(
    runtime: Runtime, thread: terminal.ThreadPrinter, job: Job, until: tuple[str, ...] = FINAL_STATES
) -> Job:
    """Print the job's thread until it reaches one of `until`."""
    while True:
        thread.drain(job.id)
        current = runtime.store.get(job.id)
        if current.state in until:
            thread.drain(job.id)
            return runtime.store.get(job.id)
        time.sleep(0.3)


def _chat_page_answers(job: Job, say: Callable[[str], None]) -> bool:
    """The web URL people get: the page loads and its same-origin API answers one message. A page
    that does not answer is reported (the summary says so too), not a traceback."""
    if not job.chat_url:
        say("chat page: the deployment has none")
        return False
    body = json.dumps(
        {"model": "tunebot", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 16}
    ).encode()
    req = urllib.request.Request(
        job.chat_url + "v1/chat/completions",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {job.api_key}"},
    )
    try:
        with urllib.request.urlopen(job.chat_url, timeout=10) as resp:  # noqa: S310 - our own server
            page = resp.read().decode("utf-8", "replace")
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - our own server
            reply = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
        say(f"chat page {job.chat_url} did not answer: {getattr(exc, 'reason', None) or exc}")
        return False
    return "<html" in page.lower() and bool(reply.get("choices"))


def _summary(train: Job, evaluation: Job, export: Job, deployment: Job, page_ok: bool) -> str:
    lines = ["demo finished:"]
    plot = train.artifacts.get("plot")
    lines.append(f"  loss plot (PNG):   {plot}")
    metrics = evaluation.metrics
    scores = ", ".join(
        f"{label} {metrics[key]:.2f}" for key, label in METRIC_LABELS if metrics.get(key) is not None
    )
    lines.append(f"  eval scores:       {scores or evaluation.error}")
    lines.append(f"  eval results:      {evaluation.artifacts.get('results')}")
    lines.append(f"  exported model:    {export.artifacts.get('model')}  (transformers loads it directly)")
    lines.append(f"  deployed API:      {deployment.url}")
    lines.append(
        f"  chat page:         {deployment.chat_url}  ({'answered' if page_ok else 'did not answer'})"
    )
    if Path(str(plot)).exists():
        lines.append(f"  open the plot:     xdg-open {plot}")
    return "\n".join(lines)
