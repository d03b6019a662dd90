"""One real Ray head for the test session, on this machine, shared by every Ray test.

`ray start --head --num-cpus 24`: logical CPUs (LLaMA-Factory's Ray trainer reserves 10 a
worker), no GPUs, the dashboard (the Job Submission API) bound to 127.0.0.1, its files under a
temp dir of its own. At the end only this head's processes are stopped — found by that temp dir
and its GCS address — never every Ray process on the machine (`ray stop` would take other
people's clusters too). Works as root (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
HEAD_CPUS = 24


@dataclass
class RayHead:
    dashboard: str  # http://127.0.0.1:PORT, what TUNEBOT_RAY_ADDRESS names
    gcs: str
    temp_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _head_processes(marks: list[str]) -> list:
    """This head's processes and their descendants (psutil comes with ray[default])."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if any(mark in line for mark in marks):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_head(marks: list[str]) -> None:
    import psutil

    procs = _head_processes(marks)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="session")
def ray_head():
    pytest.importorskip("ray.job_submission", reason="`make` installs ray[default] (requirements/ray.txt)")
    # Unix socket paths under it must stay short (~107 characters).
    temp_dir = Path(tempfile.mkdtemp(prefix="tb-ray-", dir="/tmp"))
    gcs_port, dash_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Job drivers inherit the head's environment: no GPU, no hub round trips, quiet Ray.
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "RAY_DEDUP_LOGS": "0",
    }
    argv = [
        str(VENV_BIN / "ray"), "start", "--head",
        "--num-cpus", str(HEAD_CPUS), "--num-gpus", "0",
        "--port", str(gcs_port),
        "--node-ip-address", "127.0.0.1",
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
        "--temp-dir", str(temp_dir), "--disable-usage-stats",
    ]  # fmt: skip
    started = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    marks = [str(temp_dir), f":{gcs_port}"]
    if started.returncode != 0:
        stop_head(marks)
        shutil.rmtree(temp_dir, ignore_errors=True)
        pytest.fail(f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    address = re.search(r"--address='([^']+)'", started.stdout + started.stderr)
    head = RayHead(
        dashboard=f"http://127.0.0.1:{dash_port}",
        gcs=address.group(1) if address else f"127.0.0.1:{gcs_port}",
        temp_dir=temp_dir,
    )
    _wait_for_dashboard(head.dashboard)
    yield head
    stop_head(marks)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
