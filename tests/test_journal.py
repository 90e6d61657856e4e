"""The step journal against a real Redis: replay rules, in-flight steps, leases and fencing."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from bot.errors import JournalMismatch, LeaseLost
from bot.journal import Decision, RunJournal, StepRecord, decide, digest, list_runs, load_run
from bot.redis_server import connect


def rec(status: str, dig: str = "d1", kind: str = "model") -> StepRecord:
    return StepRecord(seq=1, kind=kind, digest=dig, status=status)


def test_replay_rules_are_plain_decisions() -> None:
    assert decide(None, seq=1, kind="model", input_digest="d1") is Decision.RUN
    assert decide(rec("done"), seq=1, kind="model", input_digest="d1") is Decision.REPLAY
    # A step that started but never finished was in flight when the worker died.
    assert decide(rec("started"), seq=1, kind="model", input_digest="d1") is Decision.RUN
    with pytest.raises(JournalMismatch, match="changed since the run started"):
        decide(rec("done"), seq=1, kind="model", input_digest="other")
    with pytest.raises(JournalMismatch):
        decide(rec("done", kind="sandbox"), seq=1, kind="model", input_digest="d1")


def test_digest_is_stable_across_key_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def _counting(calls: list[str], name: str, value: object):
    def run() -> tuple[object, dict]:
        calls.append(name)
        return value, {"summary": name}

    return run


def test_finished_steps_replay_without_running(redis_client: redis.Redis) -> None:
    calls: list[str] = []
    with RunJournal(redis_client, "r1") as j:
        j.acquire()
        assert j.step("model", {"q": 1}, _counting(calls, "m1", {"a": 1})).replayed is False
        assert j.step("sandbox", {"f": "x"}, _counting(calls, "s1", {"ok": False})).output == {
            "ok": False
        }
    assert calls == ["m1", "s1"]

    with RunJournal(redis_client, "r1") as j2:
        j2.acquire()
        assert j2.recorded_steps == 2
        first = j2.step("model", {"q": 1}, _counting(calls, "m1-again", None))
        second = j2.step("sandbox", {"f": "x"}, _counting(calls, "s1-again", None))
        third = j2.step("model", {"q": 2}, _counting(calls, "m2", {"a": 2}))
    assert (first.output, first.replayed) == ({"a": 1}, True)
    assert (second.output, second.replayed) == ({"ok": False}, True)
    assert (third.output, third.replayed) == ({"a": 2}, False)
    assert calls == ["m1", "s1", "m2"]


def test_in_flight_step_runs_again_with_a_new_attempt(redis_client: redis.Redis) -> None:
    class Crash(Exception):
        pass

    def crash() -> tuple[object, dict]:
        raise Crash

    j = RunJournal(redis_client, "r2")
    j.acquire()
    j.step("model", {"q": 1}, lambda: ({"a": 1}, {}))
    with pytest.raises(Crash):
        j.step("sandbox", {"f": 1}, crash)
    j.release()

    _, steps = load_run(redis_client, "r2") or ({}, [])
    assert [(s.seq, s.status) for s in steps] == [(1, "done"), (2, "started")]

    j2 = RunJournal(redis_client, "r2")
    j2.acquire()
    j2.step("model", {"q": 1}, crash)  # replayed: crash() is never called
    again = j2.step("sandbox", {"f": 1}, lambda: ({"passed": 1}, {}))
    j2.release()
    assert (again.replayed, again.attempt, again.output) == (False, 2, {"passed": 1})


def test_changed_input_refuses_to_resume(redis_client: redis.Redis) -> None:
    with RunJournal(redis_client, "r3") as j:
        j.acquire()
        j.step("model", {"prompt": "v1"}, lambda: ("x", {}))
    with RunJournal(redis_client, "r3") as j2:
        j2.acquire()
        with pytest.raises(JournalMismatch, match="new --run-id"):
            j2.step("model", {"prompt": "v2"}, lambda: ("y", {}))


def test_live_owner_keeps_the_run(redis_client: redis.Redis) -> None:
    owner = RunJournal(redis_client, "r4", lease_seconds=0.6)
    owner.acquire()
    try:
        time.sleep(1.0)  # longer than the lease: the heartbeat must have renewed it
        other = RunJournal(redis_client, "r4", lease_seconds=0.6)
        waits: list[float] = []
        with pytest.raises(LeaseLost, match="still owned"):
            other.acquire(wait_seconds=0.8, on_wait=waits.append)
        assert waits, "the waiting process must be told it is waiting"
        owner.step("model", {"q": 1}, lambda: (1, {}))  # the owner still writes fine
    finally:
        owner.release()


def test_stale_owner_is_fenced_off(redis_client: redis.Redis) -> None:
    stale = RunJournal(redis_client, "r5", lease_seconds=0.4)
    stale.acquire()
    stale.step("model", {"q": 1}, lambda: (1, {}))
    # Freeze the stale owner's heartbeat, as if the process were paused (GC, SIGSTOP).
    stale.lease._stop.set()
    time.sleep(0.6)

    fresh = RunJournal(redis_client, "r5", lease_seconds=0.4)
    t0 = time.monotonic()
    fresh.acquire(wait_seconds=5)
    assert time.monotonic() - t0 < 1.0
    assert fresh.epoch == (stale.epoch or 0) + 1

    with pytest.raises(LeaseLost, match="taken over"):
        stale.step("sandbox", {"f": 1}, lambda: ("stale", {}))
    assert stale.lease_lost.is_set()
    assert not stale.renew()

    result = fresh.step("model", {"q": 1}, lambda: (2, {}))
    assert result.replayed and result.output == 1
    fresh.step("sandbox", {"f": 1}, lambda: ("fresh", {}))
    fresh.release()
    _, steps = load_run(redis_client, "r5") or ({}, [])
    assert [s.output for s in steps] == [1, "fresh"]


def test_release_lets_the_next_owner_in_at_once(redis_client: redis.Redis) -> None:
    a = RunJournal(redis_client, "r6", lease_seconds=30)
    a.acquire()
    a.release()
    b = RunJournal(redis_client, "r6", lease_seconds=30)
    t0 = time.monotonic()
    b.acquire(wait_seconds=1)
    assert time.monotonic() - t0 < 0.5
    b.release()


def test_runs_are_listed_newest_first(redis_client: redis.Redis) -> None:
    for run_id, status in [("old", "passed"), ("new", "budget_exhausted")]:
        with RunJournal(redis_client, run_id) as j:
            j.acquire()
            j.set_meta(status=status, iterations=2)
        time.sleep(0.01)
    runs = list_runs(redis_client)
    assert [(r["run_id"], r["status"]) for r in runs] == [
        ("new", "budget_exhausted"),
        ("old", "passed"),
    ]
    assert load_run(redis_client, "missing") is None


def test_journal_survives_a_redis_restart(own_redis) -> None:
    client = connect(own_redis.url)
    j = RunJournal(client, "r7", lease_seconds=5)
    j.acquire()
    j.step("model", {"q": 1}, lambda: ("before", {}))

    restarter = threading.Thread(target=own_redis.restart)
    restarter.start()
    time.sleep(0.05)
    # Written while Redis is down or coming back: the client retries until it is up.
    after = j.step("model", {"q": 2}, lambda: ("after", {}))
    restarter.join()
    j.release()
    assert after.output == "after"

    _, steps = load_run(connect(own_redis.url), "r7") or ({}, [])
    assert [s.output for s in steps] == ["before", "after"]
