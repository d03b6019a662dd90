from __future__ import annotations

from slack_bolt import App

from ...render import JOB_ACTIONS
from ..answers import ack_now
from .job_button import run_job_button


def register(app: App) -> None:
    for action_id in JOB_ACTIONS:
        app.action(action_id)(ack=ack_now, lazy=[run_job_button])
