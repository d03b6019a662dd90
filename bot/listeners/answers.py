"""How a listener answers one person, and how it turns a failure into words."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from slack_sdk.errors import SlackApiError

from runners.errors import UserError

from ..render import escape, render_error
from ..render.replies import render_text

Reply = Callable[[dict[str, Any]], None]


def ack_now(ack: Callable[..., Any]) -> None:
    """The ack half of a listener whose work is all lazy (events, buttons)."""
    ack()


@contextlib.contextmanager
def answering_errors(reply: Reply, logger: logging.Logger) -> Iterator[None]:
    """A person's mistake -> `render_error` to them; tunebot's own failure -> logged, and a plain apology."""
    try:
        yield
    except UserError as error:
        _send(reply, render_error(error), logger)
    except SlackApiError as error:
        logger.warning("a Slack call failed: %s", error.response.get("error") if error.response else error)
        _send(reply, render_text(f":warning: Slack refused a call I made ({_slack_error(error)})."), logger)
    except Exception:
        logger.exception("a listener failed")
        _send(reply, render_text(":boom: Something went wrong on tunebot's side; the details are in its log."
                                 ), logger)


def _slack_error(error: SlackApiError) -> str:
    return escape(error.response.get("error")) if error.response is not None else "no answer"


def _send(reply: Reply, message: dict[str, Any], logger: logging.Logger) -> None:
    try:
        reply(message)
    except Exception:
        logger.exception("could not tell the person what went wrong")
