"""docs/reliability.md names, for each scenario, the fault test that measures it: those tests exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_reliability_table_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "::" in line]
    assert len(rows) >= 20
    current = None
    for row in rows:
        cell = row.split("|")[2]
        found = re.search(r"`(…|test_\w+)::(test_\w+)(…)?`", cell)
        assert found, row
        module, name, partial = found.groups()
        current = current if module == "…" else module
        source = (ROOT / "tests" / f"{current}.py").read_text(encoding="utf-8")
        names = re.findall(r"^def (test_\w+)\(", source, flags=re.MULTILINE)
        matching = [n for n in names if n == name or partial and n.startswith(name)]
        assert matching, f"{current}::{name} named in docs/reliability.md does not exist"
