"""Reading values from text: yes/no words, durations, the README table's row type.

One table of yes/no words for every place that reads a flag. LLaMA-Factory's own parser
(`string_to_bool`) takes these words; tunebot must read a flag the way LLaMA-Factory will, or a
check made before launch (bf16 on a CPU runner) judges another value than the run gets: `bf16=y`
is bf16.

Apart from runners/settings.py so that each group of settings (the engine's, the artifact
store's, the bot's) can use them without importing the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import UserError

TRUE_WORDS = frozenset({"true", "yes", "1", "on", "y", "t"})
FALSE_WORDS = frozenset({"false", "no", "0", "off", "n", "f"})


def parse_flag(value: Any) -> bool | None:
    """True or False for a flag's value (a bool, a number, or one of the words); None if it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value) if value in (0, 1) else None
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    return None


def is_set(value: Any) -> bool:
    """Whether a flag is on: a true word or value; anything else (missing, false, unreadable) is off."""
    return value is not None and parse_flag(value) is True


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
