"""Reading settings from the environment: the README table's row type and durations.

Apart from runners/settings.py so that each group of settings (the engine's, the artifact
store's, the bot's) can use them without importing the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, name: str = "duration", example: str = "30m") -> float:
    """'90', '90s', '15m', '2h', '7d' -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(
            f"{name}={text!r} is not a duration.", field=name, fix=f"{name}={example} (s, m, h or d)"
        )
    value, unit = match.groups()
    return float(value) * _UNIT_SECONDS[(unit or "s").lower()]


@dataclass(frozen=True)
class Setting:
    """One row of the README's environment table."""

    name: str
    default: str
    unit: str
    meaning: str
