import pytest
from minheap import MinHeap


def test_pops_in_ascending_order():
    heap = MinHeap([5, 3, 8, 1, 9, 2])
    assert [heap.pop() for _ in range(6)] == [1, 2, 3, 5, 8, 9]


def test_push_peek_and_len():
    heap = MinHeap()
    assert len(heap) == 0 and not heap
    for value in (7, 3, 5):
        heap.push(value)
    assert heap.peek() == 3
    assert len(heap) == 3 and heap


def test_matches_sorted_on_a_larger_input():
    values = [(i * 7919) % 1009 for i in range(500)]
    heap = MinHeap()
    for value in values:
        heap.push(value)
    assert [heap.pop() for _ in values] == sorted(values)


def test_key_function():
    heap = MinHeap(["pear", "fig", "banana", "kiwi"], key=len)
    heap.push("apple")
    assert [heap.pop() for _ in range(5)] == ["fig", "pear", "kiwi", "apple", "banana"]


def test_equal_items_come_out_first_in_first_out():
    heap = MinHeap([(2, "a"), (1, "b"), (2, "c")], key=lambda item: item[0])
    heap.push((1, "d"))
    heap.push((2, "e"))
    assert [heap.pop()[1] for _ in range(5)] == ["b", "d", "a", "c", "e"]


def test_items_need_not_be_comparable_with_a_key():
    heap = MinHeap(key=lambda d: d["p"])
    heap.push({"p": 2, "name": "low"})
    heap.push({"p": 1, "name": "high"})
    heap.push({"p": 1, "name": "high too"})
    assert [heap.pop()["name"] for _ in range(3)] == ["high", "high too", "low"]


def test_empty_heap_errors():
    heap = MinHeap()
    with pytest.raises(IndexError, match="pop from empty heap"):
        heap.pop()
    with pytest.raises(IndexError, match="peek at empty heap"):
        heap.peek()
