"""Where job processes run: the local host (default) or, later, a cluster."""

from .base import Backend, LaunchSpec, ProcessHandle
from .local import LocalBackend

__all__ = ["Backend", "LaunchSpec", "LocalBackend", "ProcessHandle"]
