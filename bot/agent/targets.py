"""Inferring the module to write from what the tests import (pure)."""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import PurePosixPath

_NOT_TARGETS = frozenset(sys.stdlib_module_names) | {
    "pytest",
    "hypothesis",
    "_pytest",
    "conftest",
    "numpy",
    "pandas",
}


def imported_modules(source: str) -> list[str]:
    """Top-level modules a test file imports, in order (nothing when it does not parse)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def infer_target(tests: dict[str, str], existing: frozenset[str] = frozenset()) -> str | None:
    """The module path the tests import that is not stdlib, a test, or an existing file.

    `from roman import to_roman` gives `roman.py`; `from pkg.mod import x` gives `pkg/mod.py`.
    """
    test_modules = {PurePosixPath(p).stem for p in tests}
    counts: Counter[str] = Counter()
    for source in tests.values():
        for module in imported_modules(source):
            top = module.split(".")[0]
            if top in _NOT_TARGETS or top in test_modules:
                continue
            path = module.replace(".", "/") + ".py"
            if path in existing:
                continue
            counts[path] += 1
    if not counts:
        return None
    return counts.most_common(1)[0][0]
