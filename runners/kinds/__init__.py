"""Job kinds: each declared once (kinds/<name>.py) and found by name (`kind_of`).

Every module of this package is imported once (`discover`): a new kind is its module, with no
import line to add here.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    Intake,
    Kind,
    MissingOutput,
    Request,
    Serving,
    Watch,
    is_known,
    kind_of,
    register,
    submittable,
    unregister,
)

__all__ = ["Intake", "Kind", "MissingOutput", "Request", "Serving", "Watch", "discover", "is_known",
           "kind_of", "register", "submittable", "unregister"]


def discover() -> list[str]:
    """Import the modules of this package not imported yet (each registers its kind); their names."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
            found.append(module.name)
    return found


discover()
