"""What a `/tune` command, a button or a thread reply does, apart from Slack's plumbing.

Every entry point takes a parsed command and an `Origin` (who asked, where, and the request's
key) and returns the message to show that person; a refusal or a mistake is a `UserError`
(the listener shows `render_error`). The job's story itself is posted by the notifier from the
engine's event stream, so nothing here posts to a channel.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from runners import datasets
from runners.deploy import keyed_chat_url, model_name
from runners.errors import UserError, shorten
from runners.job import ACTIVE_STATES, Job, JobState
from runners.kinds import kind_of
from runners.queue import Requester

from .auth import audit
from .parsing import Command, ThreadCommand, command_kinds
from .render import (
    ACTION_CANCEL,
    ACTION_DEPLOY,
    ACTION_EVAL,
    ACTION_EXPORT,
    ACTION_RESUME,
    ACTION_UNDEPLOY,
    link,
    message,
    render_deploy_key,
    render_help,
    render_job_message,
    render_jobs,
    replies,
    section,
)
from .render import escape as render_escape
from .services import Services
from .threads import channel_of, job_of_thread, jobs_in_thread, slack_origin, story_thread

log = logging.getLogger(__name__)

# Commands besides the job kinds' that spend GPU time (or change what others train on): allowed users only.
SPENDING = ("resume", "dataset add")
# Commands that change what tunebot posts to a channel: the same people (admins anywhere).
MANAGING = ("schedule daily", "schedule weekly", "schedule cron", "schedule off")


def is_job_kind(name: str) -> bool:
    """Is the command `name` a kind of job people ask for (runners/kinds/: train, eval, …)?"""
    return any(kind.name == name for kind in command_kinds())


def spends(name: str) -> bool:
    """Does the command spend GPU time: every job kind, `resume`, `dataset add`."""
    return name in SPENDING or is_job_kind(name)


def checked(name: str) -> bool:
    """Is the command answered with "checking…" first (the engine validates it; it may take seconds)?"""
    return name == "resume" or is_job_kind(name)

BUTTON_COMMANDS = {
    ACTION_EVAL: "eval",
    ACTION_EXPORT: "export",
    ACTION_DEPLOY: "deploy",
    ACTION_CANCEL: "cancel",
    ACTION_RESUME: "resume",
    ACTION_UNDEPLOY: "undeploy",
}
JOBS_SHOWN = 20


@dataclass(frozen=True)
class Origin:
    """Who asked, in which channel (and thread: a job asked for there tells its story there), and
    the key that makes a redelivery a no-op."""

    user: str
    channel: str
    thread_ts: str = ""
    request_key: str | None = None

    def requester(self, *, channel: str | None = None, thread_ts: str | None = None) -> Requester:
        """Where the job's story goes: where it was asked (a thread's, if asked in one) unless told."""
        where = slack_origin(self.channel if channel is None else channel,
                             self.thread_ts if thread_ts is None else thread_ts)
        return Requester(user=self.user, origin=where, request_key=self.request_key)

    def seen(self, store: Any) -> bool:
        """Did this very request (a redelivery) already make a job?"""
        return bool(self.request_key) and store.find_by_request(self.request_key) is not None


def answer_command(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    """Do what `command` asks for `origin`; returns the reply for that person.

    A refused request that would spend GPU time or change a channel's digests leaves an audit row
    (`refused`, with the reason), whether it was refused for who asked or for what was asked.
    """
    try:
        return _answer(services, command, origin)
    except UserError as err:
        if spends(command.name) or command.name in MANAGING:
            audit(services.store, origin.user, "refused", None, what=command.name, channel=origin.channel,
                  reason=shorten(err.message, 200))
        raise


def _answer(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    name = command.name
    if spends(name):
        services.access.require(origin.user, origin.channel)
    elif name in MANAGING:
        services.access.require(origin.user, origin.channel, "manage this channel's digests")
    handler = _submit if is_job_kind(name) else _HANDLERS.get(name)
    if handler is None:
        if name.startswith("schedule"):
            return _schedule(services, command, origin)
        raise UserError(f"`{name}` is not something I can do from here.", fix="/tune help")
    if checked(name):
        with services.engine_slots:
            return handler(services, command, origin)
    return handler(services, command, origin)


def answer_thread_command(services: Services, root: Job, reply: ThreadCommand,
                          origin: Origin) -> dict[str, Any]:
    """A reply in a job's thread (`status`, `eval dataset=x`, …) acts on that thread's job."""
    if reply.name == "help":
        return render_help(services.access.summary(origin.user, origin.channel), None)
    target = root
    if reply.name == "cancel" and root.is_final:
        # The model's thread may hold a running eval or export: that is what "cancel" means then.
        thread = story_thread(services.store, root)
        active = [j for j in jobs_in_thread(services.store, channel_of(root), thread)
                  if not j.is_final and j.kind != "deploy"]
        if active:
            target = active[-1]
    return answer_command(services, Command(reply.name, [str(target.id)], dict(reply.pairs)), origin)


# --- the commands ----------------------------------------------------------------------------


def _submit(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    """A job of the kind the command names (`train tiny`, `eval 12`), built by its declaration."""
    kind = kind_of(command.name)
    pairs = dict(command.pairs)
    model, preset = None, None
    channel, thread_ts, thread_of = origin.channel, origin.thread_ts, None
    if kind.from_job:
        model = pairs.pop("model", None)
        if command.job is not None:
            source = services.queue.get(command.job)
            source_channel = channel_of(source)
            if source_channel and source_channel != origin.channel:
                _require_story_channel(services, source, origin)
            if source_channel and story_thread(services.store, source):
                # Into the source job's thread: one thread tells the model's whole story.
                channel, thread_ts = source_channel, story_thread(services.store, source)
                root = job_of_thread(services.store, channel, thread_ts)
                thread_of = root.id if root is not None else source.id
    else:
        preset = command.args[0] if command.args else None
    again = origin.seen(services.store)
    job = services.queue.submit(kind.name, command.job if kind.from_job else None, model=model, preset=preset,
                                pairs=pairs, yaml_text=command.yaml,
                                requester=origin.requester(channel=channel, thread_ts=thread_ts))
    return replies.render_queued(job, position=services.queue.position(job), thread_of=thread_of, again=again)


def _require_story_channel(services: Services, source: Job, origin: Origin) -> None:
    """The new job posts in the source job's channel: the person must be allowed to start jobs there too."""
    if not services.access.may_spend(origin.user, channel_of(source)):
        raise UserError(
            f"#{source.id} tells its story in another channel ({channel_of(source)}), and you may not start "
            "jobs there; a job of it would report there too.",
            field="user",
            fix=f"ask in #{source.id}'s thread, or ask an admin to run it",
        )


