"""A job's artifacts in the artifact store: what each kind uploads, fetching inputs that live
only in the store (another host's export, say), and fresh links for posts.

With the default local store the job folders under the data dir are the artifacts and nothing
is copied; with OSS every artifact is uploaded after the job succeeds, directories with a
manifest written last (runners/artifacts/base.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..job import Job, JobKind

if TYPE_CHECKING:  # storage needs oss2; a runner without OSS never imports it
    from .base import Storage

log = logging.getLogger(__name__)

# Inputs of later jobs, by the name their upload is recorded under.
ADAPTER, MODEL = "adapter", "model"


@dataclass(frozen=True)
class Upload:
    name: str
    path: Path
    is_dir: bool


def uploads_for(job: Job) -> list[Upload]:
    """What a succeeded job of each kind leaves for the store."""
    work = Path(job.work_dir)
    items: list[Upload] = []
    if job.kind == JobKind.TRAIN.value:
        items.append(Upload(ADAPTER, work / "output", True))
        items.append(Upload("plot", work / "loss.png", False))
    elif job.kind == JobKind.EVAL.value:
        items.append(Upload("predictions", work / "output" / "generated_predictions.jsonl", False))
        items.append(Upload("results", work / "output" / "predict_results.json", False))
    elif job.kind == JobKind.EXPORT.value:
        items.append(Upload(MODEL, work / "model", True))
    items.append(Upload("config", work / "config.yaml", False))
    return [item for item in items if item.path.exists()]


def _adapter_view(output: Path, stage: Path) -> Path:
    """The adapter without its intermediate checkpoints, as hard links (no copy of the weights)."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for item in output.iterdir():
        if item.is_file():
            try:
                os.link(item, stage / item.name)
            except OSError:
                shutil.copy2(item, stage / item.name)
    return stage


def upload_job(
    job: Job, storage: Storage, skip: set[str] | frozenset[str] = frozenset()
) -> tuple[dict[str, dict], dict[str, str]]:
    """Upload a succeeded job's artifacts; returns (records by name, errors by name).

    An upload that fails leaves the local files in place; calling again resumes (OSS checkpoints).
    """
    from .base import job_key

    records: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for item in uploads_for(job):
        if item.name in skip:
            continue
        key = job_key(job.id, job.kind, item.name)
        try:
            if item.is_dir:
                source = item.path
                if item.name == ADAPTER:
                    source = _adapter_view(item.path, Path(job.work_dir) / ".upload" / ADAPTER)
                stored = storage.put_dir(source, key)
            else:
                stored = storage.put_file(item.path, key)
        except UserError as exc:
            errors[item.name] = exc.text()
            continue
        except OSError as exc:
            errors[item.name] = f"Could not read {item.path}: {exc.strerror or exc}."
            continue
        finally:
            shutil.rmtree(Path(job.work_dir) / ".upload", ignore_errors=True)
        records[item.name] = stored.to_record()
    return records, errors


def describe(storage: Storage, record: dict) -> dict[str, Any]:
    """Fresh links for a stored artifact (links expire, records don't)."""
    obj = storage.stat(record["key"])
    if obj is None:
        raise UserError(f"{record.get('location', record['key'])} is no longer in the store.", field="key")
    return storage.describe(obj)


def remote_record(parent: Job | None, local_path: str | None) -> dict | None:
    """The store's copy of `local_path`, if it is one of `parent`'s uploaded artifacts."""
    if parent is None or not local_path:
        return None
    remote = parent.artifacts.get("remote") or {}
    for name in (ADAPTER, MODEL):
        if parent.artifacts.get(name) and Path(parent.artifacts[name]) == Path(local_path) and name in remote:
            return remote[name]
    return None


def missing_inputs(args: dict[str, Any], parent: Job | None) -> dict[str, dict]:
    """Arguments naming a folder that is gone from this host but kept in the store: key -> record."""
    wanted: dict[str, dict] = {}
    for arg in ("adapter_name_or_path", "model_name_or_path"):
        path = args.get(arg)
        if path and not Path(str(path)).exists():
            record = remote_record(parent, str(path))
            if record is not None:
                wanted[arg] = record
    return wanted


def fetch_inputs(job: Job, parent: Job | None, storage: Storage, cache_dir: Path) -> dict[str, Any]:
    """Download what `missing_inputs` names; returns the job's arguments pointing at the copies."""
    args = dict(job.args)
    for arg, record in missing_inputs(args, parent).items():
        dest = cache_dir / "fetched" / record["key"]
        storage.get_dir(record["key"], dest)  # every file checked against the manifest
        log.info("job #%s: fetched %s into %s", job.id, record.get("location"), dest)
        args[arg] = str(dest)
    return args
