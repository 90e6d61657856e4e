"""The step journal: every model call and sandbox run of a run, recorded in Redis.

Replay rules (pure): a finished step with the same kind and input digest returns its
recorded output; a step that was started but never finished runs again; a step whose
recorded input differs means the code or prompt changed, and resuming would mix two runs.

Ownership: one process owns a run at a time through a lease with a fencing epoch. Every
write is checked atomically (Lua) against the epoch, so a process whose lease lapsed and
was taken over cannot write into the run any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from bot.errors import JournalMismatch, LeaseLost
from bot.keys import RUNS_INDEX, run_key


def digest(value: Any) -> str:
    """A stable digest of any JSON-able value."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StepRecord:
    """One journaled step as stored."""

    seq: int
    kind: str
    digest: str
    status: str  # "started" | "done"
    attempt: int = 1
    started_at: float = 0.0
    duration: float = 0.0
    output: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> StepRecord:
        return cls(**json.loads(raw))


class Decision(StrEnum):
    RUN = "run"
    REPLAY = "replay"


def decide(recorded: StepRecord | None, *, seq: int, kind: str, input_digest: str) -> Decision:
    """The replay rule for step `seq`, given what the journal holds for it."""
    if recorded is None:
        return Decision.RUN
    if recorded.kind != kind or recorded.digest != input_digest:
        raise JournalMismatch(
            f"step {seq} was recorded as a {recorded.kind} step with different input "
            f"({recorded.digest[:8]} vs {input_digest[:8]} now): the code, prompt or settings "
            "changed since the run started. Start a new run (a new --run-id) instead of resuming."
        )
    return Decision.REPLAY if recorded.status == "done" else Decision.RUN


@dataclass(frozen=True)
class StepResult:
    output: Any
    duration: float
    replayed: bool
    attempt: int


