"""The runner: one `Worker` per runner process (loop.py) and the collaborators it owns, one concept
per module: launch.py, follow.py, finish.py, uploads.py, estimates.py."""

from __future__ import annotations

from .loop import Worker, wait_for
from .running import Running
from .uploads import UPLOAD_PENDING

__all__ = ["UPLOAD_PENDING", "Running", "Worker", "wait_for"]
