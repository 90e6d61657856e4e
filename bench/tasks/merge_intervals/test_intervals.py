import pytest
from intervals import merge, total_length


def test_overlapping_intervals_merge():
    assert merge([(1, 3), (2, 6), (8, 10), (15, 18)]) == [(1, 6), (8, 10), (15, 18)]


def test_touching_intervals_merge_but_gaps_stay():
    assert merge([(1, 3), (3, 5)]) == [(1, 5)]
    assert merge([(1, 2), (3, 4)]) == [(1, 2), (3, 4)]


def test_unsorted_nested_and_list_input():
    assert merge([[10, 12], [1, 9], [2, 3], [0, 1]]) == [(0, 9), (10, 12)]
    assert merge([(5, 5)]) == [(5, 5)]
    assert merge([]) == []


def test_input_is_not_modified():
    data = [(4, 6), (1, 5)]
    merge(data)
    assert data == [(4, 6), (1, 5)]


def test_total_length():
    assert total_length([(1, 3), (2, 6), (8, 10)]) == 7
    assert total_length([]) == 0
    assert total_length([(0.5, 1.0), (0.75, 2.0)]) == 1.5


def test_invalid_interval():
    with pytest.raises(ValueError, match=r"^invalid interval \(5, 2\): start > end$"):
        merge([(1, 2), (5, 2)])
    with pytest.raises(ValueError, match="start > end"):
        total_length([(3, 1)])
