"""The `tunebot` command line: the engine from a terminal, the demo, and the servers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from runners.errors import UserError
from runners.job import FINAL_STATES, Job, JobState
from runners.settings import Settings

from ..parsing import split_words
from . import terminal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunebot",
        description="Fine-tune, evaluate, export and deploy LLMs "
        "with LLaMA-Factory, from Slack or this command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="train -> eval -> export -> deploy -> chat a tiny model on this machine"
    )
    demo.add_argument("--keep", action="store_true", help="leave the deployment serving at the end")

    run = sub.add_parser("run", help="run a job (train, eval, export, deploy)")
    run.add_argument("kind", choices=["train", "eval", "export", "deploy"])
    run.add_argument(
        "items", nargs="*", help="train: [preset] [key=value ...]; others: [JOB] [key=value ...]"
    )
    run.add_argument("--config", type=Path, help="a LLaMA-Factory YAML as the job spec (train)")
    run.add_argument("--model", help="eval/export/deploy a model folder instead of a job")
    run.add_argument(
        "--detach",
        action="store_true",
        help="queue it and return (a running `tunebot worker` or `tunebot serve` picks it up)",
    )

    resume = sub.add_parser("resume", help="continue an interrupted, failed or cancelled train job")
    resume.add_argument("job")
    resume.add_argument("--detach", action="store_true")

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--all", action="store_true", help="every job, not the last 20")
    show = sub.add_parser("show", aliases=["status"], help="a job's details, metrics and artifacts")
    show.add_argument("job")
    show.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="a job's log")
    logs.add_argument("job")
    logs.add_argument("-n", "--lines", type=int, default=60)
    logs.add_argument("-f", "--follow", action="store_true")
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    undeploy = sub.add_parser("undeploy", help="stop a deployment")
    undeploy.add_argument("job")
    chat = sub.add_parser("chat", help="send one message to a deployed model")
    chat.add_argument("job")
    chat.add_argument("message")
    chat.add_argument("--max-tokens", type=int, default=256)

    dataset = sub.add_parser("dataset", help="register and list datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    add = dsub.add_parser("add", help="register an alpaca or sharegpt JSON/JSONL file")
    add.add_argument("name")
    add.add_argument("file", type=Path)
    dsub.add_parser("list", help="list registered datasets")

    sub.add_parser("worker", help="run queued jobs (no Slack)")
    serve = sub.add_parser(
        "serve", help="the Slack bot (Socket Mode unless --http) with the runner in-process"
    )
    serve.add_argument(
        "--http", action="store_true", help="serve /slack/events over HTTP instead of Socket Mode"
    )
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument(
        "--no-runner", action="store_true", help="front end only; a `tunebot worker` runs jobs"
    )
    return parser


def for_terminal(text: str) -> str:
    """The engine's hints name Slack commands (`status 12`); at a terminal they are tunebot's."""
    text = re.sub(r"`status (#?\d+)`", r"`tunebot show \1`", text)
    text = re.sub(r"`(eval|export|deploy) (#?\d+)`", r"`tunebot run \1 \2`", text)
    text = re.sub(r"`(resume|cancel|undeploy) (#?\d+)`", r"`tunebot \1 \2`", text)
    text = text.replace("`jobs`", "`tunebot jobs`").replace("`datasets`", "`tunebot dataset list`")
    return text.replace("`help`", "`tunebot --help`")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Options may come anywhere among `run`'s items (`run train --detach tiny lr=1e-3`): argparse
    # stops collecting them at the first option, so the rest arrive here.
    if args.command == "run" and not any(item.startswith("-") for item in extra):
        args.items = [*args.items, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        settings = Settings.from_env()
        logging.basicConfig(
            level=getattr(logging, settings.log_level, logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
        return COMMANDS[args.command](settings, args)
    except UserError as exc:
        print(f"tunebot: {for_terminal(exc.text())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tunebot jobs | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --- commands ---------------------------------------------------------------------------
def cmd_demo(settings: Settings, args) -> int:
    from .demo import run_demo

    return run_demo(settings, keep=args.keep)


def cmd_run(settings: Settings, args) -> int:
    from runners.runtime import Runtime

    runtime = Runtime(settings)
    positional, pairs = split_words(args.items)
    if args.kind == "train":
        if len(positional) > 1:
            raise UserError(
                f"Unexpected words: {' '.join(positional[1:])}.", fix="tunebot run train seed lr=1e-4"
            )
        yaml_text = _read_config(args.config) if args.config else None
        job = runtime.queue.submit_train(
            preset=positional[0] if positional else None, pairs=pairs, yaml_text=yaml_text
        )
    else:
        if len(positional) > 1:
            raise UserError(
                f"Unexpected words: {' '.join(positional[1:])}.", fix=f"tunebot run {args.kind} 12"
            )
        source = positional[0] if positional else None
        if "model" in pairs:  # `model=PATH` as in Slack, same as --model
            if args.model:
                raise UserError("Give the model once: --model PATH or model=PATH.", field="model")
            args.model = pairs.pop("model")
        submit = {
            "eval": runtime.queue.submit_eval,
            "export": runtime.queue.submit_export,
            "deploy": runtime.queue.submit_deploy,
        }[args.kind]
        job = submit(source, model=args.model, pairs=pairs)
    return _follow(runtime, job, detach=args.detach)


def _read_config(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror}.", field="--config") from None


def cmd_resume(settings: Settings, args) -> int:
    from runners.runtime import Runtime

    runtime = Runtime(settings)
    since = runtime.store.last_event_id()  # print the new attempt, not the old one again
    job = runtime.queue.resume(args.job, by="cli")
    return _follow(runtime, job, detach=args.detach, since=since)


def _follow(runtime, job: Job, *, detach: bool, since: int = 0) -> int:
    """Print the job's story until it ends; run it in this process unless a runner is up."""
    print(terminal.job_line(job))
    if detach:
        print(f"queued as #{job.id}; `tunebot show {job.id}` for its state")
        return 0
    others = [r for r in runtime.store.live_runners() if r.id != runtime.worker.runner_id]
    in_process = not others
    if in_process:
        runtime.worker.only_job = job.id
        runtime.start(web=job.kind == "deploy")
    else:
        print(f"a runner is up ({others[0].id}); following #{job.id}")
    try:
        final, since = terminal.follow(
            runtime.store, job.id, stop_at_serving=job.kind == "deploy", since=since
        )
        if final.state == JobState.SERVING.value:
            terminal.print_deployment(final)
            if in_process:
                print("serving; Ctrl-C undeploys")
                try:
                    final, since = terminal.follow(runtime.store, job.id, since=since)
                except KeyboardInterrupt:
                    runtime.queue.undeploy(job.id, by="cli")
                    final, since = terminal.follow(runtime.store, job.id, since=since)
            return 0
    except KeyboardInterrupt:
        if in_process:
            print(
                f"\nleaving #{job.id} running in the background; "
                f"`tunebot show {job.id}` / `tunebot cancel {job.id}`"
            )
        return 130
    finally:
        if in_process:
            runtime.stop()
    return 0 if final.state in (JobState.SUCCEEDED.value, JobState.STOPPED.value) else 1


