"""Job kinds: each declared once (kinds/<name>.py) and found by name (`kind_of`)."""

from __future__ import annotations

from . import deploy, eval, export, train  # noqa: F401  (each registers itself)
from .base import Kind, MissingOutput, Serving, Watch, kind_of, register, unregister

__all__ = ["Kind", "MissingOutput", "Serving", "Watch", "kind_of", "register", "unregister"]
