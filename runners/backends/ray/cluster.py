"""Jobs on a Ray cluster, through Ray's Job Submission API (the cluster's dashboard address).

Each tunebot job attempt is one Ray job whose submission id is derived from the job id and the
attempt (`tunebot-12-a1`): submitting again — a redelivered request, a runner that restarted
between submitting and recording — finds the Ray job already there and follows it instead of
starting a second one. The Ray job runs `python -m runners.backends.ray.node` in a folder Ray carries
to the node (`runtime_env.working_dir`: the job's config, dataset and node spec; `py_modules`:
this `runners` package, so the node runs the same wrapper as the runner). The wrapper reports
through the job's log stream (logline.py), which `read_log` follows from an offset the
handle keeps, so a re-attached runner reads on from where the last one stopped.

The cluster's size comes from the dashboard's own resource report (the numbers
`ray.cluster_resources()` / `ray.available_resources()` give, without making the runner a Ray
driver): a request larger than the whole cluster is refused with those numbers; one that fits
but not now waits in tunebot's queue.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError
from . import logline

RUNNERS_PACKAGE = Path(__file__).resolve().parents[2]
# Ray's terminal states, and what tunebot makes of them.
PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED = "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"
TERMINAL = frozenset({STOPPED, SUCCEEDED, FAILED})
_NAMESPACE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def submission_id(namespace: str, job_id: int, attempt: int) -> str:
    """The Ray submission id of one attempt of a tunebot job (one per attempt: a resume is a new Ray job)."""
    return f"{namespace}-{int(job_id)}-a{int(attempt)}"


@dataclass
class Capacity:
    """What the cluster has in all (alive nodes) and what is free now."""

    cpus: float
    gpus: float
    free_cpus: float
    free_gpus: float
    nodes: int

    def describe(self) -> str:
        nodes = f"{self.nodes} node{'s' if self.nodes != 1 else ''}"
        gpus = f"{self.gpus:g} GPU{'s' if self.gpus != 1 else ''}"
        free = f"{self.free_gpus:g} GPUs and {self.free_cpus:g} CPUs free now"
        return f"{nodes}, {gpus} and {self.cpus:g} CPUs in all ({free})"


@dataclass
class RayHandle:
    """What a runner keeps to follow a Ray job; JSON-serialisable, valid in any later runner."""

    submission_id: str
    log_offset: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RayHandle:
        return cls(submission_id=str(data["submission_id"]), log_offset=int(data.get("log_offset") or 0))


@dataclass
class RayStatus:
    state: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str = ""
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass
class LogChunk:
    """New output of a Ray job: its plain text and the structured lines found in it."""

    text: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class RayCluster:
    """One Ray cluster, reached through its dashboard (TUNEBOT_RAY_ADDRESS)."""

    def __init__(self, address: str, *, namespace: str = "tunebot", timeout: float = 30.0):
        if not _NAMESPACE.match(namespace):
            raise UserError(
                f"TUNEBOT_RAY_NAMESPACE={namespace!r} is not usable in a Ray submission id.",
                field="TUNEBOT_RAY_NAMESPACE",
                fix="lower-case letters, digits and -, starting with a letter (e.g. tunebot)",
            )
        self.address = address if "://" in address else f"http://{address}"
        self.namespace = namespace
        self.timeout = timeout
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            # Ray's client logs each package upload at INFO: noise on the terminal of `tunebot run`.
            for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
                logging.getLogger(name).setLevel(logging.WARNING)

            try:
                self._client = JobSubmissionClient(self.address)
            except (ConnectionError, RuntimeError) as exc:
                raise UserError(
                    f"The Ray cluster at {self.address} does not answer ({exc}).",
                    field="TUNEBOT_RAY_ADDRESS",
                    fix="start it (`ray start --head --dashboard-host …`) or correct TUNEBOT_RAY_ADDRESS",
                ) from None
        return self._client

    # --- capacity ----------------------------------------------------------------------
    def capacity(self) -> Capacity:
        nodes = self._get("/nodes?view=summary")
        # The autoscaler's report (what is in use) lags a node's start by a few seconds: then all is free.
        status = self._get("/api/cluster_status")
        return parse_capacity(nodes, status)

    def _get(self, path: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.address}{path}", timeout=self.timeout) as reply:
                return json.load(reply)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"The Ray cluster at {self.address} does not answer ({exc}).",
                field="TUNEBOT_RAY_ADDRESS",
                fix="start it or correct TUNEBOT_RAY_ADDRESS",
            ) from None

    def check_fits(self, cpus: float, gpus: float) -> Capacity:
        """Refuse up front what this cluster could never run; the capacity otherwise."""
        cap = self.capacity()
        if gpus > cap.gpus or cpus > cap.cpus:
            asked = f"{gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else f"{cpus:g} CPUs"
            raise UserError(
                f"This job needs {asked}; the Ray cluster has {cap.describe()}.",
                field="gpus" if gpus > cap.gpus else "workers",
                fix="ask for fewer, or add nodes to the cluster (`ray start --address …` on a GPU host)",
            )
        return cap

    # --- jobs --------------------------------------------------------------------------
    def find(self, sid: str) -> RayStatus | None:
        """The Ray job with this submission id, or None if the cluster never saw it."""
        try:
            info = self.client.get_job_info(sid)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise
        state = str(getattr(info.status, "value", info.status))
        return RayStatus(state=state, message=info.message or "", exit_code=info.driver_exit_code)

    def submit(
        self,
        sid: str,
        folder: Path,
        *,
        num_cpus: float,
        num_gpus: float,
        env: dict[str, str],
        metadata: dict[str, str],
    ) -> RayHandle:
        """Start the job in `folder` (node spec inside) unless a Ray job with this id exists already."""
        if self.find(sid) is None:
            runtime_env = {
                "working_dir": str(folder),
                "py_modules": [str(RUNNERS_PACKAGE)],
                "env_vars": env,
            }
            try:
                self.client.submit_job(
                    entrypoint="python -m runners.backends.ray.node tunebot-node.json",
                    submission_id=sid,
                    runtime_env=runtime_env,
                    entrypoint_num_cpus=num_cpus,
                    entrypoint_num_gpus=num_gpus,
                    metadata=metadata,
                )
            except RuntimeError as exc:
                if "already" not in str(exc):  # another runner submitted it a moment ago: follow that
                    raise
        return RayHandle(submission_id=sid)

    def status(self, handle: RayHandle) -> RayStatus:
        found = self.find(handle.submission_id)
        if found is None:
            return RayStatus(FAILED, "the Ray cluster no longer knows this job (it was restarted?)")
        return found

    def read_log(self, handle: RayHandle) -> LogChunk:
        """Output since the handle's offset, complete lines only; advances the offset."""
        text = self.client.get_job_logs(handle.submission_id) or ""
        if len(text) < handle.log_offset:
            handle.log_offset = 0  # not expected from Ray; read again rather than miss lines
        end = text.rfind("\n")
        if end < handle.log_offset:
            return LogChunk()
        fresh = text[handle.log_offset : end + 1]
        handle.log_offset = end + 1
        chunk = LogChunk()
        plain: list[str] = []
        for line in fresh.splitlines(keepends=True):
            parsed = logline.parse(line)
            if parsed is None:
                plain.append(line)
            else:
                chunk.events.append(parsed)
                before = line[: line.find(logline.PREFIX)]
                if before.strip():
                    plain.append(before + "\n")
        chunk.text = "".join(plain)
        return chunk

    def stop(self, handle: RayHandle) -> None:
        try:
            self.client.stop_job(handle.submission_id)
        except RuntimeError:
            pass  # ended or never started: nothing to stop


def parse_capacity(nodes: dict[str, Any], status: dict[str, Any]) -> Capacity:
    """The dashboard's node summary and cluster status -> totals of alive nodes, and what is free (pure)."""
    summary = (nodes.get("data") or {}).get("summary") or []
    alive = [n.get("raylet") or {} for n in summary if (n.get("raylet") or {}).get("state") == "ALIVE"]
    cpus = sum(float((n.get("resourcesTotal") or {}).get("CPU") or 0) for n in alive)
    gpus = sum(float((n.get("resourcesTotal") or {}).get("GPU") or 0) for n in alive)
    report = ((status.get("data") or {}).get("clusterStatus") or {}).get("loadMetricsReport") or {}
    usage = report.get("usage") or {}

    def used(name: str) -> float:
        pair = usage.get(name) or [0.0]
        return float(pair[0] or 0)

    return Capacity(
        cpus=cpus,
        gpus=gpus,
        free_cpus=max(0.0, cpus - used("CPU")),
        free_gpus=max(0.0, gpus - used("GPU")),
        nodes=len(alive),
    )
