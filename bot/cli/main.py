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

from runners.errors import UserError, shorten
from runners.job import FINAL_STATES, Job, JobState
from runners.kinds import kind_of, submittable
from runners.settings import Settings

from ..parsing import split_words
from . import terminal


def _positive(text: str) -> int:
    """A count on the command line: a whole number from 1 to a million (argparse says it plainly)."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{shorten(text)!r} is not a whole number from 1 to 1000000")
    return int(text)


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

    names = [kind.name for kind in submittable()]
    run = sub.add_parser("run", help=f"run a job ({', '.join(names)})")
    run.add_argument("kind", choices=names)
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
    logs.add_argument("-n", "--lines", type=_positive, default=60)
    logs.add_argument("-f", "--follow", action="store_true")
    compare = sub.add_parser(
        "compare", help="leaderboard of an eval set: every evaluated model by ROUGE-L, with a bar chart"
    )
    compare.add_argument("items", nargs="*", help="[dataset=NAME] [JOB …] (default: the newest eval's set)")
    compare.add_argument("--dataset", help="the eval set (same as dataset=NAME)")
    key = sub.add_parser("key", help="a deployment's API key and chat link again")
    key.add_argument("job")
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    undeploy = sub.add_parser("undeploy", help="stop a deployment")
    undeploy.add_argument("job")
    chat = sub.add_parser("chat", help="send one message to a deployed model")
    chat.add_argument("job")
    chat.add_argument("message")
    chat.add_argument("--max-tokens", type=_positive, default=256)

    dataset = sub.add_parser("dataset", help="register and list datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    add = dsub.add_parser("add", help="register an alpaca or sharegpt JSON/JSONL file")
    add.add_argument("name")
    add.add_argument("file", type=Path)
    dsub.add_parser("list", help="list registered datasets")

    sub.add_parser("worker", help="run queued jobs (no Slack)")
    sub.add_parser(
        "doctor", help="check tokens, database, GPUs, LLaMA-Factory, storage and disk; say how to fix"
    )
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
    from_job = "|".join(re.escape(kind.name) for kind in submittable() if kind.from_job)
    if from_job:
        text = re.sub(rf"`({from_job}) (#?\d+)`", r"`tunebot run \1 \2`", text)
    text = re.sub(r"`(resume|cancel|undeploy) (#?\d+)`", r"`tunebot \1 \2`", text)
    text = text.replace("`jobs`", "`tunebot jobs`").replace("`datasets`", "`tunebot dataset list`")
    text = text.replace("`help train`", "`tunebot run train --help`")
    return text.replace("`help`", "`tunebot --help`")


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:2] == ["run", "train"] and any(item in ("-h", "--help") for item in raw[2:]):
        from ..render.train_help import terminal_train_help

        print(terminal_train_help())  # every preset and key, not just argparse's options
        return 0
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
    except OSError as exc:  # a path the system refused: say which words, not where in tunebot
        where = f" ({shorten(exc.filename)})" if exc.filename else ""
        print(f"tunebot: {exc.strerror or exc}{where}.", file=sys.stderr)
        return 1
    except RecursionError:
        print("tunebot: the input is nested too deeply to read.", file=sys.stderr)
        return 2
    except Exception as exc:
        from runners.recovery.outage import describe_database_error, is_database_error

        if not is_database_error(exc):
            raise
        reason, fix = describe_database_error(exc)  # not SQLAlchemy's traceback and link
        print(f"tunebot: {reason[:1].upper()}{reason[1:]}. Fix: {fix}.", file=sys.stderr)
        return 2


# --- commands ---------------------------------------------------------------------------
def cmd_demo(settings: Settings, args) -> int:
    from .demo import run_demo

    return run_demo(settings, keep=args.keep)


def cmd_run(settings: Settings, args) -> int:
    from runners.runtime import Runtime

    runtime = Runtime(settings)
    kind = kind_of(args.kind)
    positional, pairs = split_words(args.items)
    if len(positional) > 1:
        example = "12" if kind.from_job else kind.example
        raise UserError(
            f"Unexpected words: {' '.join(positional[1:])}.", fix=f"tunebot run {kind.name} {example}"
        )
    first = positional[0] if positional else None
    if kind.from_job:
        if "model" in pairs:  # `model=PATH` as in Slack, same as --model
            if args.model:
                raise UserError("Give the model once: --model PATH or model=PATH.", field="model")
            args.model = pairs.pop("model")
        job = runtime.queue.submit(kind.name, first, model=args.model, pairs=pairs)
    else:
        yaml_text = _read_config(args.config) if args.config and kind.takes_yaml else None
        job = runtime.queue.submit(kind.name, preset=first, pairs=pairs, yaml_text=yaml_text)
    return _follow(runtime, job, detach=args.detach)


def _read_config(path: Path) -> str:
    from runners.inputs.bounded_yaml import MAX_BYTES
    from runners.inputs.files import read_regular_file

    raw = read_regular_file(path, field="--config", max_bytes=MAX_BYTES, what="LLaMA-Factory YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text.", field="--config", fix="save it as UTF-8") from None


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
        # A terminal closed (SIGHUP) or a `kill` (SIGTERM) ends this process as Ctrl-C does: a
        # deployment is undeployed (its chat page lives here), uploads finish, nothing is orphaned.
        _stop_on_signals()
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
                    _undeploy_here(runtime, job.id, since)
            return 0
    except KeyboardInterrupt:
        if in_process and job.kind == "deploy":
            # Its chat page and its watcher are this process: a deployment left behind would hold
            # its GPU with nobody to stop it.
            _undeploy_here(runtime, job.id, since)
        elif in_process:
            print(
                f"\nleaving #{job.id} running in the background; "
                f"`tunebot show {job.id}` / `tunebot cancel {job.id}`"
            )
        return 130
    finally:
        if in_process:
            _finish_uploads(runtime, job.id)
            runtime.stop()
    return 0 if final.state in (JobState.SUCCEEDED.value, JobState.STOPPED.value) else 1


def _stop_on_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def _undeploy_here(runtime, job_id: int, since: int) -> None:
    print(f"\nundeploying #{job_id}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
    try:
        runtime.queue.undeploy(job_id, by="cli")
        terminal.follow(runtime.store, job_id, since=since)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _finish_uploads(runtime, job_id: int) -> None:
    """Wait for this job's artifact upload (a cut-off upload would leave half a model in the store)."""
    if not runtime.worker.uploads_pending():
        return
    print(f"#{job_id} uploading artifacts…")
    since = runtime.store.last_event_id()
    runtime.worker.wait_uploads()
    for event in runtime.store.events_since(since, job_id=job_id):
        text = terminal.describe_event(event.type, event.data)
        if text:
            print(f"#{job_id} {text}")


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


