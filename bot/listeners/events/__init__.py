from __future__ import annotations

from slack_bolt import App

from ..answers import ack_now
from .app_mention import app_mention


def register(app: App) -> None:
    app.event("app_mention")(ack=ack_now, lazy=[app_mention])
