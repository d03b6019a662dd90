"""The engine's layout: imports point one way, no module of runners/ imports another in a circle,
and the top level stays small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNERS = Path(__file__).resolve().parents[1] / "runners"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNNERS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of runners/ this file imports, at the top or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in RUNNERS.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_engine_never_imports_the_bot_or_slack():
    for path in RUNNERS.rglob("*.py"):
        for module in _imports(path):
            assert not module.startswith(("bot", "slack_bolt", "slack_sdk")), f"{path} imports {module}"


def test_no_module_of_the_engine_imports_itself_through_others():
    graph = _graph()
    # A package's __init__ gathers its own modules: a module reaching its own package is no cycle.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError(" -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_engine_top_level_holds_at_most_fifteen_modules():
    top = [p.name for p in RUNNERS.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 15, sorted(top)
