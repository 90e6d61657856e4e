"""Merging closed intervals."""

from collections.abc import Iterable, Sequence

Number = int | float


def merge(intervals: Iterable[Sequence[Number]]) -> list[tuple[Number, Number]]:
    pairs = []
    for start, end in intervals:
        if start > end:
            raise ValueError(f"invalid interval ({start}, {end}): start > end")
        pairs.append((start, end))
    merged: list[tuple[Number, Number]] = []
    for start, end in sorted(pairs):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def total_length(intervals: Iterable[Sequence[Number]]) -> Number:
    return sum(end - start for start, end in merge(intervals))
