"""Slack front benchmark: ack latency under a burst of commands, and trainer-log-to-Slack delay.

1. Ack latency. Rounds of N (default 50) concurrent, correctly signed `/tune train tiny epochs=K`
   requests over HTTP (uvicorn on 127.0.0.1), each with its own trigger_id, sent by a separate
   load process (so client and server do not share a GIL) released together by a barrier. Three
   servers answer in the same run, rounds alternating between them:
   - `bare`: a bare Bolt app whose /tune listener only calls ack(), served the stock way
     (Bolt's Starlette adapter, which dispatches on the event loop);
   - `bare-threaded`: the same bare app behind tunebot's ASGI wrapper (dispatch in a thread pool);
   - `tunebot`: the real app (`bot.app.build_app` + `bot.serve.asgi_app`): it parses the command,
     acks "Checking…", and the lazy half validates with LLaMA-Factory's parser, queues a job in
     SQLite and answers on the response_url, all while later requests are being acked.
   Latency is the client's: from sending the request to the whole response read. Before the
   timed rounds each server gets a warm-up round (LLaMA-Factory's parser imported, auth.test
   cached); each round waits for tunebot's lazy answers before the next starts.
2. Trainer log to Slack. One train job (the stand-in llamafactory-cli writing a trainer_log.jsonl
   line every `--step-seconds`) under the real runner, notifier and outbox with the default
   `TUNEBOT_STATUS_EDIT_EVERY` and poll intervals. A watcher polls the log file every 5 ms and
   notes when each line appears; the Web API stand-in notes every call. The delay of a line is
   the time until the first chat.postMessage/chat.update whose progress shows that step or a
   later one.

    python bench/ack_latency.py [--rounds 10] [--concurrency 50] [--steps 40] [--step-seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.slack_signing import (  # noqa: E402
    SIGNING_SECRET,
    new_trigger_id,
    post,
    serve_asgi,
    signed_slash_command,
)
from tests.slack_standin import SlackStandin  # noqa: E402

# --- the load process ----------------------------------------------------------------------------


def load(url: str, concurrency: int, text: str, response_url: str) -> list[float]:
    """Send `concurrency` signed commands at once; their latencies in seconds."""
    barrier = threading.Barrier(concurrency)
    latencies: list[float] = [0.0] * concurrency
    failures: list[str] = []

    def one(i: int) -> None:
        request = signed_slash_command(f"{text} epochs={i % 7 + 1}", trigger_id=new_trigger_id(),
                                       response_url=response_url)
        barrier.wait()
        result = post(url, request, timeout=30)
        latencies[i] = result.elapsed_s
        if result.status != 200:
            failures.append(f"{result.status} {result.text[:100]}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {failures[:3]}")
    return latencies


def run_load(url: str, concurrency: int, response_url: str) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--load", url, "--concurrency", str(concurrency),
                          "--response-url", response_url], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"the load process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


# --- part 1: ack latency --------------------------------------------------------------------------


def bare_app(slack: SlackStandin):
    from slack_bolt import App
    from slack_sdk import WebClient

    app = App(client=WebClient(token=slack.bot_token, base_url=slack.base_url), signing_secret=SIGNING_SECRET,
              token_verification_enabled=False)

    @app.command("/tune")
    def tune(ack) -> None:
        ack()

    return app


def stock_asgi(app):
    from slack_bolt.adapter.starlette import SlackRequestHandler
    from starlette.applications import Starlette
    from starlette.routing import Route

    handler = SlackRequestHandler(app)

    async def endpoint(request):
        return await handler.handle(request)

    return Starlette(routes=[Route("/slack/events", endpoint=endpoint, methods=["POST"])])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ack_latency(rounds: int, concurrency: int, data: Path) -> dict[str, Any]:
    from bot.app import build_app
    from bot.serve import asgi_app
    from bot.settings import BotSettings
    from runners.runtime import Runtime
    from runners.settings import Settings
    from tests.delivery_fixtures import quick_client

    results: dict[str, list[float]] = {"bare": [], "bare-threaded": [], "tunebot": []}
    per_round: dict[str, list[float]] = {name: [] for name in results}
    with SlackStandin() as slack:
        runtime = Runtime(Settings(data_dir=data, web_port=0))
        settings = BotSettings(bot_token=slack.bot_token, signing_secret=SIGNING_SECRET,
                               api_url=slack.base_url, allowed_users=frozenset({"*"}))
        tunebot = build_app(settings, runtime, client=quick_client(slack))
        bare = bare_app(slack)
        with serve_asgi(stock_asgi(bare)) as bare_url, serve_asgi(asgi_app(bare)) as threaded_url, \
                serve_asgi(asgi_app(tunebot)) as tunebot_url:
            urls = {"bare": bare_url, "bare-threaded": threaded_url, "tunebot": tunebot_url}
            for round_no in range(rounds + 1):  # round 0 warms up
                for name, base in urls.items():
                    answered = len(slack.responses())
                    latencies = run_load(base + "/slack/events", concurrency, slack.new_response_url())
                    if name == "tunebot":
                        slack.wait_for(lambda a=answered: len(slack.responses()) >= a + concurrency,
                                       timeout=300, what="tunebot's lazy answers")
                    if round_no:
                        results[name].extend(latencies)
                        per_round[name].append(round(1000 * percentile(latencies, 50), 1))
                    time.sleep(0.3)
            jobs = len(runtime.store.list_jobs())
        tunebot.tunebot.close()
        runtime.stop()
    summary = {name: {"n": len(v), "p50_ms": 1000 * percentile(v, 50), "p99_ms": 1000 * percentile(v, 99),
                      "max_ms": 1000 * max(v)} for name, v in results.items()}
    summary["jobs_queued"] = jobs
    summary["p50_ms_by_round"] = per_round
    summary["ratio_p99_vs_bare"] = summary["tunebot"]["p99_ms"] / summary["bare"]["p99_ms"]
    return summary


# --- part 2: trainer_log.jsonl line -> Slack ----------------------------------------------------


_STEP = re.compile(r"step (\d+)/")


def _shown_step(params: dict[str, Any]) -> int | None:
    found = [int(m) for m in _STEP.findall(json.dumps(params.get("blocks") or []))]
    return max(found) if found else None


def log_to_slack(steps: int, step_seconds: float, data: Path) -> dict[str, Any]:
    from dataclasses import replace

    from bot.outbox.delivery import Delivery
    from bot.settings import BotSettings
    from bot.story.notifier import Notifier
    from runners.hardware import Hardware
    from runners.queue import Requester
    from runners.runtime import Runtime
    from runners.settings import Settings
    from runners.worker import wait_for
    from tests.delivery_fixtures import quick_client

    fake = ROOT / "tests" / "fakes" / "llamafactory_cli.py"
    bot_settings = BotSettings.from_env({})
    settings = replace(Settings(data_dir=data, web_port=0), llamafactory_cli=f"{sys.executable} {fake}",
                       job_env={"FAKE_STEPS": str(steps), "FAKE_STEP_SECONDS": str(step_seconds)})
    with SlackStandin() as slack:
        runtime = Runtime(settings, hardware=Hardware(host="bench", gpus=(), cpu_count=os.cpu_count() or 2))
        delivery = Delivery(quick_client(slack), runtime.store, edit_every=bot_settings.status_edit_every)
        notifier = Notifier(runtime, delivery, bot_settings)
        delivery.start()
        notifier.start()
        time.sleep(1.0)  # the notifier starts at the newest event: let it take its place first
        asker = Requester(user="U0BENCH", channel="C0BENCH")
        job = runtime.queue.submit_train(preset="tiny", requester=asker)
        log = Path(job.work_dir) / "output" / "trainer_log.jsonl"
        seen: dict[int, float] = {}
        stop = threading.Event()

        def watch() -> None:
            offset = 0
            while not stop.is_set():
                if log.exists():
                    text = log.read_text()
                    for line in text[offset:].splitlines(keepends=True):
                        if line.endswith("\n"):
                            seen.setdefault(json.loads(line)["current_steps"], time.time())
                            offset += len(line)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        runtime.start(web=False)
        done = wait_for(runtime.store, job.id, ("succeeded", "failed"), timeout=steps * step_seconds + 120)
        time.sleep(bot_settings.status_edit_every + 3)  # the last edit
        stop.set()
        calls = [(c.at, _shown_step(c.params)) for c in slack.calls()
                 if c.method in ("chat.postMessage", "chat.update")]
        events = {e.data["step"]: e.at for e in runtime.store.events_since(0, job_id=job.id)
                  if e.type == "progress"}
        notifier.stop()
        delivery.stop()
        runtime.stop()
    delays, to_event, edits = [], [], [c for c in calls if c[1] is not None]
    for step, at in sorted(seen.items()):
        shown = [t for t, s in edits if s >= step and t >= at]
        if shown:
            delays.append(shown[0] - at)
        if step in events:
            to_event.append(events[step] - at)
    return {"state": done.state, "lines": len(seen), "slack_calls_with_progress": len(edits),
            "median_s": statistics.median(delays), "p90_s": percentile(delays, 90), "max_s": max(delays),
            "line_to_event_median_s": statistics.median(to_event),
            "edit_every_s": bot_settings.status_edit_every, "shown_lines": len(delays)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import slack_bolt
    import uvicorn

    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, slack-bolt "
            f"{slack_bolt.version.__version__}, uvicorn {uvicorn.__version__}, {platform.platform()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--skip", choices=["ack", "log"], help="leave one part out")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--response-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load(args.load, args.concurrency, "train tiny", args.response_url)))
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    out: dict[str, Any] = {"machine": machine()}
    print(out["machine"], flush=True)
    if args.skip != "ack":
        with tempfile.TemporaryDirectory(prefix="tunebot-bench-") as data:
            out["ack"] = ack_latency(args.rounds, args.concurrency, Path(data))
        print(f"\nack latency, {args.rounds} rounds x {args.concurrency} concurrent signed /tune train:")
        print("| server | requests | p50 (ms) | p99 (ms) | max (ms) |\n| --- | ---: | ---: | ---: | ---: |")
        for name in ("bare", "bare-threaded", "tunebot"):
            r = out["ack"][name]
            print(f"| {name} | {r['n']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
        print(f"tunebot p99 / bare p99 = {out['ack']['ratio_p99_vs_bare']:.2f}; "
              f"jobs queued: {out['ack']['jobs_queued']}; p50 by round (ms): "
              f"{out['ack']['p50_ms_by_round']}", flush=True)
    if args.skip != "log":
        with tempfile.TemporaryDirectory(prefix="tunebot-bench-") as data:
            out["log"] = log_to_slack(args.steps, args.step_seconds, Path(data))
        r = out["log"]
        print(f"\ntrainer_log.jsonl line -> Slack call showing it ({r['lines']} lines, one every "
              f"{args.step_seconds}s, edit throttle {r['edit_every_s']}s): median {r['median_s']:.2f}s, "
              f"p90 {r['p90_s']:.2f}s, max {r['max_s']:.2f}s; line -> progress event median "
              f"{r['line_to_event_median_s']:.2f}s; {r['slack_calls_with_progress']} Slack calls", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
