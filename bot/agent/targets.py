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


def target_candidates(
    tests: dict[str, str],
    existing: frozenset[str] = frozenset(),
    installed: frozenset[str] = frozenset(),
) -> list[str]:
    """Module paths the tests import that are not the standard library, an installed package,
    a test, or an existing file; the most imported first.

    `from roman import to_roman` gives `roman.py`; `from pkg.mod import x` gives `pkg/mod.py`.
    Importing `requests` never makes `requests.py` a candidate when requests is installed.
    """
    test_modules = {PurePosixPath(p).stem for p in tests}
    counts: Counter[str] = Counter()
    for source in tests.values():
        for module in imported_modules(source):
            top = module.split(".")[0]
            if top in _NOT_TARGETS or top in installed or top in test_modules:
                continue
            path = module.replace(".", "/") + ".py"
            if path in existing:
                continue
            counts[path] += 1
    ranked = [path for path, _ in counts.most_common()]
    # `import pkg` next to `from pkg.mod import f` names one target, the submodule.
    return [p for p in ranked if not any(o.startswith(p[: -len(".py")] + "/") for o in ranked)]


def infer_target(
    tests: dict[str, str],
    existing: frozenset[str] = frozenset(),
    installed: frozenset[str] = frozenset(),
) -> str | None:
    """The one module the tests ask for, or None when there is none (or more than one)."""
    found = target_candidates(tests, existing, installed)
    return found[0] if len(found) == 1 else None
