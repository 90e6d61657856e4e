"""A binary min-heap with a key function and first-in-first-out ties."""

import itertools
from collections.abc import Callable, Iterable
from typing import Any


class MinHeap:
    def __init__(self, items: Iterable[Any] = (), key: Callable[[Any], Any] | None = None) -> None:
        self._key = key if key is not None else (lambda item: item)
        self._counter = itertools.count()
        self._entries: list[tuple[Any, int, Any]] = []
        for item in items:
            self.push(item)

    def _less(self, i: int, j: int) -> bool:
        a, b = self._entries[i], self._entries[j]
        return (a[0], a[1]) < (b[0], b[1])

    def _swap(self, i: int, j: int) -> None:
        self._entries[i], self._entries[j] = self._entries[j], self._entries[i]

    def push(self, item: Any) -> None:
        self._entries.append((self._key(item), next(self._counter), item))
        child = len(self._entries) - 1
        while child > 0:
            parent = (child - 1) // 2
            if not self._less(child, parent):
                break
            self._swap(child, parent)
            child = parent

    def pop(self) -> Any:
        if not self._entries:
            raise IndexError("pop from empty heap")
        self._swap(0, len(self._entries) - 1)
        item = self._entries.pop()[2]
        parent = 0
        size = len(self._entries)
        while True:
            smallest = parent
            for child in (2 * parent + 1, 2 * parent + 2):
                if child < size and self._less(child, smallest):
                    smallest = child
            if smallest == parent:
                return item
            self._swap(parent, smallest)
            parent = smallest

    def peek(self) -> Any:
        if not self._entries:
            raise IndexError("peek at empty heap")
        return self._entries[0][2]

    def __len__(self) -> int:
        return len(self._entries)
