from __future__ import annotations

from slack_bolt import App

from ...parsing import COMMAND
from .tune import ack_tune, run_tune


def register(app: App) -> None:
    app.command(COMMAND)(ack=ack_tune, lazy=[run_tune])