def _settled(settings: Settings, store, job_ref: str, *, stop: bool = False) -> Job:
    """The job, with how it ended recorded when no runner follows it any more."""
    from runners.recovery.unattended import settle

    return settle(settings, store, store.get(job_ref), stop=stop)


def cmd_show(settings: Settings, args) -> int:
    store = _store(settings)
    job = _settled(settings, store, args.job)
    if args.json:
        data = job.model_dump()
        data.pop("api_key", None)
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        from ..use_cases import family_of

        print(terminal.job_details(job, family=family_of(store, job), show_key=True))
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


def cmd_compare(settings: Settings, args) -> int:
    from runners.compare.leaderboard import board_for, draw_chart
    from runners.store import parse_job_id

    from ..render.compare import leaderboard_text

    positional, pairs = split_words(args.items)
    unknown = [k for k in pairs if k != "dataset"]
    if unknown:
        raise UserError(f"`compare` takes dataset=NAME and job ids, not `{unknown[0]}=`.",
                        field=unknown[0], fix="tunebot compare dataset=demo-eval 1 5")
    dataset = args.dataset or pairs.get("dataset")
    named = [parse_job_id(p.lstrip("#")) for p in positional]
    board = board_for(_store(settings), dataset=dataset, only=named or None)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", board.dataset)[:60] or "eval"
    chart = draw_chart(board, settings.cache_dir / "leaderboards" / f"{safe}.png")
    print(leaderboard_text(board, str(chart)))
    return 0


def cmd_key(settings: Settings, args) -> int:
    from runners.deploy import keyed_chat_url
    from runners.queue import JobQueue

    # The terminal is the operator's machine: it may have every deployment's key.
    job = JobQueue(settings, _store(settings)).deployment_key(args.job, by="cli", admin=True)
    print(f"#{job.id} API key (keep it to yourself): {job.api_key}")
    if job.chat_url:
        print(f"  chat page with the key: {keyed_chat_url(job)}")
    if job.url:
        print(f"  API: {job.url}  (header: Authorization: Bearer <key>)")
    return 0


def cmd_logs(settings: Settings, args) -> int:
    from runners.backends.joblog import follow_log, last_lines

    store = _store(settings)
    job = _settled(settings, store, args.job)
    lines = last_lines(job, args.lines)
    if lines is None:
        print(f"#{job.id} has no log yet ({job.state})")
        return 0
    for line in lines:
        print(line)
    if args.follow:
        looked = time.monotonic()

        def done() -> bool:
            nonlocal looked
            if store.get(job.id).state in FINAL_STATES:
                return True
            if time.monotonic() - looked > 5.0:  # no runner may be following it: look ourselves
                looked = time.monotonic()
                _settled(settings, store, str(job.id))
            return False

        for line in follow_log(job, done=done):
            print(line, end="")
    return 0


def _stop_job(settings: Settings, args, action: str) -> int:
    """`cancel` or `undeploy`: ask through the queue, then settle it here if no runner is up."""
    from runners.queue import JobQueue
    from runners.recovery.unattended import settled_state_words

    store = _store(settings)
    job = getattr(JobQueue(settings, store), action)(args.job, by="cli")
    job = _settled(settings, store, str(job.id), stop=True)
    print(f"#{job.id}: {settled_state_words(job)}")
    return 0


def cmd_cancel(settings: Settings, args) -> int:
    return _stop_job(settings, args, "cancel")


def cmd_undeploy(settings: Settings, args) -> int:
    return _stop_job(settings, args, "undeploy")


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


def cmd_doctor(settings: Settings, args) -> int:
    from bot.cli.doctor import run_doctor

    code, report = run_doctor(settings)
    print(report)
    return code


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
    "compare": cmd_compare,
    "key": cmd_key,
    "cancel": cmd_cancel,
    "undeploy": cmd_undeploy,
    "chat": cmd_chat,
    "dataset": cmd_dataset,
    "worker": cmd_worker,
    "serve": cmd_serve,
    "doctor": cmd_doctor,
}


if __name__ == "__main__":
    sys.exit(main())
