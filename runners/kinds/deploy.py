"""Deployment: `llamafactory-cli api` (or webchat); starts in `starting` until the model answers,
then serves until undeployed or idle (runners/worker.py follows that, with runners/deploy.py)."""

from __future__ import annotations

from ..job import JobKind, JobState
from ..llamafactory.command import command_argv
from .base import Kind, collect_nothing, register

DEPLOY = register(
    Kind(
        JobKind.DEPLOY.value, argv=command_argv, collect=collect_nothing, first_state=JobState.STARTING.value
    )
)
