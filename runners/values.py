"""Words people type for yes and no: one table for every place that reads a flag.

LLaMA-Factory's own parser (`string_to_bool`) takes these words; tunebot must read a flag the way
LLaMA-Factory will, or a check made before launch (bf16 on a CPU runner) judges another value
than the run gets: `bf16=y` is bf16.
"""

from __future__ import annotations

from typing import Any

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
