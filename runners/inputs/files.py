"""Read a file someone named on the command line: a regular file, of bounded size, or a plain no.

A FIFO would block the reader forever, a device or /proc file has no end, a symlink loop or a
5,000-character name raises OSErrors of their own: each becomes one `UserError` saying what the
path is and what to give instead. The path itself is shortened in the message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import UserError, shorten


def read_regular_file(path: Path | str, *, field: str, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`; a UserError otherwise."""
    shown = shorten(str(path), 120)
    if "\0" in str(path):
        raise UserError(f"Cannot read {shown}: the path holds a NUL byte.", field=field)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            # The folder case in the system's own words (EISDIR), as reading it would have said.
            kind = "Is a directory" if stat.S_ISDIR(info.st_mode) else (
                "it is not a regular file (a pipe, socket or device)")
            raise UserError(f"Cannot read {shown}: {kind}.", field=field, fix=f"give a {what} on disk")
        if info.st_size > max_bytes:
            raise UserError(
                f"{shown} is {info.st_size / 2**20:.1f} MiB; a {what} is at most {max_bytes / 2**20:g} MiB.",
                field=field,
            )
        # O_NONBLOCK: should the file be swapped for a pipe after the check, reading still returns.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        # strerror is already plain words: "Too many levels of symbolic links", "File name too long".
        raise UserError(f"Cannot read {shown}: {exc.strerror or 'it cannot be read'}.", field=field) from None
    if len(data) > max_bytes:
        raise UserError(f"{shown} is larger than {max_bytes / 2**20:g} MiB.", field=field)
    return data
