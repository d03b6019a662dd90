"""What the runner host can run on: its GPUs (via nvidia-smi, so the bot side needs no torch)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: str
    name: str
    memory_mib: int
    compute_capability: float


@dataclass(frozen=True)
class Hardware:
    host: str
    gpus: tuple[Gpu, ...]
    cpu_count: int

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def supports_bf16(self) -> bool:
        # bf16 needs Ampere (8.0) or newer on every GPU a job may get.
        return self.has_gpu and all(g.compute_capability >= 8.0 for g in self.gpus)

    @property
    def supports_fp16(self) -> bool:
        return self.has_gpu

    def to_dict(self) -> dict:
        return {"host": self.host, "cpu_count": self.cpu_count, "gpus": [g.__dict__ for g in self.gpus]}

    @classmethod
    def from_dict(cls, data: dict) -> Hardware:
        gpus = tuple(Gpu(**g) for g in data.get("gpus", []))
        return cls(host=data.get("host", ""), gpus=gpus, cpu_count=int(data.get("cpu_count", 1)))

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.host}: no GPU, {self.cpu_count} CPU cores"
        names = ", ".join(f"{g.index}: {g.name}" for g in self.gpus)
        return f"{self.host}: {len(self.gpus)} GPU(s) ({names})"


def _query_nvidia_smi() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            gpus.append(Gpu(parts[0], parts[1], int(float(parts[2])), float(parts[3])))
        except ValueError:
            continue
    return gpus


def _visible(gpus: list[Gpu]) -> list[Gpu]:
    """Honour CUDA_VISIBLE_DEVICES given as indices (the common case)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    return [g for g in gpus if g.index in wanted]


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    return Hardware(
        host=socket.gethostname(), gpus=tuple(_visible(_query_nvidia_smi())), cpu_count=os.cpu_count() or 1
    )


def slots_for(hardware: Hardware, gpus: list[str] | None, cpu_slots: int) -> list[str]:
    """The runner's slots: one per GPU it may use, else `cpu_slots` CPU slots."""
    if gpus is not None:
        return list(gpus)
    if hardware.has_gpu:
        return [g.index for g in hardware.gpus]
    return [f"cpu{i}" for i in range(cpu_slots)]
