"""What a `/tune` command, a button or a thread reply does, apart from Slack's plumbing.

Every entry point takes a parsed command and an `Origin` (who asked, where, and the request's
key) and returns the message to show that person; a refusal or a mistake is a `UserError`
(the listener shows `render_error`). The job's story itself is posted by the notifier from the
engine's event stream, so nothing here posts to a channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from runners import datasets
from runners.errors import UserError
from runners.job import ACTIVE_STATES, Job, JobState
from runners.queue import Requester

from .auth import audit
from .parsing import Command, ThreadCommand
from .render import (
    ACTION_CANCEL,
    ACTION_DEPLOY,
    ACTION_EVAL,
    ACTION_EXPORT,
    ACTION_RESUME,
    ACTION_UNDEPLOY,
    render_help,
    render_job_message,
    render_jobs,
    replies,
)
from .services import Services
from .threads import channel_of, job_of_thread, jobs_in_thread, slack_origin, story_thread

log = logging.getLogger(__name__)

# Commands that spend GPU time (or change what others train on): allowed users only.
SPENDING = ("train", "eval", "export", "deploy", "resume", "dataset add")
# Commands answered with "checking…" first, because the engine validates them (it may take seconds).
CHECKED = ("train", "eval", "export", "deploy", "resume")
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
    """Do what `command` asks for `origin`; returns the reply for that person."""
    name = command.name
    if name in SPENDING:
        services.access.require(origin.user, origin.channel)
    handler = _HANDLERS.get(name)
    if handler is None:
        if name.startswith("schedule"):
            return _schedule(services, command, origin)
        raise UserError(f"`{name}` is not something I can do from here.", fix="/tune help")
    if name in CHECKED:
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


def _train(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
    preset = command.args[0] if command.args else None
    again = origin.seen(services.store)
    job = services.queue.submit_train(preset=preset, pairs=dict(command.pairs), yaml_text=command.yaml,
                                      requester=origin.requester())
    return replies.render_queued(job, position=services.queue.position(job), again=again)


def _on_job(kind: str):
    def submit(services: Services, command: Command, origin: Origin) -> dict[str, Any]:
        pairs = dict(command.pairs)
        model = pairs.pop("model", None)
        channel, thread_ts, thread_of = origin.channel, origin.thread_ts, None
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
        again = origin.seen(services.store)
        submit_fn = {"eval": services.queue.submit_eval, "export": services.queue.submit_export,
                     "deploy": services.queue.submit_deploy}[kind]
        job = submit_fn(command.job, model=model, pairs=pairs,
                        requester=origin.requester(channel=channel, thread_ts=thread_ts))
        return replies.render_queued(job, position=services.queue.position(job), thread_of=thread_of,
                                     again=again)

    return submit


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
        return render_job_message(job, queue_position=services.queue.position(job))
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


_HANDLERS = {
    "train": _train,
    "eval": _on_job("eval"),
    "export": _on_job("export"),
    "deploy": _on_job("deploy"),
    "cancel": _cancel,
    "undeploy": _undeploy,
    "resume": _resume,
    "status": _status,
    "jobs": _jobs,
    "datasets": _datasets,
    "help": _help,
}
