"""The dataset registry: training files in `<data_dir>/datasets/` and LLaMA-Factory's dataset_info.json.

A file is checked row by row before it is stored (runners/inputs/dataset_rows.py), so a bad
upload is refused with the row and the reason instead of failing a training run minutes later
inside LLaMA-Factory's loader (which silently skips malformed conversations and then stops with
"Cannot find valid samples").

Each stored file gets a name that includes a digest of its content, and the dataset_info.json
rename is the single commit point: until it happens the old entry still points at the old file,
which is untouched, so no error can lose what was stored before.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UserError, shorten
from .inputs.dataset_rows import (
    ALPACA,
    OPENAI,
    SHAREGPT,
    check_dataset,
)
from .inputs.files import read_regular_file

DATASET_INFO = "dataset_info.json"
LOCK_FILE = ".dataset_info.lock"
# Our bookkeeping lives inside each entry; LLaMA-Factory's parser ignores keys it does not know.
META_KEY = "tunebot"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_DATASET_BYTES = 4 * 2**30  # a file from disk; Slack uploads have their own, smaller cap

@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset. rows/added_at are None for entries written by hand."""

    name: str
    format: str
    rows: int | None
    file: Path | None  # None for entries that point at a hub or a script, not a local file
    added_at: str | None
    source_filename: str | None = None
    replaced: bool = False
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "rows": self.rows,
            "file": str(self.file) if self.file else None,
            "added_at": self.added_at,
            "source_filename": self.source_filename,
            "replaced": self.replaced,
        }


def dataset_dir(data_dir: Path) -> Path:
    """The folder to pass to LLaMA-Factory as `dataset_dir`."""
    return Path(data_dir) / "datasets"


# ---------------------------------------------------------------------------------------------
# The registry


def validate_dataset_name(name: str, *, builtin: bool = False) -> str:
    """A name people may register (not one of the built-in demo sets'), or a UserError."""
    # fullmatch: `$` alone would let a trailing newline through ("train\n").
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"{shorten(name)!r} is not a usable dataset name: use 1-64 letters, digits, `-`, `_` or `.`, "
            "starting with a letter or digit.",
            field="name",
            fix="name=support_chats_v2",
        )
    from .llamafactory.recipes import DEMO_DATASET, DEMO_EVAL_DATASET

    if name in (DEMO_DATASET, DEMO_EVAL_DATASET) and not builtin:
        raise UserError(
            f"`{name}` is the name of tunebot's built-in demo set (the `tiny` preset and the demo use it).",
            field="name",
            fix=f"pick another name, e.g. {name}-mine",
        )
    return name


@contextlib.contextmanager
def _registry_lock(folder: Path) -> Iterator[None]:
    # flock conflicts between separate open() calls even within one process, so this also
    # serialises threads; the lock file is never deleted (deleting it would race).
    with open(folder / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / DATASET_INFO
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path} is damaged ({exc}); tunebot will not overwrite it.",
            field="dataset_info.json",
            fix="repair or move the file away, then try again",
        ) from None
    if not isinstance(info, dict):
        raise UserError(
            f"{path} is not a JSON object; tunebot will not overwrite it.", field="dataset_info.json"
        )
    return info


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes 0600
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _entry_format(entry: dict[str, Any]) -> str:
    meta = entry.get(META_KEY) or {}
    if meta.get("format"):
        return str(meta["format"])
    formatting = entry.get("formatting", ALPACA)
    if formatting == SHAREGPT and (entry.get("tags") or {}).get("role_tag") == "role":
        return OPENAI
    return str(formatting)


def _info_from_entry(
    folder: Path,
    name: str,
    entry: dict[str, Any],
    *,
    replaced: bool = False,
    samples: list[dict[str, Any]] | None = None,
) -> DatasetInfo:
    meta = entry.get(META_KEY) or {}
    file_name = entry.get("file_name")
    return DatasetInfo(
        name=name,
        format=_entry_format(entry),
        rows=meta.get("rows"),
        file=folder / file_name if file_name else None,
        added_at=meta.get("added_at"),
        source_filename=meta.get("source_filename"),
        replaced=replaced,
        samples=list(samples or []),
    )


