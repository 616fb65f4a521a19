"""The test tree itself: `pytest` over all of tests/ must collect (CI runs exactly that)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    # The test folders are not packages: two modules with one basename stop the collection.
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
