"""The dataset registry: training files in `<data_dir>/datasets/` and LLaMA-Factory's dataset_info.json.

A file is checked row by row before it is stored, so a bad upload is refused with the row and
the reason instead of failing a training run minutes later inside LLaMA-Factory's loader (which
silently skips malformed conversations and then stops with "Cannot find valid samples").

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

from .errors import UserError

DATASET_INFO = "dataset_info.json"
LOCK_FILE = ".dataset_info.lock"
# Our bookkeeping lives inside each entry; LLaMA-Factory's parser ignores keys it does not know.
META_KEY = "tunebot"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SAMPLE_ROWS = 3

ALPACA = "alpaca"
SHAREGPT = "sharegpt"
OPENAI = "openai"  # `messages` with role/content, loaded through LLaMA-Factory's sharegpt converter

# The sharegpt converter wants user-side roles at odd positions and assistant-side at even ones.
SHAREGPT_ROLES = {"user": ("human", "observation"), "assistant": ("gpt", "function_call"), "system": "system"}
OPENAI_ROLES = {"user": ("user", "tool"), "assistant": ("assistant",), "system": "system"}

# Every tag is written out: once "tags" is present LLaMA-Factory sets any tag it lacks to None.
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
# OpenAI-style files use LLaMA-Factory's `sharegpt` formatting with these tags (as its data/README
# shows) rather than its `openai` converter, which appends "detailed thinking off" to every system
# prompt.
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}

_JSON_TYPE_NAMES = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
}


@dataclass(frozen=True)
class DatasetCheck:
    """What `check_dataset` learned about a file that passed every check."""

    format: str  # alpaca, sharegpt or openai
    file_type: str  # json (one array) or jsonl (one object per line)
    rows: int
    columns: dict[str, str]
    tags: dict[str, str]
    samples: list[dict[str, Any]]

    @property
    def formatting(self) -> str:
        """LLaMA-Factory's `formatting` value for this file."""
        return ALPACA if self.format == ALPACA else SHAREGPT

    def dataset_info_entry(self, file_name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "file_name": file_name,
            "formatting": self.formatting,
            "columns": dict(self.columns),
        }
        if self.tags:
            entry["tags"] = dict(self.tags)
        return entry


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
# Checking a file


def _describe_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"The file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}).",
            field="file",
            fix="save it as UTF-8 JSON or JSON Lines",
        ) from None


def _parse_rows(text: str) -> tuple[str, list[tuple[int, Any]]]:
    """Return (file type, [(line number, row)]). Line numbers point at where each row starts."""
    stripped = text.strip()
    if not stripped:
        raise UserError(
            "The file is empty.", field="file", fix="upload a JSON array or JSON Lines file of examples"
        )
    if stripped[0] == "[":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"Line {exc.lineno} is not valid JSON: {exc.msg} (column {exc.colno}).", field="file"
            ) from None
        except RecursionError:
            raise UserError("The file nests JSON too deeply to be a dataset.", field="file") from None
        if not isinstance(rows, list):
            raise UserError("The file is not a JSON array of examples.", field="file")
        if not rows:
            raise UserError("The file is empty: its JSON array has no rows.", field="file")
        # A JSON array does not map rows to lines cheaply; row numbers are what users see there.
        return "json", [(0, row) for row in rows]
    if stripped[0] != "{":
        raise UserError(
            "The file is neither a JSON array nor JSON Lines (it should start with `[` or `{`).",
            field="file",
        )
    parsed: list[tuple[int, Any]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((line_number, json.loads(line)))
        except RecursionError:
            raise UserError(f"Line {line_number} nests JSON too deeply to be a row.", field="file") from None
        except json.JSONDecodeError as exc:
            hint = ""
            if line_number == 1 and _is_single_object(text):
                hint = (
                    " The file holds one JSON object spread over several lines;"
                    " expected a JSON array of rows or one object per line."
                )
            raise UserError(
                f"Line {line_number} is not valid JSON: {exc.msg} (column {exc.colno}).{hint}", field="file"
            ) from None
    return "jsonl", parsed


def _is_single_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _row_format(row: dict[str, Any]) -> str | None:
    if "conversations" in row:
        return SHAREGPT
    if "messages" in row:
        return OPENAI
    if "instruction" in row or "output" in row:
        return ALPACA
    return None


def _where(row_number: int, line_number: int) -> str:
    if line_number and line_number != row_number:
        return f"Row {row_number} (line {line_number})"
    return f"Row {row_number}"


def _optional_text(row: dict[str, Any], key: str, where: str) -> None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: `{key}` must be text, got {_describe_type(value)}.", field="file")


def _check_alpaca_row(row: dict[str, Any], where: str) -> None:
    for key in ("instruction", "output"):
        if key not in row or row[key] is None:
            raise UserError(f"{where}: `{key}` is missing.", field="file")
        if not isinstance(row[key], str):
            raise UserError(f"{where}: `{key}` must be text, got {_describe_type(row[key])}.", field="file")
    _optional_text(row, "input", where)
    _optional_text(row, "system", where)
    if not row["instruction"].strip() and not (row.get("input") or "").strip():
        raise UserError(f"{where}: `instruction` and `input` are both empty.", field="file")
    if not row["output"].strip():
        raise UserError(
            f"{where}: `output` is empty, so there is nothing to learn from this row.", field="file"
        )
    history = row.get("history")
    if history is None:
        return
    if not isinstance(history, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(turn, str) for turn in pair)
        for pair in history
    ):
        raise UserError(
            f"{where}: `history` must be a list of [question, answer] pairs of text.",
            field="file",
            fix='"history": [["earlier question", "earlier answer"]]',
        )


