"""Levenshtein distance and nearest-word lookup."""

from collections.abc import Iterable


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def closest(word: str, candidates: Iterable[str], max_distance: int | None = None) -> str | None:
    best: str | None = None
    best_distance = 0
    for candidate in candidates:
        distance = levenshtein(word, candidate)
        if max_distance is not None and distance > max_distance:
            continue
        if best is None or distance < best_distance:
            best, best_distance = candidate, distance
    return best
