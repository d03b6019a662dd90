"""Edits, deletions, joins and bot posts: acknowledged, nothing to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def other_message(ack: Callable[..., Any]) -> None:
    ack()
