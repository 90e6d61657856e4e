"""Journal cost: recording a step vs calling its function directly, and replaying a 100-step run.

Each step's input is a model request of ~8 KB and its output a reply of ~4 KB JSON (both
sizes are options): the digest of the input and the JSON of the output are part of the cost.
Baselines measured in the same run against the same Redis: the bare function call, a Redis
round trip (PING) and an HSET of one output-sized value.

    uv run python -m bench.journal [--repeat 20] [--steps 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from bench.common import Report, Target, median, parser, percentile, run_main
from bot.journal import RunJournal
from bot.redis_server import connect
from tests.support import RedisServer

STEP_MS = 50.0  # the "typical step" the recording target is a fraction of
RECORD_TARGET = 0.02  # recording overhead < 2% of a 50 ms step, i.e. < 1 ms per step
REPLAY_TARGET_MS = 50.0  # replay of 100 steps


def _code(size: int) -> str:
    """Python source of about `size` characters (what a write_file call carries)."""
    lines, total, i = [], 0, 0
    while total < size:
        line = f"def helper_{i}(value):\n    return value * {i} + len(str(value))\n\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines)[:size]


def model_output(size: int) -> dict[str, Any]:
    """A normalized model reply (as JournaledSteps records it) of about `size` bytes of JSON."""
    reply: dict[str, Any] = {
        "content": None,
        "tool_calls": [
            {
                "id": "call_3f9a",
                "name": "write_file",
                "arguments": json.dumps({"path": "calc.py", "content": ""}),
            }
        ],
        "finish_reason": "tool_calls",
        "usage": {"prompt_tokens": 2412, "completion_tokens": 388, "total_tokens": 2800},
        "latency": 0.84,
        "error": None,
        "too_large": False,
    }
    room = size - len(json.dumps(reply))
    content = _code(max(room - room // 8, 0))  # JSON escaping grows the text a bit
    reply["tool_calls"][0]["arguments"] = json.dumps({"path": "calc.py", "content": content})
    return reply


def model_input(size: int) -> dict[str, Any]:
    """A chat request of about `size` bytes of JSON (the step's input, digested per step)."""
    return {
        "model": "openai/gpt-oss-120b",
        "messages": [
            {"role": "system", "content": "You are a careful engineer. " * 20},
            {"role": "user", "content": _code(max(size - 1200, 0))},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_completion_tokens": 4096,
        "temperature": 0.2,
    }


def _record(
    client: redis.Redis, run_id: str, steps: int, step_input: Any, fn: Callable[[], Any]
) -> list[float]:
    """Record `steps` fresh steps; the seconds each `journal.step` call took."""
    journal = RunJournal(client, run_id, lease_seconds=10)
    journal.acquire()
    times = []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            journal.step("model", step_input, fn)
            times.append(time.perf_counter() - t0)
    finally:
        journal.release()
    return times


def _replay(client: redis.Redis, run_id: str, steps: int, step_input: Any) -> float:
    """A resumed run: new journal, acquire (loads the steps), `steps` replayed steps."""

    def must_not_run() -> Any:
        raise RuntimeError("a finished step ran again instead of replaying")

    t0 = time.perf_counter()
    journal = RunJournal(client, run_id, lease_seconds=10)
    journal.acquire()
    try:
        for _ in range(steps):
            if not journal.step("model", step_input, must_not_run).replayed:
                raise RuntimeError("step was not replayed")
        return time.perf_counter() - t0
    finally:
        journal.release()


def _direct(steps: int, fn: Callable[[], Any]) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _round_trips(client: redis.Redis, count: int, value: bytes) -> tuple[list[float], list[float]]:
    ping, hset = [], []
    for i in range(count):
        t0 = time.perf_counter()
        client.ping()
        ping.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.hset("bench:hset", str(i), value)
        hset.append(time.perf_counter() - t0)
    client.delete("bench:hset")
    return ping, hset


def measure(args: argparse.Namespace) -> Report:
    output = model_output(args.output_bytes)
    step_input = model_input(args.input_bytes)
    meta = {"tokens": 2800, "prompt_tokens": 2412, "latency": 0.84, "summary": "write_file"}

    def fn() -> tuple[Any, dict[str, Any]]:
        return output, meta

    per_step: list[float] = []  # every recorded step, all repetitions
    record_means: list[float] = []
    direct_means: list[float] = []
    replays: list[float] = []
    pings: list[float] = []
    hsets: list[float] = []
    with RedisServer() as server:
        client = connect(server.url)  # the production client (retries, health checks)
        try:
            _record(client, "warmup", 5, step_input, fn)  # loads the Lua scripts once
            for _ in range(args.repeat):
                run_id = f"bench-{uuid.uuid4().hex[:8]}"
                direct = _direct(args.steps, fn)
                recorded = _record(client, run_id, args.steps, step_input, fn)
                replays.append(_replay(client, run_id, args.steps, step_input))
                ping, hset = _round_trips(client, args.steps, json.dumps(output).encode())
                per_step += recorded
                record_means.append(sum(recorded) / len(recorded))
                direct_means.append(sum(direct) / len(direct))
                pings += ping
                hsets += hset
                client.flushdb()
        finally:
            client.close()

    overhead = median(record_means) - median(direct_means)
    ping_ms = median(pings) * 1000
    replay_ms = median(replays) * 1000
    report = Report(
        benchmark="journal",
        baseline="the step's function called directly; a Redis round trip (PING) in the same run",
        repeat=args.repeat,
        columns=["what", "median_ms", "p50_ms", "p99_ms", "ratio", "ratio_of"],
    )
    report.rows += [
        {
            "what": "direct call (baseline)",
            "median_ms": median(direct_means) * 1000,
            "ratio": 1.0,
            "ratio_of": "-",
        },
        {
            "what": "Redis PING round trip",
            "median_ms": ping_ms,
            "p50_ms": ping_ms,
            "p99_ms": percentile(pings, 99) * 1000,
            "ratio": 1.0,
            "ratio_of": "-",
        },
        {
            "what": f"Redis HSET {len(json.dumps(output))} B",
            "median_ms": median(hsets) * 1000,
            "p50_ms": median(hsets) * 1000,
            "p99_ms": percentile(hsets, 99) * 1000,
            "ratio": median(hsets) * 1000 / ping_ms,
            "ratio_of": "x PING",
        },
        {
            "what": "journal.step recording (per step)",
            "median_ms": median(record_means) * 1000,
            "p50_ms": median(per_step) * 1000,
            "p99_ms": percentile(per_step, 99) * 1000,
            "ratio": overhead * 1000 / ping_ms,
            "ratio_of": "x PING (overhead)",
        },
        {
            "what": "recording overhead per step",
            "median_ms": overhead * 1000,
            "ratio": overhead * 1000 / STEP_MS,
            "ratio_of": f"of a {STEP_MS:.0f} ms step",
        },
        {
            "what": f"replay {args.steps} steps (acquire + replays)",
            "median_ms": replay_ms,
            "p50_ms": replay_ms,
            "p99_ms": percentile(replays, 99) * 1000,
            "ratio": replay_ms / REPLAY_TARGET_MS,
            "ratio_of": f"of {REPLAY_TARGET_MS:.0f} ms target",
        },
    ]
    report.targets += [
        Target(
            f"recording overhead / {STEP_MS:.0f} ms step",
            overhead * 1000 / STEP_MS,
            "<",
            RECORD_TARGET,
        ),
        Target(
            f"replay of {args.steps} steps / {REPLAY_TARGET_MS:.0f} ms",
            replay_ms / REPLAY_TARGET_MS,
            "<",
            1.0,
        ),
    ]
    report.notes.append(
        f"step input {len(json.dumps(step_input))} B JSON, output {len(json.dumps(output))} B "
        f"JSON, {args.steps} steps per repetition; Redis appendfsync everysec on loopback TCP"
    )
    report.extra.update(
        {
            "steps": args.steps,
            "input_bytes": len(json.dumps(step_input)),
            "output_bytes": len(json.dumps(output)),
            "overhead_ms": overhead * 1000,
            "replay_ms": replay_ms,
            "ping_ms": ping_ms,
        }
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("journal", __doc__.splitlines()[0], repeat=20)
    p.add_argument("--steps", type=int, default=100, help="steps recorded and replayed per run")
    p.add_argument("--output-bytes", type=int, default=4096, help="JSON size of a step's output")
    p.add_argument("--input-bytes", type=int, default=8192, help="JSON size of a step's input")
    return run_main(measure, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
