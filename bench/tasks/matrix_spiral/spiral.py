"""Reading and filling matrices in clockwise spiral order."""

from typing import Any


def _spiral_cells(rows: int, cols: int) -> list[tuple[int, int]]:
    cells = []
    top, bottom, left, right = 0, rows - 1, 0, cols - 1
    while top <= bottom and left <= right:
        cells.extend((top, c) for c in range(left, right + 1))
        cells.extend((r, right) for r in range(top + 1, bottom + 1))
        if top < bottom:
            cells.extend((bottom, c) for c in range(right - 1, left - 1, -1))
        if left < right:
            cells.extend((r, left) for r in range(bottom - 1, top, -1))
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return cells


def spiral_order(matrix: list[list[Any]]) -> list[Any]:
    if not matrix:
        return []
    width = len(matrix[0])
    if any(len(row) != width for row in matrix):
        raise ValueError("rows must all have the same length")
    return [matrix[r][c] for r, c in _spiral_cells(len(matrix), width)]


def spiral_matrix(n: int) -> list[list[int]]:
    if n < 0:
        raise ValueError(f"n must not be negative, not {n}")
    matrix = [[0] * n for _ in range(n)]
    for value, (r, c) in enumerate(_spiral_cells(n, n), start=1):
        matrix[r][c] = value
    return matrix