def _check_conversation(row: dict[str, Any], where: str, style: str) -> None:
    if style == SHAREGPT:
        list_key, role_key, content_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
    else:
        list_key, role_key, content_key, roles = "messages", "role", "content", OPENAI_ROLES
    user_roles, assistant_roles, system_role = roles["user"], roles["assistant"], roles["system"]
    known_roles = [*user_roles, *assistant_roles, system_role]
    user_name, assistant_name = user_roles[0], assistant_roles[0]

    messages = row.get(list_key)
    if not isinstance(messages, list):
        raise UserError(
            f"{where}: `{list_key}` must be a list of messages, got {_describe_type(messages)}.", field="file"
        )
    if not messages:
        raise UserError(f"{where}: `{list_key}` is empty.", field="file")
    _optional_text(row, "system", where)

    previous_side = None
    turns = 0
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise UserError(
                f"{where}: message {index} must be an object with `{role_key}` and `{content_key}`.",
                field="file",
            )
        role = message.get(role_key)
        if role is None:
            raise UserError(f"{where}: message {index} has no `{role_key}`.", field="file")
        if role not in known_roles:
            raise UserError(
                f"{where}: message {index} has unknown {role_key} `{role}`; "
                f"use one of {', '.join(known_roles)}.",
                field="file",
            )
        content = message.get(content_key)
        if not isinstance(content, str):
            raise UserError(
                f"{where}: message {index} `{content_key}` must be text, got {_describe_type(content)}.",
                field="file",
            )
        if role == system_role:
            if index != 1:
                raise UserError(
                    f"{where}: a `{system_role}` message may only come first (message {index}).", field="file"
                )
            continue
        side = "user" if role in user_roles else "assistant"
        if turns == 0 and side != "user":
            raise UserError(
                f"{where}: the conversation must start with a user turn ({user_name}), got {role}.",
                field="file",
            )
        if side == previous_side:
            raise UserError(
                f"{where}: conversation must alternate user/assistant ({user_name}/{assistant_name}), "
                f"got two {side} turns (messages {index - 1} and {index}).",
                field="file",
            )
        previous_side = side
        turns += 1
    if turns == 0:
        raise UserError(f"{where}: the conversation has only a system message.", field="file")
    if previous_side != "assistant":
        raise UserError(
            f"{where}: the conversation must end with an assistant turn ({assistant_name}).", field="file"
        )


