"""Signed deliveries of the wrong shape, generated: a 400 or an ignore, never a 5xx and never a
job (hypothesis; the in-process app with a real Redis and a real RQ queue)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue

from bot.config import load_settings
from bot.github.webhooks import json_too_deep
from bot.web import create_app
from tests.test_webhooks import MISSING, SECRET, labeled, post, retry_comment, with_field

# The fixtures are shared by every example on purpose: nothing may ever reach the queue.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values no field the router reads may hold, by what the field should be.
SCALARS = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
CONTAINERS = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.none()))
NOT_OBJECT = st.one_of(st.none(), SCALARS, st.lists(st.integers(), max_size=2))
NOT_OBJECT_OR_NULL = st.one_of(SCALARS, st.lists(st.integers(), max_size=2))
NOT_STRING_OR_NULL = st.one_of(st.booleans(), st.integers(), st.floats(), CONTAINERS)
NOT_STRING = st.one_of(st.none(), NOT_STRING_OR_NULL)
NOT_NAME = st.one_of(NOT_STRING, st.sampled_from(["", "a/b", "..", ".", "a b", "é", "x" * 101]))
NOT_ID_OR_NULL = st.one_of(
    st.booleans(),
    st.integers(max_value=0),
    st.integers(min_value=2**63),
    st.floats(),
    st.text(max_size=8),
    CONTAINERS,
)
NOT_ID = st.one_of(st.none(), NOT_ID_OR_NULL)
GONE = st.just(MISSING)

COMMON = {
    "repository": NOT_OBJECT | GONE,
    "repository.owner": NOT_OBJECT | GONE,
    "repository.owner.login": NOT_NAME | GONE,
    "repository.name": NOT_NAME | GONE,
    "installation": NOT_OBJECT_OR_NULL,
    "installation.id": NOT_ID_OR_NULL,
    "issue": NOT_OBJECT | GONE,
    "issue.number": NOT_ID | GONE,
    "issue.pull_request": NOT_OBJECT_OR_NULL,
}
BROKEN = {
    "issues": {
        **COMMON,
        "label": NOT_OBJECT_OR_NULL,
        "label.name": NOT_STRING_OR_NULL,
        "issue.state": NOT_STRING_OR_NULL,
        "sender": NOT_OBJECT | GONE,
        "sender.login": NOT_NAME | GONE,
        "action": NOT_STRING,
    },
    "issue_comment": {
        **COMMON,
        "comment": NOT_OBJECT | GONE,
        "comment.id": NOT_ID | GONE,
        "comment.body": NOT_STRING_OR_NULL,
        "comment.user": NOT_OBJECT_OR_NULL,
        "comment.user.login": NOT_NAME | GONE,
        "comment.user.type": NOT_STRING_OR_NULL,
        "action": NOT_STRING,
    },
}
# Well-formed triggers, each of which queues a job as it is.
TRIGGERS = {"issues": labeled, "issue_comment": retry_comment}


@pytest.fixture
def queue(redis_client: redis.Redis) -> Queue:
    return Queue("tdd-agent", connection=redis_client)


@pytest.fixture
def client(redis_client: redis.Redis, queue: Queue) -> TestClient:
    settings = load_settings({"WEBHOOK_SECRET": SECRET})
    return TestClient(create_app(settings, redis_client=redis_client, queue=queue))


def try_set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any] | None:
    """`with_field`, or None when an earlier change removed the path's parent."""
    try:
        return with_field(data, path, value)
    except (KeyError, TypeError):
        return None


@st.composite
def broken_delivery(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event = draw(st.sampled_from(sorted(BROKEN)))
    fields = BROKEN[event]
    paths = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))
    data = TRIGGERS[event]()
    changed = False
    for path in paths:
        mutated = try_set(data, path, draw(fields[path]))
        if mutated is not None:
            data, changed = mutated, True
    # A delivery with no change at all would be a valid trigger: not what this is about.
    if not changed:
        data = with_field(data, paths[0], MISSING) if paths[0] != "action" else data
        data = with_field(data, "comment" if event == "issue_comment" else "issue", None)
    return event, data


def assert_refused_or_ignored(response: Any, queue: Queue) -> None:
    assert response.status_code < 500, response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error and "\n" not in error
    else:
        assert response.status_code == 202 and "ignored" in response.json(), response.text
    assert queue.job_ids == []


def test_the_triggers_are_well_formed(client: TestClient, queue: Queue) -> None:
    # The fuzz below starts from these: each must queue a job untouched.
    for event, make in TRIGGERS.items():
        assert "queued" in post(client, event, make()).json()
    assert len(queue.job_ids) == 2


@settings(FUZZ, max_examples=150)
@given(delivery=broken_delivery())
def test_broken_triggers_are_refused_or_ignored(
    client: TestClient, queue: Queue, delivery: tuple[str, dict[str, Any]]
) -> None:
    event, data = delivery
    assert_refused_or_ignored(post(client, event, data), queue)


def nest(depth: int, shape: str) -> bytes:
    open_, close = ("[", "]") if shape == "array" else ('{"k": ', "}")
    return (open_ * depth + "0" + close * depth).encode()


@settings(FUZZ, max_examples=30)
@given(
    event=st.sampled_from(sorted(BROKEN)),
    path=st.sampled_from(["issue.body", "issue.number", "sender", "installation", "action"]),
    depth=st.integers(min_value=65, max_value=20_000),
    shape=st.sampled_from(["array", "object"]),
)
def test_deep_nesting_anywhere_is_refused(
    client: TestClient, queue: Queue, event: str, path: str, depth: int, shape: str
) -> None:
    body = json.dumps(with_field(TRIGGERS[event](), path, "DEEP")).encode()
    response = post(client, event, body.replace(b'"DEEP"', nest(depth, shape), 1))
    assert response.status_code == 400 and "deeper than 64" in response.json()["error"]
    assert queue.job_ids == []


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from('ab[]{}"\\\n/é'), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None)
@given(value=JSON_VALUES, limit=st.integers(min_value=0, max_value=8), ascii=st.booleans())
def test_depth_scan_agrees_with_the_parsed_depth(value: Any, limit: int, ascii: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii).encode()
    assert json_too_deep(body, limit) == (depth_of(value) > limit)