def cmd_jobs(settings: Settings, args) -> int:
    from runners.store import Store

    store = Store(settings.db_url)
    store.migrate()
    jobs = store.list_jobs(limit=None if args.all else 20)
    if not jobs:
        print("no jobs yet: `tunebot run train tiny` trains a tiny model on this machine")
    for job in jobs:
        print(terminal.job_line(job))
    return 0


def _store(settings: Settings):
    from runners.store import Store

    store = Store(settings.db_url)
    store.migrate()
    return store


def cmd_show(settings: Settings, args) -> int:
    job = _store(settings).get(args.job)
    if args.json:
        data = job.model_dump()
        data.pop("api_key", None)
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        print(terminal.job_details(job))
        remote = job.artifacts.get("remote") or {}
        if remote and settings.storage is not None and settings.storage.backend != "local":
            from runners.artifacts import describe, open_storage

            storage = open_storage(settings.storage, settings.data_dir)
            for name, record in remote.items():
                try:
                    info = describe(storage, record)
                except UserError as exc:
                    print(f"  {name}: {record.get('location')} ({exc.message})")
                    continue
                expires = (
                    f", link valid until {info['link_expires_at']}" if info.get("link_expires_at") else ""
                )
                print(f"  {name}: {info['location']} ({info['size_text']}{expires})\n    {info['link']}")
        for name, error in (job.artifacts.get("remote_errors") or {}).items():
            print(f"  {name}: not uploaded: {error}")
    return 0


def cmd_logs(settings: Settings, args) -> int:
    store = _store(settings)
    job = store.get(args.job)
    path = Path(job.log_path)
    if not path.exists():
        print(f"#{job.id} has no log yet ({job.state})")
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines[-args.lines :]:
        print(line)
    if args.follow:
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(0, os.SEEK_END)
            while True:
                line = fh.readline()
                if line:
                    print(line, end="")
                    continue
                if store.get(job.id).state in FINAL_STATES:
                    return 0
                time.sleep(0.5)
    return 0


def cmd_cancel(settings: Settings, args) -> int:
    from runners.queue import JobQueue

    queue = JobQueue(settings, _store(settings))
    job = queue.cancel(args.job, by="cli")
    print(f"#{job.id}: {'cancelled' if job.is_final else 'cancel requested; the runner stops it'}")
    return 0


def cmd_undeploy(settings: Settings, args) -> int:
    from runners.queue import JobQueue

    queue = JobQueue(settings, _store(settings))
    job = queue.undeploy(args.job, by="cli")
    print(f"#{job.id}: stopping")
    return 0


def cmd_chat(settings: Settings, args) -> int:
    from runners.runtime import Runtime

    runtime = Runtime(settings)
    answer = runtime.chat(args.job, [{"role": "user", "content": args.message}], max_tokens=args.max_tokens)
    print(answer if answer.strip() else "(the model answered with nothing)")
    return 0


def cmd_dataset(settings: Settings, args) -> int:
    from runners import datasets

    if args.dataset_command == "add":
        info = datasets.add_dataset(settings.data_dir, args.name, args.file)
        print(terminal.dataset_added(info))
        return 0
    infos = datasets.list_datasets(settings.data_dir)
    if not infos:
        print("no datasets yet: `tunebot dataset add NAME FILE`")
    for info in infos:
        print(terminal.dataset_line(info))
    return 0


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def cmd_worker(settings: Settings, args) -> int:
    from runners.runtime import Runtime

    runtime = Runtime(settings).start()
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop is Ctrl-C: clean, jobs go on
    print(
        f"runner {runtime.worker.runner_id}: slots {', '.join(runtime.worker.slots)}; Ctrl-C stops "
        "(running jobs keep running and are re-attached next time)"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        runtime.stop()
    return 0


def cmd_serve(settings: Settings, args) -> int:
    from ..serve import serve

    return serve(settings, http=args.http, host=args.host, port=args.port, runner=not args.no_runner)


COMMANDS: dict[str, Any] = {
    "demo": cmd_demo,
    "run": cmd_run,
    "resume": cmd_resume,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "status": cmd_show,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "undeploy": cmd_undeploy,
    "chat": cmd_chat,
    "dataset": cmd_dataset,
    "worker": cmd_worker,
    "serve": cmd_serve,
}


if __name__ == "__main__":
    sys.exit(main())