def _cancel(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    job = services.queue.cancel(command.job, by=origin.user, admin=services.access.is_admin(origin.user))
    return replies.render_cancel(job)


def _undeploy(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    job = services.queue.undeploy(command.job, by=origin.user, admin=services.access.is_admin(origin.user))
    return replies.render_cancel(job)


def _resume(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    job = services.queue.resume(command.job, by=origin.user, admin=services.access.is_admin(origin.user),
                                request_key=origin.request_key)
    return replies.render_resumed(job)


def _status(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    if command.job is not None:
        job = services.queue.get(command.job)
        answer = render_job_message(job, queue_position=services.queue.position(job))
        return with_family(services, job, answer, origin)
    jobs = services.queue.jobs(states=[*ACTIVE_STATES, JobState.QUEUED.value], newest_first=False)
    if not jobs:
        return replies.render_text("Nothing is running or queued. `/tune jobs` lists the recent jobs.")
    return render_jobs(jobs, title="Running and queued")


def _jobs(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    everything = bool(command.args) and command.args[0].lower() == "all"
    if command.args and not everything:
        raise UserError(f"`jobs {command.args[0]}`: I only know `jobs` and `jobs all`.", fix="/tune jobs all")
    jobs = services.queue.jobs(limit=None if everything else JOBS_SHOWN)
    title = "All jobs" if everything else f"The last {JOBS_SHOWN} jobs" if len(jobs) == JOBS_SHOWN else "Jobs"
    return render_jobs(jobs, title=title)


def _datasets(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    return replies.render_datasets(datasets.list_datasets(services.runtime.settings.data_dir))


def _help(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    topic = " ".join(command.args) if command.args else None
    return render_help(services.access.summary(origin.user, origin.channel), topic)


def _schedule(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    from .schedules.command import handle_schedule_command  # APScheduler loads only when schedules are used

    audit(services.store, origin.user, command.name, None, channel=origin.channel)
    return handle_schedule_command(command, user=origin.user, channel=origin.channel,
                                   runtime=services.runtime, client=services.client)


MAX_FAMILY = 30


def family_of(store: Any, job: Job) -> list[Job]:
    """Jobs made from `job`, then from those (an export's deployments), oldest first."""
    found: list[Job] = []
    frontier = [job.id]
    seen = {job.id}
    while frontier and len(found) < MAX_FAMILY:
        parent = frontier.pop(0)
        for child in store.list_jobs(parent_id=parent, newest_first=False):
            if child.id not in seen:
                seen.add(child.id)
                found.append(child)
                frontier.append(child.id)
    return sorted(found, key=lambda j: j.id or 0)[:MAX_FAMILY]


def with_family(services: Services, job: Job, answer: dict[str, Any], origin: Origin) -> dict[str, Any]:
    """A job's status with its family (evals, exports, deployments) and, for whoever may have it,
    the chat link with the deployment's key (the answer is ephemeral)."""
    from .render.family import render_family

    blocks = list(answer["blocks"])
    family = family_of(services.store, job)
    extra = render_family(family)
    deployment = job if job.kind == "deploy" else next(
        (j for j in family if j.kind == "deploy" and j.state == JobState.SERVING.value), None)
    if deployment is not None and deployment.state == JobState.SERVING.value and deployment.api_key \
            and deployment.chat_url and _may_see_key(services, deployment, origin):
        extra.append(section(f":key: Chat page with your key (only you see this): "
                             f"{link(keyed_chat_url(deployment), 'open the chat')}"))
    return message(answer["text"], blocks[:2] + extra + blocks[2:], escaped=True)


def _may_see_key(services: Services, job: Job, origin: Origin) -> bool:
    return services.access.is_admin(origin.user) or (bool(job.user) and job.user == origin.user)


def _key(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    job = services.queue.deployment_key(command.job, by=origin.user,
                                        admin=services.access.is_admin(origin.user))
    return render_deploy_key(job, job.api_key or "", model_name=model_name(job))


def _compare(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    from runners.compare.leaderboard import board_for, draw_chart

    from .render.compare import render_leaderboard

    named = [int(a) for a in command.args]
    board = board_for(services.store, dataset=command.pairs.get("dataset"), only=named or None)
    target = services.queue.get(named[0]) if named else None
    where = channel_of(target) if target is not None else ""
    thread = story_thread(services.store, target) if target is not None else ""
    if target is None or where != origin.channel or not thread:
        return render_leaderboard(board)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{board.dataset}-{origin.request_key or int(time.time())}")
    chart = draw_chart(board, services.runtime.settings.cache_dir / "leaderboards" / f"{name[:80]}.png")
    posted = render_leaderboard(board, chart_in_thread=True)
    services.post(where, text=posted["text"], blocks=posted["blocks"], thread_ts=thread)
    title = f"ROUGE-L on {board.dataset}"
    if services.delivery is not None:
        services.delivery.upload(where, thread, path=chart, filename=chart.name, title=title)
    else:
        services.client.files_upload_v2(channel=where, thread_ts=thread, file=str(chart),
                                        filename=chart.name, title=title)
    return replies.render_text(f":bar_chart: The leaderboard of `{render_escape(board.dataset)}` "
                               f"is in #{target.id}'s thread.")


# The job kinds' commands go to `_submit` (answer_command asks the kinds' registry).
_HANDLERS = {
    "cancel": _cancel,
    "undeploy": _undeploy,
    "resume": _resume,
    "status": _status,
    "jobs": _jobs,
    "datasets": _datasets,
    "help": _help,
    "compare": _compare,
    "key": _key,
}
