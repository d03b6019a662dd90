"""Read YAML someone pasted without letting it cost more than a config is worth.

A few hundred bytes of anchors and aliases (`a: &a [x, x]`, `b: &b [*a, *a]`, …) stand for a
value with billions of items once anything walks it, and 500 nested `[` overflow the composer's
recursion. So before a value is built: the text is capped in size, the event stream (read
without recursion) is capped in depth and count, and the node graph's *expanded* size is counted
once per node (memoised, so counting is linear in the text) and refused above a budget.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import UserError

MAX_BYTES = 64 * 1024  # LLaMA-Factory configs are a few hundred bytes
MAX_DEPTH = 16  # its configs are a flat mapping, sometimes with a list or a small dict
MAX_EVENTS = 20_000
MAX_NODES = 10_000  # scalars, lists and mappings once every alias is expanded
_FIX = "paste a LLaMA-Factory config: one `key: value` per line, no anchors or aliases needed"

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_events(text: str) -> None:
    depth = events = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        events += 1
        if events > MAX_EVENTS:
            raise UserError(f"The YAML has too many items (more than {MAX_EVENTS}).", field="yaml", fix=_FIX)
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(
                    f"The YAML is nested too deeply (more than {MAX_DEPTH} levels).", field="yaml", fix=_FIX
                )
        elif isinstance(event, _CLOSE):
            depth -= 1


def _self_reference() -> UserError:
    return UserError("The YAML refers to itself (an alias inside its own anchor).", field="yaml", fix=_FIX)


def expanded_size(root: yaml.Node | None, budget: int = MAX_NODES) -> int:
    """How many nodes the document stands for with every alias expanded (stops past `budget`)."""
    if root is None:
        return 0
    sizes: dict[int, int] = {}
    # Iterative post-order walk: each node's size is computed once, however often it is aliased.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in children)
            sizes[key] = min(total, budget + 1)
            continue
        if key in on_path:  # an alias inside its own anchor: an endless value
            raise _self_reference()
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) not in sizes:
                if id(child) in on_path:
                    raise _self_reference()
                stack.append((child, False))
    return sizes[id(root)]


def load(text: str) -> Any:
    """`yaml.safe_load(text)` within the bounds above; a UserError says which one was passed."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_BYTES:
        raise UserError(
            f"The YAML is {size // 1024} KiB; a config is at most {MAX_BYTES // 1024} KiB.",
            field="yaml",
            fix=_FIX,
        )
    _check_events(text)
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if expanded_size(root) > MAX_NODES:
        raise UserError(
            f"The YAML's aliases expand to more than {MAX_NODES} items.", field="yaml", fix=_FIX
        )
    return yaml.safe_load(text)
