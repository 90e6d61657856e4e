"""The one rule for a path inside the workspace or repository (pure)."""

from __future__ import annotations

from pathlib import PurePosixPath


def relative_path(path: str) -> str:
    """`path` normalized (`./a//b.py` → `a/b.py`); ValueError if it could leave the root.

    Refused: empty, absolute, any `..`, NUL, and a first part with a colon (`C:`, `file:`)
    that some tools read as a drive or a scheme.
    """
    if not path or "\0" in path:
        raise ValueError(f"{path!r} is not a path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"{path!r} is not a relative path inside the workspace")
    if pure == PurePosixPath(".") or ":" in pure.parts[0]:
        raise ValueError(f"{path!r} names no file inside the workspace")
    return str(pure)


def is_relative_path(path: str) -> bool:
    try:
        relative_path(path)
    except ValueError:
        return False
    return True
