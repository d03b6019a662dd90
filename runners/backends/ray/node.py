"""Runs one job on a cluster node and reports it on stdout, for a runner on another machine.

`python -m runners.backends.ray.node tunebot-node.json` is a Ray job's entrypoint (runners/backends/ray).
Ray unpacks the job's folder (config.yaml, its dataset, this spec) on the node; the wrapper copies
it to a run folder of its own, fetches inputs kept in the artifact store (a parent job's adapter or
merged model, a checkpoint to resume from), runs the command there, and while it runs prints
structured lines (logline.py): every new trainer_log.jsonl line, each finished checkpoint
(uploaded to the store first), and at the end the small result files, the uploads of the big ones
and the command's exit status. Nothing is assumed about a filesystem shared with the runner.

The spec (JSON) the runner writes:
    {"job": 12, "attempt": 1, "kind": "train", "command": ["llamafactory-cli", "train", "config.yaml"],
     "env": {...}, "store": {"backend": "local", "root": "/shared/artifacts"} | {"backend": "oss",
     "env": {non-secret TUNEBOT_OSS_* values}} | null, "inputs": {"adapter_name_or_path": key, ...},
     "uploads": [{"name": "adapter", "path": "output", "dir": true}, ...],
     "mirror": ["output/train_results.json", ...], "checkpoints": "output", "serve": null | {...}}
OSS credentials are never in the spec (Ray keeps job specs readable on its dashboard): a node
reads them from its own environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import logline

SPEC_NAME = "tunebot-node.json"
FOLLOW_EVERY = 1.0
# A mirrored file larger than this is cut to its first lines (predictions: the post shows three).
MIRROR_LIMIT = 256_000


class Reporter:
    """Writes structured lines and the command's own output to stdout without mixing them mid-line."""

    def __init__(self, out=None):
        self._out = out or sys.stdout
        self._lock = threading.Lock()

    def emit(self, kind: str, **payload: Any) -> None:
        self.write(logline.encode(kind, **payload))

    def write(self, text: str) -> None:
        with self._lock:
            self._out.write(text)
            self._out.flush()


def _storage(spec: dict[str, Any], run_dir: Path):
    store = spec.get("store")
    if not store:
        return None
    from ...artifacts.base import StorageSettings
    from ...artifacts.local import LocalStorage
    from ...artifacts.oss import OssStorage

    if store.get("backend") == "local":
        return LocalStorage(Path(store["root"]))
    settings = StorageSettings.from_env({**os.environ, **(store.get("env") or {}), "TUNEBOT_STORAGE": "oss"})
    return OssStorage(settings, checkpoint_dir=run_dir / ".oss-checkpoints")


