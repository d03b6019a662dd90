"""The terminal face: the `tunebot` command line (`main`), its job printer (`terminal`) and the demo."""

from .main import main

__all__ = ["main"]
