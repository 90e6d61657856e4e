"""Fitting text into a limit: one rule for logs, prompts, comments and terminals (pure)."""

from __future__ import annotations


def joined(head: str, dropped: int, tail: str, unit: str = "characters") -> str:
    """Head and tail around the one note every clipped log carries."""
    return f"{head}\n[... {dropped} {unit} clipped ...]\n{tail}"


def clip(text: str, limit: int, *, head_share: float = 0.4) -> str:
    """Head and tail of `text` within about `limit` characters, with a note of the cut.

    The tail gets the larger share: pytest prints the failures and the summary last.
    """
    if len(text) <= limit:
        return text
    head = int(limit * head_share)
    tail = limit - head
    return joined(text[:head], len(text) - limit, text[-tail:])


def tail_lines(text: str, limit: int) -> str:
    """The end of `text` within `limit` characters, starting at a line boundary."""
    text = text.strip()
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    return "…\n" + tail[tail.find("\n") + 1 :]


def cut(text: str, limit: int, suffix: str = "…") -> str:
    """`text` cut to `limit` characters, ending in `suffix` when it was cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(suffix), 0)] + suffix
