"""`/tune schedule daily|weekly|cron|list|off …`: checks, the scheduler's change, and the answer.
"""

from __future__ import annotations

import re
from typing import Any

from bot.channels import channel_info, slack_error
from bot.parsing import COMMAND, Command
from bot.render import code, context, escape, mention, message, render_error, section, slack_date
from runners.errors import UserError

from .scheduler import DigestSchedule, Scheduler, scheduler_for
from .spec import parse_schedule


def _reply(text: str, *extra: dict[str, Any], fallback: str) -> dict[str, Any]:
    return message(fallback, [section(text), *extra])


def label_mrkdwn(label: str) -> str:
    """A schedule's label for mrkdwn: its cron expression in code, so `*` stays literal."""
    return re.sub(r'"([^"]*)"', lambda m: code(m.group(1)), escape(label))


def _check_membership(client: Any, channel: str) -> None:
    """The bot must be in the channel to post there; a clear message says how to fix it."""
    from slack_sdk.errors import SlackApiError

    invite = UserError(
        "I am not in this channel, so I could not post its digest.",
        field="channel",
        fix="/invite @tunebot (then schedule again)",
    )
    try:
        info = channel_info(client, channel)
    except SlackApiError as exc:
        error = slack_error(exc)
        if error == "missing_scope":
            raise invite from None
        raise UserError(
            f"Slack did not tell me about this channel ({error or 'no answer'}); nothing was scheduled.",
            field="channel",
            fix="try again in a minute",
        ) from None
    except Exception as exc:  # the network, a timeout: nothing is scheduled, say so
        raise UserError(
            f"I could not reach Slack to check this channel ({type(exc).__name__}); nothing was scheduled.",
            field="channel",
            fix="try again in a minute",
        ) from None
    if info.get("is_archived"):
        raise UserError("This channel is archived; a digest could not be posted here.", field="channel")
    if not info["is_member"]:
        raise invite


def _schedule_line(scheduler: Scheduler, row: DigestSchedule) -> str:
    nxt = scheduler.next_run(row)
    bits = [f"*#{row.id}* {label_mrkdwn(row.label)}"]
    bits.append(f"next {slack_date(nxt.timestamp())}" if nxt else "no next run")
    if row.last_digest_at:
        bits.append(f"last {slack_date(row.last_digest_at)}")
    if row.created_by:
        bits.append(f"set by {mention(row.created_by)}")
    return " · ".join(bits)


def _render_list(scheduler: Scheduler, channel: str) -> dict[str, Any]:
    rows = scheduler.all_digests(channel)
    if not rows:
        return _reply(
            "No digests are scheduled in this channel.",
            context(f"Add one: {code(f'{COMMAND} schedule daily 09:00')}"),
            fallback="No digests are scheduled in this channel.",
        )
    lines = "\n".join(_schedule_line(scheduler, row) for row in rows)
    fallback = "Digests in this channel: " + "; ".join(f"#{r.id} {r.label}" for r in rows)
    return _reply(
        f"*Digests in this channel*\n{lines}",
        context(
            f"Stop one with {code(f'{COMMAND} schedule off ID')}, all with {code(f'{COMMAND} schedule off')}."
        ),
        fallback=fallback,
    )


def _schedule_id(text: str) -> int:
    raw = text.strip().lstrip("#")
    if raw.isdigit():
        return int(raw)
    raise UserError(
        f"`{text}` is not a digest number.",
        field="id",
        fix=f"{COMMAND} schedule list shows them, e.g. {COMMAND} schedule off 3",
    )


def _turn_off(scheduler: Scheduler, channel: str, args: list[str]) -> dict[str, Any]:
    rows = scheduler.all_digests(channel)
    if args:
        wanted = _schedule_id(args[0])
        row = next((r for r in rows if r.id == wanted), None)
        if row is None:
            there = ", ".join(f"#{r.id}" for r in rows)
            found = f" Its digests: {there}." if there else " It has none."
            raise UserError(
                f"There is no digest #{wanted} in this channel.{found}",
                field="id",
                fix=f"{COMMAND} schedule list",
            )
        scheduler.remove_digest(row)
        return _reply(
            f":no_bell: Stopped digest *#{row.id}* ({label_mrkdwn(row.label)}).",
            fallback=f"Stopped digest #{row.id} ({row.label}).",
        )
    if not rows:
        raise UserError(
            "No digests are scheduled in this channel; there is nothing to stop.",
            field="id",
            fix=f"{COMMAND} schedule daily 09:00 starts one",
        )
    for row in rows:
        scheduler.remove_digest(row)
    plural = "s" if len(rows) != 1 else ""
    names = ", ".join(f"#{r.id} ({label_mrkdwn(r.label)})" for r in rows)
    return _reply(
        f":no_bell: Stopped {len(rows)} digest{plural}: {names}.",
        fallback=f"Stopped {len(rows)} digest{plural}: " + ", ".join(f"#{r.id}" for r in rows),
    )


def _add(scheduler: Scheduler, command: Command, *, user: str, channel: str, client: Any) -> dict[str, Any]:
    spec = parse_schedule(command, scheduler.settings.digest_tz)
    if client is not None:
        _check_membership(client, channel)
    row, created = scheduler.add_digest(channel, spec, user=user)
    nxt = scheduler.next_run(row)
    when = f" The first one comes {slack_date(nxt.timestamp())}." if nxt else ""
    if not created:
        text = f"That digest is already scheduled here as *#{row.id}* ({label_mrkdwn(row.label)}).{when}"
        return _reply(text, fallback=f"Already scheduled here as digest #{row.id} ({row.label}).")
    return _reply(
        f":calendar: Digest *#{row.id}* scheduled: {label_mrkdwn(row.label)}.{when}",
        context(
            "It lists running and queued jobs, what finished or failed since the last digest, "
            "deployments and GPU hours per person. "
            f"{code(f'{COMMAND} schedule off {row.id}')} stops it."
        ),
        fallback=f"Digest #{row.id} scheduled: {row.label}.",
    )


def handle_schedule_command(
    command: Command,
    *,
    user: str,
    channel: str,
    runtime: Any,
    client: Any,
    scheduler: Scheduler | None = None,
) -> dict[str, Any]:
    """Answer `/tune schedule daily|weekly|cron|list|off …` in `channel`: a message for `respond`
    (ephemeral). Mistakes come back as a clear message; nothing scheduled is lost or duplicated."""
    scheduler = scheduler or scheduler_for(runtime.store)
    try:
        if scheduler is None or not scheduler.running:
            raise UserError(
                "Digests are off: this tunebot process is not running its scheduler.",
                field="schedule",
                fix="restart `tunebot serve`",
            )
        if command.name == "schedule list":
            return _render_list(scheduler, channel)
        if command.name == "schedule off":
            return _turn_off(scheduler, channel, list(command.args))
        if command.name in ("schedule daily", "schedule weekly", "schedule cron"):
            return _add(scheduler, command, user=user, channel=channel, client=client)
        raise UserError(
            f"`{command.name}` is not a schedule command.",
            field="command",
            fix=f"{COMMAND} help schedule daily",
        )
    except UserError as err:
        return render_error(err)