def add_dataset(
    data_dir: Path, name: str, source: Path | bytes, *, filename: str | None = None, builtin: bool = False
) -> DatasetInfo:
    """Check a file and register it as `name`, replacing an existing entry of that name.

    `filename` is the name the user gave the file (kept for display); a Path source defaults to its
    own name. The stored file is named after the dataset and a digest of its content. The names of
    the embedded demo sets are tunebot's own (`builtin=True` registers them).
    """
    validate_dataset_name(name, builtin=builtin)
    if isinstance(source, bytes):
        raw = source
    else:
        raw = read_regular_file(source, field="file", max_bytes=MAX_DATASET_BYTES, what="dataset file")
    if filename is None and not isinstance(source, bytes):
        filename = Path(source).name
    check = check_dataset(raw)
    # LLaMA-Factory's loader cannot read a UTF-8 byte-order mark; store the text without it.
    data = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw

    folder = dataset_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    file_name = f"{name}-{digest}.{check.file_type}"
    target = folder / file_name

    entry = check.dataset_info_entry(file_name)
    entry[META_KEY] = {
        "format": check.format,
        "rows": check.rows,
        "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_filename": filename,
        "sha256": hashlib.sha256(data).hexdigest(),
    }

    # Write the data before taking the lock: copying a large file should not block other adds.
    fd, staged = tempfile.mkstemp(dir=folder, prefix=f".{file_name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staged, 0o644)  # mkstemp makes 0600
        with _registry_lock(folder):
            info = _read_info(folder)
            previous = info.get(name)
            old_file = previous.get("file_name") if isinstance(previous, dict) else None
            os.replace(staged, target)
            info[name] = entry
            try:
                _write_atomically(
                    folder / DATASET_INFO, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
                )
            except BaseException:
                # The old entry still names the old file; only the new copy is stray.
                if old_file != file_name:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
                raise
            still_used = {e.get("file_name") for e in info.values() if isinstance(e, dict)}
            if old_file and old_file not in still_used and _is_ours(previous):
                with contextlib.suppress(FileNotFoundError):
                    (folder / old_file).unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
    return _info_from_entry(folder, name, entry, replaced=previous is not None, samples=check.samples)


def _is_ours(entry: Any) -> bool:
    # Files of hand-written entries may be shared with other tools: never delete those.
    return isinstance(entry, dict) and META_KEY in entry


def list_datasets(data_dir: Path) -> list[DatasetInfo]:
    """All registered datasets, by name. Hand-written entries appear with rows/added_at None."""
    folder = dataset_dir(data_dir)
    info = _read_info(folder)
    return [
        _info_from_entry(folder, name, entry)
        for name, entry in sorted(info.items())
        if isinstance(entry, dict)
    ]


def get_dataset(data_dir: Path, name: str) -> DatasetInfo:
    """The dataset called `name`, or a UserError listing the known names and the closest one."""
    folder = dataset_dir(data_dir)
    info = _read_info(folder)
    entry = info.get(name)
    if isinstance(entry, dict):
        return _info_from_entry(folder, name, entry)
    known = sorted(key for key, value in info.items() if isinstance(value, dict))
    if not known:
        raise UserError(
            f"Unknown dataset `{shorten(name)}`: no datasets have been added yet.",
            field="dataset",
            fix="add one first: a JSON or JSON Lines file in alpaca or sharegpt format",
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    message = f"Unknown dataset `{shorten(name)}`. Known datasets: {', '.join(known)}."
    if close:
        message += f" Did you mean `{close[0]}`?"
    return_fix = f"dataset={close[0] if close else known[0]}"
    raise UserError(message, field="dataset", fix=return_fix)
