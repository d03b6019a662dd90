"""A dataset file checked row by row before it is stored: its format (alpaca, sharegpt or
OpenAI-style messages), JSON or JSON Lines, and every row's shape, so a bad upload is refused with
the row and the reason instead of failing a training run minutes later inside LLaMA-Factory's
loader. Pure: bytes in, a `DatasetCheck` or a `UserError` out (runners/datasets.py stores)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

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
