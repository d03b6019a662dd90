"""Structured lines in a job's stdout: how a job on another machine reports to the runner.

A job on a cluster node (the Ray backend) shares no filesystem with the runner, so the node's
launch wrapper (`runners.backends.ray.node`) prints what the runner would otherwise read from the job
folder as lines of its own among LLaMA-Factory's output:

    @@tunebot {"t": "trainer_log", "line": {"current_steps": 1, "total_steps": 8, ...}}

The runner follows the job's log stream, picks these lines out (`parse`) and rebuilds the job
folder's small files from them, so progress, plots and results are read exactly as for a local
job. Everything else in the stream is LLaMA-Factory's own output and is kept as the job's log.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "@@tunebot "
# One line stays well under what a log stream or a pipe passes unsplit; file bodies go in pieces.
MAX_CHUNK = 16_000

# Line types (the "t" field).
TRAINER_LOG = "trainer_log"  # {"line": one trainer_log.jsonl object}
FILE = "file"  # {"path": relative to the job folder, "data": text, "offset": n, "final": bool}
UPLOAD = "upload"  # {"name", "record": storage record} or {"name", "error"}
CHECKPOINT = "checkpoint"  # {"name": "checkpoint-40", "record": storage record | None}
EXIT = "exit"  # {"code": n}: the command ended with this status
READY = "ready"  # {"host", "port"}: a deployment on a node answers at this address
ERROR = "error"  # {"text"}: the wrapper itself could not do its part (a plain-words reason)

TYPES = frozenset({TRAINER_LOG, FILE, UPLOAD, CHECKPOINT, EXIT, READY, ERROR})


def encode(kind: str, **payload: Any) -> str:
    """One structured line (with its newline)."""
    return PREFIX + json.dumps({"t": kind, **payload}, separators=(",", ":"), ensure_ascii=True) + "\n"


def parse(line: str) -> tuple[str, dict[str, Any]] | None:
    """(type, payload) of a structured line, None for any other line.

    The prefix may follow text a progress bar left without a newline (`50%|███\\r@@tunebot {...}`).
    A malformed or unknown line is treated as plain output: the job's own code may print anything.
    """
    at = line.find(PREFIX)
    if at < 0:
        return None
    try:
        data = json.loads(line[at + len(PREFIX) :])
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("t") not in TYPES:
        return None
    kind = data.pop("t")
    return kind, data


def file_lines(path: str, text: str) -> list[str]:
    """A small text file as FILE lines, in pieces of at most MAX_CHUNK characters."""
    pieces = [text[i : i + MAX_CHUNK] for i in range(0, len(text), MAX_CHUNK)] or [""]
    return [
        encode(FILE, path=path, data=piece, offset=i * MAX_CHUNK, final=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]
