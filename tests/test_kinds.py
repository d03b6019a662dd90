"""A job kind is declared once: a module in runners/kinds/ and its view in bot/render/kinds/, and
nothing else. Here a made-up `quantize` is written as those two files (into a folder of the test's
own, added to the two packages' search path, so the source tree is not touched), found by the same
discovery as the built-in kinds, asked for from Slack (`/tune quantize …`, signed HTTP) and from
the terminal (`tunebot run quantize …`), run by the worker and its result posted in the thread."""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import bot.render.kinds as render_kinds
import runners.kinds as kinds
from bot.cli.main import main
from bot.parsing import SUBCOMMANDS, parse_thread_reply
from bot.threads import root_ts
from runners.hardware import Hardware
from runners.job import Job
from runners.kinds import kind_of, submittable
from runners.settings import Settings
from runners.store import Store
from runners.worker import Worker, wait_for

CPU = Hardware(host="testhost", gpus=(), cpu_count=2)
FINAL = ("succeeded", "failed", "cancelled", "interrupted", "stopped")

# The two files a developer adds for a new kind, verbatim.
KIND_MODULE = '''
"""Quantize: a model (a job's, or model=PATH) to fewer bits. Made up by tests/test_kinds.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import UserError, shorten
from ..job import Job
from ..llamafactory.recipes import Recipe
from .base import Intake, Kind, MissingOutput, Request, register

SCRIPT = """
import pathlib, sys, yaml
args = yaml.safe_load(open(sys.argv[1]))
out = pathlib.Path("output"); out.mkdir(exist_ok=True)
if args.get("bits") != 3:
    (out / "model.q4").write_bytes(b"q" * int(args["bits"]))
print("quantized to", args["bits"], "bits")
"""


def recipe(request: Request, intake: Intake) -> Recipe:
    source = intake.source(request, QUANTIZE)
    pairs = dict(request.pairs)
    bits = pairs.pop("bits", "4")
    if pairs:
        raise UserError(f"quantize takes bits=N, not `{shorten(next(iter(pairs)))}=`.", field="bits",
                        fix="bits=4")
    if not (bits.isascii() and bits.isdigit()) or not 2 <= int(bits) <= 8:
        raise UserError(f"bits={shorten(bits)} is not a bit width from 2 to 8.", field="bits", fix="bits=4")
    args: dict[str, Any] = {"model_name_or_path": source.model, "bits": int(bits)}
    if source.adapter:
        args["adapter_name_or_path"] = source.adapter
    return Recipe(kind="quantize", args=args, model=source.model, parent_id=source.parent_id,
                  spec={"pairs": dict(request.pairs)})


def argv(job: Job, config: Path, settings) -> list[str]:
    return [sys.executable, "-c", SCRIPT, str(config)]


def collect(job: Job, folder: Path) -> dict[str, Any]:
    model = folder / "output" / "model.q4"
    if not model.exists():
        raise MissingOutput("The quantization ended without a model.")
    return {"artifacts": {"model": str(model)}, "metrics": {"size_bytes": model.stat().st_size}}


QUANTIZE = register(Kind("quantize", argv=argv, collect=collect, recipe=recipe, from_job=True,
                         usage="JOB [bits=4]", summary="Shrink a model to fewer bits", example="12 bits=4",
                         llamafactory_args=False))
'''
VIEW_MODULE = '''
"""How a quantize job looks. Made up by tests/test_kinds.py."""

from __future__ import annotations

from typing import Any

from runners.job import Job

from ..blocks import escape, mention, message, section
from ..job import kind_label
from . import KindView, register_view


def render_quantized(job: Job, metrics: dict[str, Any], artifacts: dict[str, Any]) -> dict[str, Any]:
    of = f" of #{job.parent_id}" if job.parent_id else ""
    text = (f":compression: {mention(job.user)} *{kind_label(job)}{of} is ready:* "
            f"{escape(str(job.args.get('bits')))} bits, {metrics.get('size_bytes')} bytes")
    return message(text, [section(text)], escaped=True)


VIEW = register_view(KindView("quantize", emoji=":compression:", help_group="Results",
                              result=render_quantized))
'''
ADDED = {Path("runners/kinds/quantize.py"), Path("bot/render/kinds/quantize.py")}


