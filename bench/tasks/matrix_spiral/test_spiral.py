import pytest
from spiral import spiral_matrix, spiral_order


def test_square_matrix():
    assert spiral_order([[1, 2, 3], [4, 5, 6], [7, 8, 9]]) == [1, 2, 3, 6, 9, 8, 7, 4, 5]


def test_wide_and_tall_matrices():
    wide = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert spiral_order(wide) == [1, 2, 3, 4, 8, 12, 11, 10, 9, 5, 6, 7]
    tall = [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert spiral_order(tall) == [1, 2, 4, 6, 8, 7, 5, 3]


def test_single_row_and_single_column():
    assert spiral_order([[1, 2, 3]]) == [1, 2, 3]
    assert spiral_order([[1], [2], [3]]) == [1, 2, 3]
    assert spiral_order([["x"]]) == ["x"]


def test_empty_matrices():
    assert spiral_order([]) == []
    assert spiral_order([[]]) == []


def test_input_is_not_modified():
    matrix = [[1, 2], [3, 4]]
    spiral_order(matrix)
    assert matrix == [[1, 2], [3, 4]]


def test_ragged_rows():
    with pytest.raises(ValueError, match="rows must all have the same length"):
        spiral_order([[1, 2], [3]])


def test_spiral_matrix():
    assert spiral_matrix(3) == [[1, 2, 3], [8, 9, 4], [7, 6, 5]]
    assert spiral_matrix(1) == [[1]]
    assert spiral_matrix(0) == []
    assert spiral_order(spiral_matrix(6)) == list(range(1, 37))


def test_spiral_matrix_negative():
    with pytest.raises(ValueError):
        spiral_matrix(-1)