class _LineTail:
    """New complete lines of a growing file (trainer_log.jsonl), from where the last read stopped."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:
                    self.offset = 0  # rewritten (a resumed run starts the file again)
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return [line for line in data[: end + 1].decode("utf-8", "replace").splitlines() if line.strip()]


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _Follower(threading.Thread):
    """Streams trainer_log.jsonl lines and uploads each checkpoint once it is complete."""

    def __init__(self, run_dir: Path, spec: dict[str, Any], report: Reporter, storage):
        super().__init__(name="tunebot-node-follow", daemon=True)
        self.report = report
        self.storage = storage
        self.spec = spec
        self.checkpoints = run_dir / spec["checkpoints"] if spec.get("checkpoints") else None
        self.tail = _LineTail(run_dir / "output" / "trainer_log.jsonl")
        self.sent: set[str] = set()
        self._sizes: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(FOLLOW_EVERY):
            self.step(final=False)

    def step(self, *, final: bool) -> None:
        for raw in self.tail.read():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                self.report.emit(logline.TRAINER_LOG, line=line)
        self._checkpoints(final=final)

    def _checkpoints(self, *, final: bool) -> None:
        if self.checkpoints is None or not self.checkpoints.is_dir():
            return
        found = sorted(
            (p for p in self.checkpoints.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
            key=lambda p: int(p.name[11:]),
        )
        if not found:
            return
        # A checkpoint with a newer one after it is complete; the newest is once its
        # trainer_state.json (written last) is there and its size held still over a poll.
        newest = found[-1]
        size = _dir_size(newest)
        still = final or self._sizes.get(newest.name) == size
        settled = (newest / "trainer_state.json").exists() and still
        self._sizes = {newest.name: size}
        complete = found if settled else found[:-1]
        if not complete or complete[-1].name in self.sent:
            return
        latest = complete[-1]
        if self.sent and int(latest.name[11:]) <= max(int(name[11:]) for name in self.sent):
            return
        self.sent.add(latest.name)
        if self.storage is None:
            return  # nowhere to keep it: a resume starts over
        from ...artifacts.base import job_key

        try:
            key = job_key(self.spec["job"], "checkpoint", latest.name)
            record = self.storage.put_dir(latest, key).to_record()
            state = (latest / "trainer_state.json").read_text(encoding="utf-8", errors="replace")
        except Exception as exc:  # e.g. save_total_limit removed it meanwhile; the run goes on
            self.report.emit(logline.ERROR, text=f"checkpoint {latest.name} not stored: {exc}")
            return
        # What `resume` looks at on the runner's side to pick the checkpoint, then where it is kept.
        for line in logline.file_lines(f"{self.spec['checkpoints']}/{latest.name}/trainer_state.json", state):
            self.report.write(line)
        self.report.emit(logline.CHECKPOINT, name=latest.name, record=record)


def _forward(stream, report: Reporter) -> None:
    for raw in iter(stream.readline, b""):
        report.write(raw.decode("utf-8", "replace"))


def _fetch_inputs(spec: dict[str, Any], run_dir: Path, storage) -> None:
    inputs = spec.get("inputs") or {}
    if not inputs:
        return
    if storage is None:
        raise RuntimeError("this job needs inputs from the artifact store, and none is configured")
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    for arg, key in inputs.items():
        dest = run_dir / "inputs" / arg / key.rsplit("/", 1)[-1]  # keeps the name: `checkpoint-40`
        storage.get_dir(key, dest)
        config[arg] = str(dest)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _place_ray_workers(spec: dict[str, Any], run_dir: Path) -> None:
    """A `workers=N` run: rank 0 (which writes the log, checkpoints and adapter) on this node,
    writing into this run folder, so the wrapper follows it as it follows a one-process run."""
    if int(spec.get("ray_workers") or 1) <= 1:
        return
    import ray

    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    config["output_dir"] = str(run_dir / "output")
    # LLaMA-Factory orders ranks by node address, the bundles on `master_addr`'s node first.
    config["master_addr"] = ray.util.get_node_ip_address().strip("[]")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _mirror(spec: dict[str, Any], run_dir: Path, report: Reporter) -> None:
    for rel in spec.get("mirror") or []:
        path = run_dir / rel
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(MIRROR_LIMIT)
        if len(text) == MIRROR_LIMIT:
            text = text[: text.rfind("\n") + 1]  # whole lines only
        for line in logline.file_lines(rel, text):
            report.write(line)


def _upload(spec: dict[str, Any], run_dir: Path, report: Reporter, storage) -> None:
    from ...artifacts.base import job_key

    for item in spec.get("uploads") or []:
        path = run_dir / item["path"]
        if not path.exists():
            continue
        key = job_key(spec["job"], spec["kind"], item["name"])
        try:
            if item.get("dir"):
                stage = run_dir / ".upload" / item["name"]
                stage.mkdir(parents=True, exist_ok=True)
                for child in path.iterdir():  # the files only: checkpoints are stored apart
                    if child.is_file():
                        shutil.copy2(child, stage / child.name)
                stored = storage.put_dir(stage, key)
            else:
                stored = storage.put_file(path, key)
            report.emit(logline.UPLOAD, name=item["name"], record=stored.to_record())
        except Exception as exc:
            report.emit(logline.UPLOAD, name=item["name"], error=str(exc))


def _node_address() -> str:
    """This node's address as other machines reach it (the interface of the default route)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks an interface
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _watch_ready(proc: subprocess.Popen, host: str, port: int, key: str | None, report: Reporter) -> None:
    request = urllib.request.Request(f"http://{host}:{port}/v1/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                if reply.status == 200:
                    report.emit(logline.READY, host=host, port=port)
                    return
        except OSError:
            pass
        time.sleep(1.0)


def run(spec_path: Path, report: Reporter | None = None) -> int:
    report = report or Reporter()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    source = Path(spec_path).resolve().parent
    base = Path(os.environ.get("TUNEBOT_NODE_DIR") or Path(tempfile.gettempdir()) / "tunebot-node")
    run_dir = base / str(spec.get("run_name") or f"job-{spec['job']}-{spec['attempt']}")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, symlinks=False)
    storage = None
    try:
        storage = _storage(spec, run_dir)
        _fetch_inputs(spec, run_dir, storage)
        _place_ray_workers(spec, run_dir)
    except Exception as exc:
        report.emit(logline.ERROR, text=f"could not prepare the job on this node: {exc}")
        report.emit(logline.EXIT, code=1)
        return 1
    env = {**os.environ, **(spec.get("env") or {})}
    serve = spec.get("serve")
    if serve:
        host = _node_address()
        port = int(serve.get("port") or _free_port("0.0.0.0"))
        env.update(API_HOST="0.0.0.0", API_PORT=str(port))
    stopping: list[int] = []

    def note(signum, _frame):
        # Ray's stop_job signals the whole process group; the command decides how to stop.
        stopping.append(signum)

    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    try:
        proc = subprocess.Popen(
            spec["command"], cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        report.emit(logline.ERROR, text=f"cannot start {spec['command'][0]}: {exc.strerror or exc}")
        report.emit(logline.EXIT, code=127)
        return 127
    forward = threading.Thread(target=_forward, args=(proc.stdout, report), daemon=True)
    forward.start()
    follower = _Follower(run_dir, spec, report, storage)
    follower.start()
    if serve:
        threading.Thread(
            target=_watch_ready, args=(proc, host if host != "127.0.0.1" else "127.0.0.1", port,
                                       env.get("API_KEY"), report), daemon=True,
        ).start()
    code = proc.wait()
    forward.join(10)
    follower.done.set()
    follower.join(10)
    follower.step(final=True)
    if code == 0 and not stopping:
        _mirror(spec, run_dir, report)
        if storage is not None:
            _upload(spec, run_dir, report, storage)
    report.emit(logline.EXIT, code=code)
    shutil.rmtree(run_dir, ignore_errors=True)
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print(f"usage: python -m runners.backends.ray.node {SPEC_NAME}", file=sys.stderr)
        return 2
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