@pytest.fixture
def quantize(tmp_path: Path) -> Iterator:
    """The two files written into a tree of their own and found by the packages' discovery."""
    root = tmp_path / "added"
    for rel, text in ((Path("runners/kinds/quantize.py"), KIND_MODULE),
                      (Path("bot/render/kinds/quantize.py"), VIEW_MODULE)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    extra = [(kinds, str(root / "runners/kinds")), (render_kinds, str(root / "bot/render/kinds"))]
    for package, folder in extra:
        package.__path__.append(folder)
    try:
        assert "quantize" in kinds.discover() and "quantize" in render_kinds.discover()
        # What declared the kind: exactly the two files, nothing else in the tree was edited.
        assert {p.relative_to(root) for p in root.rglob("*.py")} == ADDED
        declared = kind_of("quantize")
        assert Path(inspect.getsourcefile(declared.recipe)) == root / "runners/kinds/quantize.py"
        view = render_kinds.view_of("quantize")
        assert Path(inspect.getsourcefile(view.result)) == root / "bot/render/kinds/quantize.py"
        yield declared
    finally:
        kinds.unregister("quantize")
        render_kinds.unregister_view("quantize")
        for package, folder in extra:
            package.__path__.remove(folder)
        sys.modules.pop("runners.kinds.quantize", None)
        sys.modules.pop("bot.render.kinds.quantize", None)


@pytest.mark.parametrize(("bits", "state"), [(4, "succeeded"), (3, "failed")])
def test_a_kind_registered_in_kinds_runs_through_the_worker(settings, store, quantize, bits, state, tmp_path):
    assert kind_of("quantize") is quantize
    work = tmp_path / "job"
    job, _ = store.add_job(Job(kind="quantize", model="m", args={"bits": bits}, work_dir=str(work),
                               log_path=str(work / "job.log")))
    worker = Worker(settings, store, hardware=CPU)
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == state, done.error
    if state == "succeeded":
        assert done.metrics == {"size_bytes": 4} and done.artifacts["model"].endswith("model.q4")
        kinds_seen = [e.type for e in store.events_since(0, job_id=job.id)]
        assert kinds_seen == ["state", "state", "started", "state", "result"]
    else:
        assert done.error == "The quantization ended without a model."


def test_a_job_of_a_kind_this_runner_does_not_know_waits_without_blocking_it(
    settings, store, quantize, tmp_path
):
    """A front end may know a kind a runner's code does not have yet: the runner leaves that job
    for another runner (it keeps no slot for it) and runs the jobs behind it."""
    work = tmp_path / "job"
    alien, _ = store.add_job(Job(kind="distill", model="m", args={}, work_dir=str(tmp_path / "alien")))
    job, _ = store.add_job(Job(kind="quantize", model="m", args={"bits": 4}, work_dir=str(work),
                               log_path=str(work / "job.log")))
    worker = Worker(settings, store, hardware=CPU)
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
        assert done.state == "succeeded", done.error
        assert store.get(alien.id).state == "queued"
        assert alien.id not in store.leased_slots(worker.host).values()
    finally:
        worker.stop()


@pytest.mark.parametrize(("name", "means"), [
    ("status", "status"), ("ls", "jobs"), ("schedules", "schedule list"), ("dataset", None), ("help", "help"),
])
def test_a_kind_named_like_a_command_alias_or_group_does_not_take_its_word(name, means):
    from bot.parsing import command_kinds, parse_command, thread_commands
    from bot.use_cases import is_job_kind
    from runners.errors import UserError
    from runners.kinds import Kind, register, unregister
    from runners.kinds.base import collect_nothing

    register(Kind(name, argv=lambda job, config, settings: ["true"], collect=collect_nothing,
                  recipe=lambda request, intake: None, from_job=True))
    try:
        assert name not in [k.name for k in command_kinds()] and not is_job_kind(name)
        assert name not in thread_commands() or name == "status"  # `status` is a thread verb itself
        if means is None:  # a group word: it still asks for its second word
            with pytest.raises(UserError, match="dataset add"):
                parse_command(name)
        else:
            assert parse_command(name).name == means
    finally:
        unregister(name)


def test_an_unknown_kind_is_a_plain_error():
    with pytest.raises(Exception, match="does not know jobs of kind 'nope'"):
        kind_of("nope")


def test_a_finished_jobs_outputs_are_read_where_its_backend_hands_them_over(
    settings, store, quantize, tmp_path
):
    """The worker collects from the backend's `outputs` folder, not from the job folder itself (a
    remote backend copies what the job wrote to the runner first)."""
    import shutil

    from runners.backends import LocalBackend

    fetched = tmp_path / "fetched"

    class CopyingBackend(LocalBackend):
        def outputs(self, handle, work_dir):
            shutil.copytree(work_dir / "output", fetched / "output", dirs_exist_ok=True)
            return fetched

    work = tmp_path / "job"
    job, _ = store.add_job(Job(kind="quantize", model="m", args={"bits": 4}, work_dir=str(work),
                               log_path=str(work / "job.log")))
    worker = Worker(settings, store, hardware=CPU, backend=CopyingBackend(["cpu0"]))
    worker.start()
    try:
        done = wait_for(store, job.id, FINAL, timeout=30)
    finally:
        worker.stop()
    assert done.state == "succeeded", done.error
    assert done.artifacts["model"] == str(fetched / "output" / "model.q4")


def test_the_built_in_kinds_are_found_without_an_import_line_each():
    assert [k.name for k in submittable()] == ["train", "eval", "export", "deploy"]
    init = Path(kinds.__file__).read_text(encoding="utf-8")
    assert not any(f"import {name}" in init or f" {name}," in init for name in ("train", "eval", "export"))


def test_a_new_kind_is_a_command_with_its_help_and_a_thread_reply(quantize):
    assert SUBCOMMANDS["quantize"].usage == "quantize JOB [bits=4]"
    reply = parse_thread_reply("quantize bits=8")
    assert reply is not None and reply.name == "quantize" and reply.pairs == {"bits": "8"}
    from bot.render.help import render_help

    helped = str(render_help("everyone")["blocks"])
    assert "/tune quantize JOB [bits=4]" in helped and "Shrink a model to fewer bits" in helped


# --- asked for by a person ---------------------------------------------------------------------


@pytest.fixture
def sqlite_settings(tmp_path, shared_models) -> Settings:
    from tests.slack_fixtures import fake_cli_settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    return fake_cli_settings(Settings(data_dir=data, database_url=f"sqlite:///{tmp_path / 'tunebot.db'}",
                                      poll_interval=0.2, cancel_grace=5.0, web_port=0))


@pytest.fixture
def slack_story(sqlite_settings, quantize):
    """The real app over signed HTTP, the runner, the notifier and the outbox, on the Slack stand-in."""
    from bot.settings import BotSettings
    from runners.runtime import Runtime
    from tests.slack_fixtures import ADMIN_ID, OTHER_USER_ID, start_story
    from tests.slack_signing import HUMAN_USER_ID, SIGNING_SECRET
    from tests.slack_standin import SlackStandin

    with SlackStandin() as slack:
        bot_settings = BotSettings(bot_token=slack.bot_token, signing_secret=SIGNING_SECRET,
                                   app_token=slack.app_token, api_url=slack.base_url,
                                   allowed_users=frozenset({HUMAN_USER_ID, OTHER_USER_ID}),
                                   admins=frozenset({ADMIN_ID}), status_edit_every=0.5)
        runtime = Runtime(sqlite_settings, hardware=CPU)
        try:
            yield from start_story(slack, bot_settings, runtime)
        finally:
            runtime.store.engine.dispose()


def test_slash_tune_quantize_runs_the_new_kind_and_posts_its_result_in_the_thread(slack_story):
    from tests.slack_fixtures import ack_json, texts, wait_job
    from tests.slack_signing import CHANNEL_ID, HUMAN_USER_ID

    bot = slack_story
    store = bot.runtime.store
    helped = ack_json(bot.command("help"))
    assert "/tune quantize JOB [bits=4]" in str(helped["blocks"])

    assert bot.command("train tiny").status == 200
    assert "Train #1" in bot.wait_response(1)["text"]
    train = wait_job(bot.runtime, 1)
    assert train.state == "succeeded", train.error
    thread = bot.slack.wait_for(lambda: root_ts(store, store.get(1)), timeout=30, what="#1's root message")

    ack = bot.command("quantize 1 bits=4")
    assert ack.status == 200 and "Checking" in ack_json(ack)["text"]
    answer = bot.wait_response(2)["text"]
    assert "Quantize #2 of #1 (tiny-llama3) is queued" in answer and "It reports in #1's thread" in answer
    done = wait_job(bot.runtime, 2)
    assert done.state == "succeeded", done.error
    assert done.kind == "quantize" and done.parent_id == 1 and done.user == HUMAN_USER_ID
    assert done.args["bits"] == 4 and done.args["adapter_name_or_path"] == train.artifacts["adapter"]

    def result_post():
        posts = [texts(m) for m in bot.slack.thread(CHANNEL_ID, thread)]
        return next((p for p in posts if "Quantize #2 of #1 is ready" in p), None)

    posted = bot.slack.wait_for(result_post, timeout=30, what="the quantize result in #1's thread")
    assert f"<@{HUMAN_USER_ID}>" in posted and "4 bits, 4 bytes" in posted

    # A mistake in what the kind takes is the kind's own plain message, and queues nothing.
    bot.command("quantize 1 bits=64")
    refused = bot.wait_response(3)["text"]
    assert "bits=64 is not a bit width from 2 to 8" in refused and "Traceback" not in refused
    assert [j.id for j in store.list_jobs()] == [2, 1]


def test_tunebot_run_quantize_runs_it_and_prints_its_result(quantize, tmp_path, shared_models, monkeypatch,
                                                            capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("TUNEBOT_DATABASE_URL", "TUNEBOT_LOG_LEVEL", "TUNEBOT_CANCEL_GRACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNEBOT_DATA_DIR", str(data))
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    model = "tiny"  # the demo's tiny model, under the data dir's models/

    assert main(["run", "quantize", f"model={model}", "bits=64"]) == 2
    assert "bits=64 is not a bit width from 2 to 8" in capsys.readouterr().err
    assert main(["run", "quantize", "bits=4"]) == 2
    assert "What should I quantize?" in capsys.readouterr().err

    assert main(["run", "quantize", f"model={model}", "bits=5"]) == 0
    out = capsys.readouterr().out
    assert "Quantize #1 is ready:* 5 bits, 5 bytes" not in out  # terminal text, not Slack's mrkdwn
    assert "Quantize #1 is ready: 5 bits, 5 bytes" in out and "succeeded" in out
    [job] = Store(f"sqlite:///{data / 'tunebot.db'}").list_jobs()
    assert job.kind == "quantize" and job.state == "succeeded" and job.args["bits"] == 5