def _columns_and_tags(style: str, rows: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    present = set().union(*(row.keys() for row in rows))
    # Once "columns" is given LLaMA-Factory sets every column it lacks to None, and a column named
    # there but absent from the file is a KeyError at load time: list exactly those present.
    if style == ALPACA:
        columns = {"prompt": "instruction", "response": "output"}
        for column, key in (("query", "input"), ("system", "system"), ("history", "history")):
            if key in present:
                columns[column] = key
        return columns, {}
    columns = {"messages": "conversations" if style == SHAREGPT else "messages"}
    for key in ("system", "tools"):
        if key in present:
            columns[key] = key
    return columns, dict(SHAREGPT_TAGS if style == SHAREGPT else OPENAI_TAGS)


def _check_column_types(parsed: list[tuple[int, dict[str, Any]]]) -> None:
    # The loader (pyarrow) needs one JSON type per column; a column that is a number in one row
    # and text in another fails the whole run.
    first_seen: dict[str, tuple[str, int]] = {}
    for row_number, (line_number, row) in enumerate(parsed, start=1):
        for key, value in row.items():
            if value is None:
                continue
            kind = _describe_type(value)
            if key not in first_seen:
                first_seen[key] = (kind, row_number)
            elif first_seen[key][0] != kind:
                seen_kind, seen_row = first_seen[key]
                raise UserError(
                    f"{_where(row_number, line_number)}: `{key}` is {kind} here "
                    f"but {seen_kind} in row {seen_row}; "
                    "each column must have one type.",
                    field="file",
                )


def check_dataset(path: Path | bytes) -> DatasetCheck:
    """Read a JSON array or JSON Lines file, detect its format and validate every row.

    Raises UserError naming the 1-based row (and line, for JSON Lines) and what is wrong.
    """
    raw = path if isinstance(path, bytes) else Path(path).read_bytes()
    file_type, parsed = _parse_rows(_decode(raw))

    style: str | None = None
    style_row = 0
    for row_number, (line_number, row) in enumerate(parsed, start=1):
        where = _where(row_number, line_number)
        if not isinstance(row, dict):
            raise UserError(f"{where} is not a JSON object (got {_describe_type(row)}).", field="file")
        row_style = _row_format(row)
        if row_style is None:
            keys = ", ".join(f"`{key}`" for key in list(row)[:8]) or "none"
            raise UserError(
                f"{where}: cannot tell the format. Expected alpaca (`instruction`, `output`), sharegpt "
                f"(`conversations`) or OpenAI-style (`messages`) keys; got {keys}.",
                field="file",
            )
        if style is None:
            style, style_row = row_style, row_number
        elif row_style != style:
            raise UserError(
                f"{where} is in {row_style} format but row {style_row} is {style}; "
                "one file must use one format.",
                field="file",
            )
        if style == ALPACA:
            _check_alpaca_row(row, where)
        else:
            _check_conversation(row, where, style)
    _check_column_types(parsed)

    assert style is not None  # _parse_rows refuses files without rows
    rows = [row for _, row in parsed]
    columns, tags = _columns_and_tags(style, rows)
    return DatasetCheck(
        format=style,
        file_type=file_type,
        rows=len(rows),
        columns=columns,
        tags=tags,
        samples=rows[:SAMPLE_ROWS],
    )


# ---------------------------------------------------------------------------------------------
# The registry


def validate_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise UserError(
            f"{name!r} is not a usable dataset name: use 1-64 letters, digits, `-`, `_` or `.`, "
            "starting with a letter or digit.",
            field="name",
            fix="name=support_chats_v2",
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
    validate_dataset_name(name)
    from .llamafactory.recipes import DEMO_DATASET, DEMO_EVAL_DATASET

    if name in (DEMO_DATASET, DEMO_EVAL_DATASET) and not builtin:
        raise UserError(
            f"`{name}` is the name of tunebot's built-in demo set (the `tiny` preset and the demo use it).",
            field="name",
            fix=f"pick another name, e.g. {name}-mine",
        )
    if isinstance(source, bytes):
        raw = source
    else:
        try:
            raw = Path(source).read_bytes()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise UserError(f"Cannot read {source}: {exc.strerror}.", field="file") from None
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
            f"Unknown dataset `{name}`: no datasets have been added yet.",
            field="dataset",
            fix="add one first: a JSON or JSON Lines file in alpaca or sharegpt format",
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    message = f"Unknown dataset `{name}`. Known datasets: {', '.join(known)}."
    if close:
        message += f" Did you mean `{close[0]}`?"
    return_fix = f"dataset={close[0] if close else known[0]}"
    raise UserError(message, field="dataset", fix=return_fix)
