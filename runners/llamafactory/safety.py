"""What a job's arguments may touch: its files stay under the data dir, nothing is published.

A user's arguments reach `llamafactory-cli` as they are, so every argument that names a file or
folder is a place the job would read or write with tunebot's rights. Each must resolve (relative
to the job's folder, where the job runs; `..` and symlinks followed) inside the data dir or one of
the operator's model roots (`TUNEBOT_MODEL_ROOTS`). Arguments that send the model or its logs off
the host (the Hub, SwanLab, W&B, Trackio…) are refused unless the operator allows publishing.

Which arguments are paths is read from LLaMA-Factory's own dataclasses (their declared types and
help texts), so a new path argument in a new LLaMA-Factory is covered without a list to update;
`KNOWN_PATH_ARGUMENTS` is only the floor used where LLaMA-Factory is not installed.
"""

from __future__ import annotations

import functools
import os
import re
import typing
from collections.abc import Iterable
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from ..env import parse_flag
from ..errors import UserError

# The ones a hostile day used or tunebot manages; the derived set must contain them (a test checks).
KNOWN_PATH_ARGUMENTS = frozenset({
    "model_name_or_path", "adapter_name_or_path", "adapter_folder", "cache_dir", "tokenized_path",
    "media_dir", "dataset_dir", "output_dir", "export_dir", "logging_dir", "swanlab_logdir",
    "resume_from_checkpoint", "deepspeed", "offload_folder",
})
# Arguments that publish the model or its metrics, or carry someone's credentials for a service.
_PUBLISHING = re.compile(
    r"^(push_to_hub|hub_\w+|export_hub_model_id|use_swanlab|swanlab_\w+|trackio_\w+|\w+_hub_token)$"
)
_NOT_PUBLISHING = frozenset({"swanlab_mode", "swanlab_logdir"})  # harmless without use_swanlab
_QUIET_REPORT_TO = {"", "none", "[]", "null"}
_PATH_WORDS = re.compile(r"\b(path|paths|directory|folder)\b|\bfile path\b|\bjson config file\b", re.I)
_PATH_NAME = re.compile(
    r"(_dir|_path|_folder|_logdir|_name_or_path|_adapters)$|^(deepspeed|ref_model|reward_model)$"
)
# Help texts that say "path" about something else (a repository kept in sync with output_dir…).
_NOT_PATHS = frozenset({"hub_model_id", "profile_modules", "export_hub_model_id"})


@functools.lru_cache(maxsize=1)
def path_arguments() -> frozenset[str]:
    """Names of LLaMA-Factory arguments whose value may be a file or folder."""
    try:
        from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS
    except Exception:  # a front-end-only install: the floor still holds
        return KNOWN_PATH_ARGUMENTS
    found: set[str] = set()
    for cls in {*_TRAIN_ARGS, *_INFER_ARGS}:
        hints = typing.get_type_hints(cls)
        for f in dataclass_fields(cls):
            declared = str(hints.get(f.name, f.type))
            if "str" not in declared or f.name in _NOT_PATHS:
                continue
            help_text = str(f.metadata.get("help", ""))
            if _PATH_NAME.search(f.name) or _PATH_WORDS.search(help_text):
                found.add(f.name)
    return frozenset(found | KNOWN_PATH_ARGUMENTS)


def publishing_arguments(names: Iterable[str]) -> list[str]:
    """Which of `names` publish the model or its logs off the host (report_to is judged by value)."""
    return [n for n in names if _PUBLISHING.match(n) and n not in _NOT_PUBLISHING]


def _is_off(value: Any) -> bool:
    """Left at no: a false word (runners/values.py, LLaMA-Factory's own), or nothing at all."""
    if isinstance(value, list):
        return all(_is_off(v) for v in value)
    return value is None or parse_flag(value) is False or str(value).strip().lower() in {"", "none", "null"}


def _reports(value: Any) -> bool:
    items = value if isinstance(value, list) else re.split(r"[,\s]+", str(value or ""))
    return any(str(item).strip().lower() not in _QUIET_REPORT_TO for item in items)


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _real(path: Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError, RuntimeError):  # a symlink loop, a NUL byte: not a place at all
        return ""


def allowed_roots(data_dir: Path, model_roots: Iterable[Path] = ()) -> list[str]:
    """The data dir and the model roots, as given and with their symlinks followed (the operator's)."""
    roots: list[str] = []
    for root in (data_dir, data_dir / "models", *model_roots):
        for form in (os.path.abspath(os.path.expanduser(str(root))), _real(Path(root).expanduser())):
            if form and form not in roots and form != os.sep:
                roots.append(form)
    return roots


def _nested_paths(value: Any) -> list[str]:
    """Strings inside an inline config (a `deepspeed:` dict's `nvme_path`…) that look like paths."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, str) and (os.sep in item or item.startswith(("~", "."))):
            found.append(item)
    return found


def _pieces(key: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return _nested_paths(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if key.endswith(("_name_or_path", "adapters")):  # LLaMA-Factory splits these on commas
        return text.split(",")
    return [text]


def check_arguments(
    args: dict[str, Any],
    *,
    job_dir: Path,
    roots: list[str],
    allow_publishing: bool = False,
    trusted: Iterable[str] = (),
) -> None:
    """Refuse path arguments that leave the allowed roots, and publishing unless it is allowed.

    `trusted` values were set by tunebot or the operator (a parent job's model, the default model)
    and are not judged again.
    """
    trusted_values = {str(t) for t in trusted if t}
    if not allow_publishing:
        for key in publishing_arguments(args):
            if not _is_off(args[key]):
                raise UserError(
                    f"`{key}` would publish the model or its logs outside this host, and the operator "
                    "has not allowed that.",
                    field=key,
                    fix=f"leave out {key} (the operator may set TUNEBOT_ALLOW_PUBLISHING=on)",
                )
        if "report_to" in args and _reports(args["report_to"]):
            raise UserError(
                "`report_to` would send the run's logs to an outside service, and the operator has not "
                "allowed that.",
                field="report_to",
                fix="report_to=none (the operator may set TUNEBOT_ALLOW_PUBLISHING=on)",
            )
    names = path_arguments()
    for key, value in args.items():
        if key not in names or value is None or isinstance(value, bool) or value == "":
            continue
        if str(value) in trusted_values:
            continue
        for piece in _pieces(key, value):
            piece = piece.strip()
            if not piece or piece in trusted_values:
                continue
            where = _real(job_dir / Path(os.path.expanduser(piece)))
            if not where or not _inside(where, roots):
                shown = piece if len(piece) <= 80 else piece[:77] + "…"
                raise UserError(
                    f"`{key}` points outside tunebot's data folder ({shown!r}); a job may only read "
                    "and write there and in the operator's model folders.",
                    field=key,
                    fix=f"leave out {key}, or give a path under the data folder (the operator may "
                    "add model folders to TUNEBOT_MODEL_ROOTS)",
                )
