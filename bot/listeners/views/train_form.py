"""The train form's submit: the engine checks it before the ack, so its complaint shows under the field.

The ack must leave within Slack's 3 seconds, and the first check of a process may take longer
(LLaMA-Factory's parser is imported then). So the check runs with a deadline: past it the form
closes and the answer follows as an ephemeral message in the channel. That answer is always sent
after the ack, from another thread: Bolt answers Slack only once this listener returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from slack_bolt import Ack, BoltContext

from runners.errors import UserError
from runners.job import Job

from ...render import modal_values, render_error, render_modal_errors
from ...render.replies import render_queued, render_text
from ...services import Services, services_of
from ...use_cases import Origin

CHECK_DEADLINE_S = 2.0


def _channel_of(view: dict[str, Any]) -> str:
    try:
        return str(json.loads(view.get("private_metadata") or "{}").get("channel") or "")
    except ValueError:
        return ""


def form_request_key(view: dict[str, Any], values: dict[str, str]) -> str | None:
    """One job per form and content: a second press of Train (the same view id, the same values)
    returns the first one's job, while a corrected re-submit of a refused form is checked anew."""
    if not view.get("id"):
        return None
    content = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    return f"view:{view['id']}:{content}"


def submit_form(services: Services, values: dict[str, str], yaml_text: str | None,
                origin: Origin) -> tuple[Job, bool]:
    """(the job, whether this very form had made it already)."""
    again = origin.seen(services.store)
    with services.engine_slots:
        job = services.queue.submit_train(pairs=values, yaml_text=yaml_text, requester=origin.requester())
    return job, again


def train_form_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any], context: BoltContext,
                         logger: logging.Logger) -> None:
    services = services_of(context)
    user = body["user"]["id"]
    values = modal_values(view)
    origin = Origin(user=user, channel=_channel_of(view),
                    request_key=form_request_key(view, values) or body.get("trigger_id"))
    if not services.access.may_spend(user, origin.channel):
        ack(**render_modal_errors(services.access.refusal(user, origin.channel), values))
        return
    pairs = {k: v for k, v in values.items() if k != "yaml"}
    check = services.checks.submit(submit_form, services, pairs, values.get("yaml"), origin)
    try:
        check.result(timeout=CHECK_DEADLINE_S)
    except UserError as error:
        ack(**render_modal_errors(error, values))
        return
    except FutureTimeout:
        pass  # the form closes; the answer follows when the check is done
    except Exception:
        logger.exception("checking the train form failed")
        ack(response_action="errors", errors={"model": "tunebot failed to check this form; see its log."})
        return
    ack()
    check.add_done_callback(
        lambda done: services.followups.submit(_tell_later, services, origin, done, logger))


def _tell_later(services: Services, origin: Origin, done: Future, logger: logging.Logger) -> None:
    try:
        job, again = done.result()
    except UserError as error:
        message = render_error(error)
        message["blocks"].insert(0, {"type": "section", "text": {
            "type": "mrkdwn", "text": "Your train form could not be queued:"}})
        _tell(services, origin, message, logger)
        return
    except Exception:
        logger.exception("checking the train form failed")
        failed = render_text(":boom: tunebot failed to check your train form; see its log.")
        _tell(services, origin, failed, logger)
        return
    _tell(services, origin, render_queued(job, position=services.queue.position(job), again=again), logger)


def _tell(services: Services, origin: Origin, message: dict[str, Any], logger: logging.Logger) -> None:
    if not origin.channel:
        return
    try:
        services.ephemeral(origin.channel, origin.user, **message)
    except Exception:
        logger.exception("could not answer the train form")
