"""Job processes on a Ray cluster (TUNEBOT_BACKEND=ray, TUNEBOT_RAY_ADDRESS = its dashboard).

Each attempt of a job is one Ray job (cluster.py) running the node wrapper
(node.py) around the same LLaMA-Factory command and YAML the local backend runs.
While the runner polls, the Ray job's log stream is applied to the job's folder on the runner's
host (job.py `Mirror`): the runner's follower, plots, result readers and
failure explanations then work on that folder exactly as for a local job.

Its handle: {"backend": "ray", "submission_id", "work_dir", "log_path"}. How far the log has been
read is kept in the job folder (`tunebot-remote.json`), so a restarted runner on the same host
reads on from there and nothing is posted twice.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import yaml

from ...errors import UserError
from ...hardware import Hardware
from ..base import Backend, Handle, LaunchSpec
from .cluster import Capacity, RayCluster, RayHandle, RayStatus, submission_id
from .job import Mirror, stage, store_spec

log = logging.getLogger(__name__)

NAME = "ray"
# Variables of the runner's job environment that mean something on a node too.
_FOR_NODE = ("API_KEY", "API_MODEL_NAME", "HF_HUB_OFFLINE")
STOPPED_CODE = -15  # what a stopped Ray job reports as its exit status (SIGTERM)
_SUBCOMMANDS = ("train", "export", "api", "webchat")


def cluster_of(settings) -> RayCluster:
    if not settings.ray_address:
        raise UserError(
            "TUNEBOT_BACKEND=ray needs TUNEBOT_RAY_ADDRESS, the Ray cluster's dashboard address.",
            field="TUNEBOT_RAY_ADDRESS",
            fix="TUNEBOT_RAY_ADDRESS=http://<head>:8265 (see README: When one machine is not enough)",
        )
    return RayCluster(settings.ray_address, namespace=settings.ray_namespace)


def job_resources(capacity: Capacity, n_slots: int, workers: int) -> tuple[float, float]:
    """(CPUs, GPUs) a request holds on the cluster: GPUs on a GPU cluster (`gpus=N`, or one a
    worker), else CPUs; LLaMA-Factory's Ray trainer reserves 10 CPUs a worker, plus its driver's one."""
    if workers > 1:
        return 1.0 + 10.0 * workers, float(workers) if capacity.gpus else 0.0
    gpus = float(n_slots) if capacity.gpus or n_slots > 1 else 0.0
    return 1.0, gpus


def check_request(settings, n_slots: int, workers: int) -> Capacity:
    """Refuse up front what the cluster could never run, naming what it has (before any GPU time)."""
    cluster = cluster_of(settings)
    capacity = cluster.capacity()
    cpus, gpus = job_resources(capacity, n_slots, workers)
    return cluster.check_fits(cpus, gpus)


class RayBackend(Backend):
    name = NAME

    def __init__(self, settings, hardware: Hardware | None = None, cluster: RayCluster | None = None):
        self.settings = settings
        self.cluster = cluster or cluster_of(settings)

    # --- capacity ----------------------------------------------------------------------
    def capacity(self) -> list[str]:
        """One slot per GPU of the cluster; on a CPU-only cluster TUNEBOT_CPU_SLOTS jobs at once."""
        cap = self.cluster.capacity()
        if cap.gpus:
            return [f"ray-gpu{i}" for i in range(int(cap.gpus))]
        return [f"ray-cpu{i}" for i in range(self.settings.cpu_slots)]

    # --- starting ----------------------------------------------------------------------
    def start(self, spec: LaunchSpec) -> Handle:
        job = spec.job
        if job is None:
            raise OSError("the Ray backend starts tunebot jobs only (no job given)")
        args = yaml.safe_load((spec.cwd / "config.yaml").read_text(encoding="utf-8")) or {}
        sub = next((a for a in spec.argv if a in _SUBCOMMANDS), "train")
        env = {k: spec.env[k] for k in _FOR_NODE if k in spec.env}
        env.update(self.settings.job_env)
        # A deployment serves on its node at the port the runner chose (and keeps on the job).
        serve = {"port": int(spec.env.get("API_PORT") or 0) or None} if job.kind == "deploy" else None
        capacity = self.cluster.capacity()
        workers = int((job.spec or {}).get("workers") or 1)
        cpus, gpus = job_resources(capacity, job.n_slots, workers)
        sid = submission_id(self.cluster.namespace, job.id, job.attempt)
        staged = stage(
            job_id=job.id,
            attempt=job.attempt,
            kind=job.kind,
            args=args,
            work_dir=spec.cwd,
            command=[*shlex.split(self.settings.ray_cli), sub],
            store=store_spec(self.settings.storage, self.settings.data_dir, self.settings.ray_shared_dir),
            parent_artifacts=spec.parent.artifacts if spec.parent is not None else None,
            workers=workers,
            gpus=int(gpus),
            serve=serve,
            env=env,
            run_name=sid,
        )
        Mirror(spec.cwd, spec.log_path).reset()
        try:
            self.cluster.submit(
                sid,
                staged.folder,
                num_cpus=1.0 if workers > 1 else cpus,
                num_gpus=gpus if workers <= 1 else 0.0,
                env={},  # everything the node needs is in the folder: Ray's dashboard shows env_vars
                metadata={"tunebot_job": str(job.id), "attempt": str(job.attempt), "kind": job.kind},
            )
        except (RuntimeError, ConnectionError, UserError) as exc:
            text = exc.text() if isinstance(exc, UserError) else str(exc)
            raise OSError(f"the Ray cluster refused the job: {text}") from None
        return {
            "backend": NAME,
            "submission_id": sid,
            "work_dir": str(spec.cwd),
            "log_path": str(spec.log_path),
        }

    # --- following ---------------------------------------------------------------------
    def _mirror(self, handle: Handle) -> Mirror:
        return Mirror(Path(handle["work_dir"]), Path(handle["log_path"]))

    def _pump(self, handle: Handle) -> Mirror:
        """Apply what the Ray job printed since the last read to the job's folder."""
        mirror = self._mirror(handle)
        ray_handle = RayHandle(handle["submission_id"], log_offset=mirror.offset())
        chunk = self.cluster.read_log(ray_handle)
        mirror.apply(chunk.text, chunk.events, offset=ray_handle.log_offset)
        return mirror

    def _code(self, handle: Handle, status: RayStatus, mirror: Mirror) -> int:
        reported = mirror.remote().get("exit_code")
        if reported is not None:
            return int(reported)
        if status.state == "SUCCEEDED":
            return 0
        if status.state == "STOPPED":
            return STOPPED_CODE
        # The wrapper never said how the command ended: the node or the job's driver died.
        # Ray's words are the reason (the exit status of a killed driver would read as "out of memory").
        reason = f"The Ray job {handle['submission_id']} failed: {ray_reason(status.message)}."
        mirror.note(f"tunebot: {reason}")
        mirror.set_lost(reason)
        return 1

    def poll(self, handle: Handle) -> int | None:
        try:
            status = self.cluster.status(RayHandle(handle["submission_id"]))
            mirror = self._pump(handle)
        except (RuntimeError, ConnectionError, OSError, UserError) as exc:
            # The dashboard being away a moment is not the job's end: look again next tick.
            log.warning("Ray job %s: cannot read its status (%s)", handle.get("submission_id"), exc)
            return None
        if not status.finished:
            return None
        mirror = self._pump(handle)  # the last lines, written as it ended
        return self._code(handle, status, mirror)

    def cancel(self, handle: Handle, *, force: bool = False) -> None:
        # Ray's stop_job sends SIGTERM to the job's processes, then SIGKILL after its own grace.
        try:
            self.cluster.stop(RayHandle(handle["submission_id"]))
        except (ConnectionError, OSError) as exc:
            log.warning("Ray job %s: stop failed (%s)", handle.get("submission_id"), exc)

    def reattach(self, handle: Handle) -> bool:
        if handle.get("backend") != NAME:
            return False
        try:
            found = self.cluster.find(handle["submission_id"])
        except (RuntimeError, ConnectionError, OSError):
            return True  # the cluster is away for a moment: keep following; poll tries again
        return found is not None and not found.finished

    def outcome(self, handle: Handle) -> int | None:
        """How a Ray job that ended while no runner watched ended (Ray keeps its status and log)."""
        if handle.get("backend") != NAME:
            return None
        try:
            status = self.cluster.find(handle["submission_id"])
            if status is None or not status.finished:
                return None
            mirror = self._pump(handle)
        except (RuntimeError, ConnectionError, OSError, UserError):
            return None
        return self._code(handle, status, mirror)

    def lost(self, handle: Handle) -> str | None:
        return self._mirror(handle).remote().get("lost")

    def stored(self, handle: Handle) -> dict[str, dict[str, Any]]:
        return dict(self._mirror(handle).remote().get("uploads") or {})

    def endpoint(self, handle: Handle, host: str, port: int) -> str:
        published = self._mirror(handle).remote().get("endpoint")
        if published:
            return f"http://{published['host']}:{published['port']}"
        return ""  # not published yet: no address, so nothing is taken for ready


def ray_reason(message: str | None) -> str:
    """The first sentence of Ray's status message (it goes on with the job's last log lines)."""
    text = (message or "").strip().splitlines()[0] if (message or "").strip() else "no reason given"
    return text.split(", last available logs")[0].strip().rstrip(".:")


def _factory(settings, hardware: Hardware) -> Backend:
    return RayBackend(settings, hardware)
