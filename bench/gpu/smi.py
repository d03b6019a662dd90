"""nvidia-smi sampled in a thread while a bench phase runs (the benches' one GPU watcher)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time


def card() -> str | None:
    """nvidia-smi's 'name, driver, memory' line for the benches' records; None without a GPU."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    return subprocess.run(
        [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()


class GpuWatch:
    """nvidia-smi every 0.5 s: (time, utilisation %, memory used MiB) of the whole card (GPU 0)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_mib(self) -> int:
        return max((m for _, _, m in self.samples), default=0)

    def _run(self) -> None:
        exe = shutil.which("nvidia-smi")
        while exe and not self._stop.wait(self._interval):
            try:
                out = subprocess.run(
                    [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.splitlines()[0].split(",")
                self.samples.append((time.time(), int(out[0]), int(out[1])))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue

    def __enter__(self) -> GpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
