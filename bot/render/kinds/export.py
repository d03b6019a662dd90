"""How an export job looks (its posts are in bot/render/job.py; help.py lists it)."""

from __future__ import annotations

from . import KindView, register_view

VIEW = register_view(KindView("export", emoji=":package:", help_group="Results"))