# KEYS: epoch key, target hash. ARGV: expected epoch, then field/value pairs.
_FENCED_HSET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""
# KEYS: lease key, epoch key. ARGV: owner token, ttl ms. Returns {acquired, epoch_or_pttl}.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[1])} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, epoch}
"""
# KEYS: lease key, epoch key. ARGV: owner token, ttl ms, epoch.
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def _keys(run_id: str) -> dict[str, str]:
    return {part: run_key(run_id, part) for part in ("meta", "steps", "lease", "epoch")}


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Lease:
    """Ownership of `key` by one token, with a fencing epoch; a heartbeat renews it.

    Acquiring bumps the epoch, so a holder whose lease lapsed and was taken over fails its
    next renew (and every fenced write) instead of writing next to the new owner. The same
    token acquiring again (a job re-run under the same id) succeeds at once.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        epoch_key: str,
        owner: str,
        seconds: float,
        name: str,
    ) -> None:
        self.redis = client
        self.key = key
        self.epoch_key = epoch_key
        self.owner = owner
        self.seconds = seconds
        self.name = name
        self.epoch: int | None = None
        self.lost = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def try_acquire(self) -> float | None:
        """Take the lease now (None), or the seconds left of the live holder's lease."""
        acquired, value = self._acquire(
            keys=[self.key, self.epoch_key], args=[self.owner, int(self.seconds * 1000)]
        )
        if not acquired:
            return max(int(value), 0) / 1000
        self.epoch = int(value)
        self._start_heartbeat()
        return None

    def acquire(
        self, *, wait_seconds: float = 120.0, on_wait: Callable[[float], None] | None = None
    ) -> int:
        """Take the lease, waiting while a live holder renews it; returns the epoch."""
        deadline = time.monotonic() + wait_seconds
        while (remaining := self.try_acquire()) is not None:
            if time.monotonic() >= deadline:
                raise LeaseLost(
                    f"{self.name} is still owned by another process "
                    f"(its lease renews; waited {wait_seconds:.0f}s). Stop that process first."
                )
            if on_wait is not None:
                on_wait(remaining)
            time.sleep(min(max(remaining, 0.05), 0.5))
        assert self.epoch is not None
        return self.epoch

    def holder(self) -> str | None:
        raw = self.redis.get(self.key)
        return None if raw is None else _decode(raw)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = self.seconds / 3

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        self.lost.set()
                        return
                except (redis.RedisError, OSError):
                    # Redis may be restarting: keep trying until the lease would lapse anyway.
                    continue

        self._heartbeat = threading.Thread(target=beat, name=f"lease-{self.name}", daemon=True)
        self._heartbeat.start()

    def renew(self) -> bool:
        if self.epoch is None:
            return False
        return bool(
            self._renew(
                keys=[self.key, self.epoch_key],
                args=[self.owner, int(self.seconds * 1000), self.epoch],
            )
        )

    def release(self) -> None:
        """Stop the heartbeat and drop the lease so a next owner need not wait."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2)
            self._heartbeat = None
        if self.epoch is not None:
            # If Redis is unreachable the lease simply lapses on its own.
            with contextlib.suppress(redis.RedisError, OSError):
                self._release(keys=[self.key, self.epoch_key], args=[self.owner, self.epoch])


class RunJournal:
    """The journal of one run, owned by this process once `acquire` returns."""

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        *,
        lease_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.run_id = run_id
        self.clock = clock
        self._keys = _keys(run_id)
        self.lease = Lease(
            client,
            self._keys["lease"],
            epoch_key=self._keys["epoch"],
            owner=uuid.uuid4().hex[:12],
            seconds=lease_seconds,
            name=f"run {run_id}",
        )
        self._records: dict[int, StepRecord] = {}
        self._seq = 0
        self._fenced_hset = client.register_script(_FENCED_HSET)

    @property
    def epoch(self) -> int | None:
        return self.lease.epoch

    @property
    def lease_lost(self) -> threading.Event:
        return self.lease.lost

    # -- ownership ------------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.redis.exists(self._keys["meta"]))

    def acquire(
        self, *, wait_seconds: float = 120.0, on_wait: Callable[[float], None] | None = None
    ) -> int:
        """Take the run's lease, waiting while a live owner holds it; returns the epoch."""
        epoch = self.lease.acquire(wait_seconds=wait_seconds, on_wait=on_wait)
        # Listed once, at its first start; nx keeps a resumed run's original time.
        self.redis.zadd(RUNS_INDEX, {self.run_id: self.clock()}, nx=True)
        self._load()
        return epoch

    def renew(self) -> bool:
        return self.lease.renew()

    def release(self) -> None:
        self.lease.release()

    def __enter__(self) -> RunJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- writes ---------------------------------------------------------------------------

    def _write(self, key: str, mapping: dict[str, str]) -> None:
        if self.epoch is None:
            raise LeaseLost(f"run {self.run_id}: write before acquiring the lease")
        args: list[Any] = [self.epoch]
        for k, v in mapping.items():
            args += [k, v]
        ok = self._fenced_hset(keys=[self._keys["epoch"], self._keys[key]], args=args)
        if not ok:
            self.lease.lost.set()
            raise LeaseLost(
                f"run {self.run_id} was taken over by another process; this one stops writing"
            )

    def set_meta(self, **fields: Any) -> None:
        """Record run-level fields (status, task, totals); values are stored as JSON."""
        values = {k: json.dumps(v) for k, v in fields.items()}
        values["updated_at"] = json.dumps(self.clock())
        self._write("meta", values)

    def get_meta(self, name: str) -> Any:
        raw = self.redis.hget(self._keys["meta"], name)
        return None if raw is None else json.loads(raw)

    @property
    def recorded_steps(self) -> int:
        """How many steps the journal held when this process took the run over."""
        return len(self._records)

    def _load(self) -> None:
        raw = self.redis.hgetall(self._keys["steps"])
        self._records = {int(k): StepRecord.from_json(v) for k, v in raw.items()}
        self._seq = 0

    # -- steps ----------------------------------------------------------------------------

    def step(
        self,
        kind: str,
        step_input: Any,
        run: Callable[[], tuple[Any, dict[str, Any]]],
    ) -> StepResult:
        """Run or replay the next step. `run` returns (JSON-able output, metadata)."""
        self._seq += 1
        seq = self._seq
        input_digest = digest(step_input)
        recorded = self._records.get(seq)
        if decide(recorded, seq=seq, kind=kind, input_digest=input_digest) is Decision.REPLAY:
            assert recorded is not None
            return StepResult(recorded.output, recorded.duration, True, recorded.attempt)
        attempt = recorded.attempt + 1 if recorded is not None else 1
        started = StepRecord(
            seq=seq,
            kind=kind,
            digest=input_digest,
            status="started",
            attempt=attempt,
            started_at=self.clock(),
        )
        self._write("steps", {str(seq): started.to_json()})
        t0 = time.monotonic()
        output, meta = run()
        duration = time.monotonic() - t0
        done = StepRecord(
            seq=seq,
            kind=kind,
            digest=input_digest,
            status="done",
            attempt=attempt,
            started_at=started.started_at,
            duration=duration,
            output=output,
            meta=meta,
        )
        self._write("steps", {str(seq): done.to_json()})
        self._records[seq] = done
        return StepResult(output, duration, False, attempt)


# -- reading runs (for `tdd-agent runs`) ------------------------------------------------------


def _meta(client: redis.Redis, run_id: str) -> dict[str, Any]:
    raw = client.hgetall(_keys(run_id)["meta"])
    return {_decode(k): json.loads(v) for k, v in raw.items()}


def list_runs(client: redis.Redis, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first, with their meta fields."""
    ids: list[tuple[bytes, float]] = client.zrevrange(  # type: ignore[assignment]
        RUNS_INDEX, 0, limit - 1, withscores=True
    )
    runs = []
    for raw_id, created in ids:
        run_id = _decode(raw_id)
        runs.append({"run_id": run_id, "created_at": created, **_meta(client, run_id)})
    return runs


def load_run(client: redis.Redis, run_id: str) -> tuple[dict[str, Any], list[StepRecord]] | None:
    """A run's meta and its steps in order, or None when there is no such run."""
    keys = _keys(run_id)
    if not client.exists(keys["meta"]) and not client.exists(keys["steps"]):
        return None
    steps = [StepRecord.from_json(v) for v in client.hgetall(keys["steps"]).values()]
    return _meta(client, run_id), sorted(steps, key=lambda s: s.seq)
