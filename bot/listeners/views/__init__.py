from __future__ import annotations

from slack_bolt import App

from ...render import TRAIN_FORM_CALLBACK
from .train_form import train_form_submitted


def register(app: App) -> None:
    app.view(TRAIN_FORM_CALLBACK)(train_form_submitted)
