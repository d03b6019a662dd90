"""The one error type for "the user asked for something wrong"."""

from __future__ import annotations


class UserError(Exception):
    """A request tunebot refuses, carrying the words the user will see.

    `field` names what to fix (a key=value key, a dataset, a job id); `fix` is a corrected
    example or the next step. Front ends show `str(error)` as is: never a stack trace.
    """

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None):
        self.message = message
        self.field = field
        self.fix = fix
        super().__init__(self.text())

    def text(self) -> str:
        text = self.message
        if self.fix:
            text = f"{text}\nFix: {self.fix}"
        return text


def shorten(text: object, limit: int = 80) -> str:
    """User input quoted in an error message: never the whole of a long one."""
    text = str(text)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"
