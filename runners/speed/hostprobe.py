"""How fast this host drives its GPU: a probe for eager estimates on a machine no job has run on.

An eager training step (no torch.compile) issues thousands of small kernels, and the host's CPU
issues each one (Python, the dispatcher, autograd, the launch): the same `seed-cli` job ran at
1,243 to 1,786 tokens/s on H200 hosts whose GPUs were the same (docs/benchmarks.md). Until a job
has finished on a runner, its estimates come from defaults measured elsewhere; this probe times a
tiny model's forward and backward on the GPU — kernel issue and almost no arithmetic — so an
estimate can say how this host compares with the defaults' before any job has run here
(`estimate.host_factors`). It runs in a child process (the runner itself imports no torch) and
takes a few seconds, most of them importing torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

log = logging.getLogger("runners.speed")

# Forward and backward of 16 small residual layers: ~250 kernels a step, each too small to keep
# the GPU busy, so the time is the host's issuing. argv: device, rounds, steps per round.
_PROBE = r"""
import json, statistics, sys, time
import torch

dev = torch.device(sys.argv[1])
rounds, steps = int(sys.argv[2]), int(sys.argv[3])
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
torch.manual_seed(0)
layers = [torch.nn.Linear(64, 64, device=dev) for _ in range(16)]
x = torch.randn(8, 64, device=dev)

def step():
    h = x
    for layer in layers:
        h = torch.nn.functional.silu(layer(h)) * 0.5 + h
    h.float().pow(2).mean().backward()

for _ in range(20):
    step()
sync()
times = []
for _ in range(rounds):
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    times.append((time.perf_counter() - t) / steps)
print(json.dumps({"ms": statistics.median(times) * 1e3}))
"""

PROBE_TIMEOUT_S = 120.0


def probe_host(
    gpu_index: str | None,
    *,
    python: str = sys.executable,
    rounds: int = 5,
    steps: int = 40,
    timeout: float = PROBE_TIMEOUT_S,
) -> float | None:
    """Milliseconds a probe step takes on this host's GPU `gpu_index` (None: on the CPU, for tests
    of the probe itself), or None when it cannot be measured (no torch, no CUDA, a timeout)."""
    env = dict(os.environ)
    if gpu_index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_index)
    device = "cuda:0" if gpu_index is not None else "cpu"
    try:
        done = subprocess.run(
            [python, "-c", _PROBE, device, str(int(rounds)), str(int(steps))],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("host probe did not run: %s", exc)
        return None
    if done.returncode != 0:
        log.warning("host probe failed (exit %s): %s", done.returncode, done.stderr.strip()[-300:])
        return None
    try:
        ms = float(json.loads(done.stdout.strip().splitlines()[-1])["ms"])
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("host probe printed no figure")
        return None
    return ms if math.isfinite(ms) and ms > 0 else None
