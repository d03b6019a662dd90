"""Slack listeners, one package per surface as in Slack's bolt-python starter template."""

from __future__ import annotations

from slack_bolt import App

from . import actions, commands, events, messages, views


def register_listeners(app: App) -> None:
    actions.register(app)
    commands.register(app)
    events.register(app)
    messages.register(app)
    views.register(app)
