import pytest
from lru import LRUCache


def test_get_and_put():
    cache = LRUCache(2)
    assert cache.put("a", 1) is None
    assert cache.put("b", 2) is None
    assert cache.get("a") == 1
    assert cache.get("b") == 2
    assert len(cache) == 2


def test_missing_key_returns_default():
    cache = LRUCache(1)
    assert cache.get("nope") is None
    assert cache.get("nope", 42) == 42


def test_evicts_least_recently_used():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    assert cache.put("c", 3) == "b"
    assert "b" not in cache
    assert cache.keys() == ["a", "c"]


def test_update_refreshes_recency_without_evicting():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.put("a", 10) is None
    assert len(cache) == 2
    assert cache.put("c", 3) == "b"
    assert cache.get("a") == 10


def test_contains_does_not_touch_recency():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert "a" in cache
    assert cache.put("c", 3) == "a"


def test_hits_and_misses():
    cache = LRUCache(3)
    cache.put(1, "one")
    cache.get(1)
    cache.get(1)
    cache.get(2)
    _ = 1 in cache
    assert (cache.hits, cache.misses) == (2, 1)


def test_capacity_one_and_many_operations():
    cache = LRUCache(1)
    for i in range(100):
        evicted = cache.put(i, i * i)
        assert evicted == (i - 1 if i else None)
    assert cache.keys() == [99]
    assert cache.get(99) == 9801


@pytest.mark.parametrize("capacity", [0, -1])
def test_bad_capacity(capacity):
    with pytest.raises(ValueError):
        LRUCache(capacity)
