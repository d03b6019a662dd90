"""What a tunebot job becomes on a Ray cluster, and what comes back from it.

`stage(...)` writes the folder Ray carries to the node (`runtime_env.working_dir`): the job's
LLaMA-Factory YAML with paths relative to the run folder, the part of the dataset folder the job
names, and the node spec `runners.backends.ray.node` follows. `Mirror` applies the structured lines of
the Ray job's log stream (logline.py) to the job's folder on the runner's host, so the
runner reads trainer_log.jsonl, result files and the log exactly as for a local job; the big
outputs stay in the artifact store and are listed in `tunebot-remote.json` there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import logline

SPEC_NAME = "tunebot-node.json"
# The stream is the job's stdout: whatever the job's code prints is there too, so it is read as
# untrusted — paths kept inside the job folder, sizes bounded, checkpoint names plain.
MAX_MIRRORED_BYTES = 2_000_000
_CHECKPOINT = re.compile(r"^checkpoint-\d{1,9}$")
REMOTE_NAME = "tunebot-remote.json"  # in the job folder: uploads, checkpoints, exit, endpoint
# Variables a job on a node needs from the runner (the rest of its environment is the node's own).
_PASSED_ENV = ("HF_HUB_OFFLINE", "HF_ENDPOINT", "DISABLE_VERSION_CHECK", "TOKENIZERS_PARALLELISM")
# Small files each kind's post work reads, copied back through the log stream.
MIRRORED = {
    "train": ["output/train_results.json", "output/all_results.json", "output/adapter_config.json"],
    "eval": ["output/predict_results.json", "output/all_results.json", "output/generated_predictions.jsonl"],
    "export": ["model/config.json"],
    "deploy": [],
}
UPLOADS = {
    "train": [{"name": "adapter", "path": "output", "dir": True}],
    "eval": [
        {"name": "predictions", "path": "output/generated_predictions.jsonl", "dir": False},
        {"name": "results", "path": "output/predict_results.json", "dir": False},
    ],
    "export": [{"name": "model", "path": "model", "dir": True}],
    "deploy": [],
}


@dataclass
class Staged:
    folder: Path
    spec: dict[str, Any]
    num_cpus: float
    num_gpus: float
    env: dict[str, str] = field(default_factory=dict)


def store_spec(storage_settings: Any, data_dir: Path, shared_dir: Path | None) -> dict[str, Any]:
    """Where nodes put and get artifacts: OSS (credentials from each node's own environment), or a
    folder every node mounts (TUNEBOT_RAY_SHARED_DIR; by default the data dir's artifact folder)."""
    if storage_settings is not None and getattr(storage_settings, "backend", "local") == "oss":
        env = {
            "TUNEBOT_OSS_ENDPOINT": storage_settings.oss_endpoint or "",
            "TUNEBOT_OSS_BUCKET": storage_settings.oss_bucket or "",
            "TUNEBOT_OSS_PREFIX": storage_settings.oss_prefix,
        }
        if storage_settings.oss_region:
            env["TUNEBOT_OSS_REGION"] = storage_settings.oss_region
        return {"backend": "oss", "env": env}
    return {"backend": "local", "root": str(shared_dir or Path(data_dir) / "artifacts")}


def _dataset_subset(dataset_dir: Path, names: list[str], dest: Path) -> None:
    """dataset_info.json cut to the job's datasets, and their files."""
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.exists():
        return
    info = json.loads(info_path.read_text(encoding="utf-8"))
    wanted = {name: info[name] for name in names if name in info}
    dest.mkdir(parents=True, exist_ok=True)
    for entry in wanted.values():
        file_name = entry.get("file_name")
        if file_name and not Path(file_name).is_absolute() and (dataset_dir / file_name).exists():
            source = dataset_dir / file_name
            target = dest / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
    text = json.dumps(wanted, ensure_ascii=False, indent=1)
    (dest / "dataset_info.json").write_text(text, encoding="utf-8")


def _names(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value]
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def remote_input(path: str | None, parents: list[dict[str, Any]]) -> str | None:
    """The store key of a local path that names a Ray job's output: a parent's adapter or model
    (its `artifacts.remote` record), or a checkpoint folder the mirror marked."""
    if not path:
        return None
    marker = Path(path) / REMOTE_NAME
    if marker.exists():
        try:
            return json.loads(marker.read_text(encoding="utf-8"))["key"]
        except (OSError, ValueError, KeyError):
            return None
    for artifacts in parents:
        remote = artifacts.get("remote") or {}
        for name in ("adapter", "model"):
            if artifacts.get(name) and Path(artifacts[name]) == Path(path) and name in remote:
                return remote[name]["key"]
    return None


def stage(
    *,
    job_id: int,
    attempt: int,
    kind: str,
    args: dict[str, Any],
    work_dir: Path,
    command: list[str],
    store: dict[str, Any] | None,
    parent_artifacts: dict[str, Any] | None = None,
    workers: int = 1,
    gpus: int = 0,
    serve: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    run_name: str | None = None,
) -> Staged:
    """The folder to submit for one attempt of a job (rebuilt from scratch each time)."""
    folder = Path(work_dir) / "ray-submit"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    args = dict(args)
    inputs: dict[str, str] = {}
    parents = [parent_artifacts] if parent_artifacts else []
    for arg in ("adapter_name_or_path", "model_name_or_path", "resume_from_checkpoint"):
        key = remote_input(args.get(arg), parents)
        if key:
            inputs[arg] = key
    if kind in ("train", "eval"):
        args["output_dir"] = "output"
    if kind == "export":
        args["export_dir"] = "model"
    if args.get("dataset_dir"):
        names = _names(args.get("dataset")) + _names(args.get("eval_dataset"))
        _dataset_subset(Path(args["dataset_dir"]), names, folder / "dataset")
        args["dataset_dir"] = "dataset"
    node_env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    node_env.update({"PYTHONUNBUFFERED": "1", "DISABLE_VERSION_CHECK": "1"})
    model = str(args.get("model_name_or_path", ""))
    if Path(model).is_absolute():
        node_env["HF_HUB_OFFLINE"] = "1"  # a path on the nodes: no hub round trips (~1 min to fail)
    num_gpus = float(gpus)
    if workers > 1:
        # LLaMA-Factory's Ray trainer: the entrypoint only drives; each worker reserves its own
        # CPUs (and a GPU on a GPU cluster) in a placement group Ray spreads over the nodes.
        node_env["USE_RAY"] = "1"
        args["ray_num_workers"] = workers
        command = ["python", "-m", "runners.backends.ray.train"]
        num_gpus = 0.0
    node_env.update(env or {})
    config = yaml.safe_dump(args, sort_keys=False, allow_unicode=True)
    (folder / "config.yaml").write_text(config, encoding="utf-8")
    spec = {
        "job": job_id,
        "attempt": attempt,
        "run_name": run_name,
        "kind": kind,
        "command": [*command, "config.yaml"],
        "env": node_env,
        "store": store,
        "inputs": inputs,
        "uploads": UPLOADS.get(kind, []) if store else [],
        "mirror": MIRRORED.get(kind, []),
        "checkpoints": "output" if kind == "train" else None,
        "serve": serve,
        "ray_workers": workers,
    }
    (folder / SPEC_NAME).write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return Staged(folder=folder, spec=spec, num_cpus=1.0, num_gpus=num_gpus, env={})


class Mirror:
    """Applies a Ray job's log stream to the job's folder on the runner's host."""

    def __init__(self, work_dir: Path, log_path: Path):
        self.work_dir = Path(work_dir)
        self.log_path = Path(log_path)

    def reset(self) -> None:
        """A new attempt: forget what the last one's stream said (its log stays, appended to)."""
        (self.work_dir / REMOTE_NAME).unlink(missing_ok=True)

    def offset(self) -> int:
        return int(self.remote().get("log_offset") or 0)

    def note(self, text: str) -> None:
        """A line of tunebot's own in the job's log (what Ray said about a job that died)."""
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(text.rstrip("\n") + "\n")

    def set_lost(self, reason: str) -> None:
        remote = self.remote()
        remote["lost"] = reason
        self._save_remote(remote)

    def remote(self) -> dict[str, Any]:
        try:
            return json.loads((self.work_dir / REMOTE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _save_remote(self, data: dict[str, Any]) -> None:
        path = self.work_dir / REMOTE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def _inside(self, rel: str) -> Path | None:
        """A path the node named, kept inside the job folder (the stream is not trusted with more)."""
        target = (self.work_dir / rel).resolve()
        root = self.work_dir.resolve()
        return target if root in target.parents else None

    def apply(self, text: str, events: list[tuple[str, dict[str, Any]]], offset: int | None = None) -> None:
        """Write one read of the stream; `offset` (how far it has been read) is saved with it."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if text:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(text)
        remote = self.remote()
        changed = offset is not None and offset != remote.get("log_offset")
        if offset is not None:
            remote["log_offset"] = offset
        for kind, data in events:
            if kind == logline.TRAINER_LOG:
                out = self.work_dir / "output" / "trainer_log.jsonl"
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(data.get("line"), ensure_ascii=False) + "\n")
            elif kind == logline.FILE:
                target = self._inside(str(data.get("path") or ""))
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                mode = "w" if not data.get("offset") else "a"
                if mode == "a" and target.exists() and target.stat().st_size > MAX_MIRRORED_BYTES:
                    continue  # the node only sends small files; anything bigger is not taken
                with open(target, mode, encoding="utf-8") as fh:
                    fh.write(str(data.get("data") or ""))
            elif kind == logline.CHECKPOINT:
                name = str(data.get("name") or "")
                target = self._inside(f"output/{name}") if _CHECKPOINT.match(name) else None
                if target is None or not isinstance(data.get("record"), dict):
                    continue
                target.mkdir(parents=True, exist_ok=True)
                (target / REMOTE_NAME).write_text(json.dumps(data["record"]), encoding="utf-8")
                remote.setdefault("checkpoints", {})[str(data["name"])] = data["record"]
                changed = True
            elif kind == logline.UPLOAD:
                if data.get("record"):
                    remote.setdefault("uploads", {})[str(data["name"])] = data["record"]
                else:
                    remote.setdefault("upload_errors", {})[str(data["name"])] = str(data.get("error"))
                changed = True
            elif kind == logline.EXIT:
                remote["exit_code"] = int(data.get("code", 1))
                changed = True
            elif kind == logline.READY:
                remote["endpoint"] = {"host": str(data.get("host")), "port": int(data.get("port") or 0)}
                changed = True
            elif kind == logline.ERROR:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"tunebot (on the node): {data.get('text')}\n")
        if changed:
            self._save_remote(remote)
