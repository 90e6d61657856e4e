"""Most frequent words of a text."""

from collections import Counter
from collections.abc import Iterable


def _words(text: str) -> list[str]:
    words = []
    current: list[str] = []
    for ch in text + " ":
        if ch.isalpha() or ch == "'":
            current.append(ch)
            continue
        word = "".join(current).strip("'")
        if word:
            words.append(word.lower())
        current = []
    return words


def top_words(text: str, n: int, ignore: Iterable[str] = ()) -> list[tuple[str, int]]:
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    skip = {word.lower() for word in ignore}
    counts = Counter(word for word in _words(text) if word not in skip)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
