"""How each job kind looks in Slack and at the terminal: one module per kind here
(bot/render/kinds/<kind>.py, found by `discover`), beside its declaration in runners/kinds/.

A kind with no module here still works: its messages use the generic job rendering, and its
success posts nothing beyond the root message's final state.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runners.job import Job

# (the job, its result's metrics, its artifacts) -> a message for the job's thread.
ResultRenderer = Callable[[Job, dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class KindView:
    name: str
    emoji: str = ""  # beside the kind in a job's header (":brain: Train #12")
    help_group: str = "Results"  # the help section it is listed in, unless help.py places it
    # A successful run's post in its thread, from its `result` event; None: no such post.
    result: ResultRenderer | None = None


_VIEWS: dict[str, KindView] = {}
_discovered = False
_discovering = threading.RLock()  # re-entrant: a view module may ask for a view while imported


def register_view(view: KindView) -> KindView:
    _VIEWS[view.name] = view
    return view


def unregister_view(name: str) -> None:
    _VIEWS.pop(name, None)


def discover() -> list[str]:
    """Import the modules of this package not imported yet (each registers its view); their names.
    Marked done only once every view is registered, under a lock: a second thread asking at
    start-up (the notifier beside a listener) waits rather than get a plain view and lose a post."""
    global _discovered
    with _discovering:
        found = []
        for module in pkgutil.iter_modules(__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
                found.append(module.name)
        _discovered = True
    return found


def view_of(kind: str) -> KindView:
    """The kind's view, or a plain one for a kind that has none."""
    if not _discovered:
        discover()
    return _VIEWS.get(kind) or KindView(kind)


def result_message(job: Job, data: dict[str, Any]) -> dict[str, Any] | None:
    """A `result` event of a kind with its own result view, as a message (the thread's and the
    terminal's): the event's metrics and artifacts over the job's. None when the view has none."""
    view = view_of(str(data.get("kind") or job.kind))
    if view.result is None:
        return None
    metrics = data.get("metrics") or job.metrics or {}
    artifacts = {**(job.artifacts or {}), **(data.get("artifacts") or {})}
    return view.result(job, metrics, artifacts)
