"""Webhook intake: throughput and latency of the signed webhook route vs a hello-world route.

One uvicorn process serves the real app (`create_app`) plus a `POST /hello` route that
answers `{"hello": "world"}` without looking at the request (the baseline: same server, same
request bytes, no handler work). A second process generates load over raw keep-alive
HTTP/1.1 connections on loopback (asyncio; bodies built and signed before the clock starts,
each delivery with its own X-GitHub-Delivery and issue number, so every one is verified,
deduplicated and enqueued into a real Redis). Per repetition, interleaved:

- max throughput, closed loop (`--concurrency` connections): hello, then webhook;
- open loop at a fixed offered rate (`--rate`, default 500/s): hello, then webhook; latency
  counts from each request's scheduled send time, so a stalled server cannot hide queueing.

Redis is flushed after every phase.

    uv run python -m bench.webhook [--repeat 5] [--requests 1500] [--rate 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import (
    ROOT,
    Report,
    Target,
    median,
    parser,
    percentile,
    ratio,
    run_main,
    stop_process,
    wait_for,
)
from tests.support import RedisServer, free_port

SECRET = "bench-webhook-secret"
WEBHOOK_PATH = "/api/github/webhooks"
HELLO_PATH = "/hello"
QUEUE = "tdd-agent"
FIXTURE = ROOT / "tests" / "fixtures" / "webhooks" / "issues__labeled.payload.json"
THROUGHPUT_TARGET = 0.5  # webhook >= 50% of hello-world throughput
P99_TARGET_MS = 25.0  # at the fixed offered rate


# -- the server process ---------------------------------------------------------------------


def serve(config_json: str) -> None:
    """Server process: the real app plus the hello route, under uvicorn."""
    import uvicorn
    from fastapi.responses import JSONResponse

    from bot.config import load_settings
    from bot.redis_server import connect
    from bot.web import create_app

    config = json.loads(config_json)
    settings = load_settings({"WEBHOOK_SECRET": SECRET, "REDIS_URL": config["redis_url"]})
    app = create_app(settings, redis_client=connect(config["redis_url"]))

    async def hello() -> JSONResponse:
        return JSONResponse({"hello": "world"})

    app.add_api_route(HELLO_PATH, hello, methods=["POST"])
    # No access log: it is the same fixed cost on both routes and would only blur the ratio.
    uvicorn.run(app, host="127.0.0.1", port=config["port"], log_level="warning", access_log=False)


# -- the load generator process -------------------------------------------------------------


def _payload_template() -> dict[str, Any]:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    data["label"]["name"] = "agent:tdd"
    data["repository"]["name"] = "demo"
    data["repository"]["full_name"] = "octo/demo"
    data["repository"]["owner"]["login"] = "octo"
    data["sender"]["login"] = "alice"
    data["installation"] = {"id": 1}
    data["issue"]["state"] = "open"
    return data


def build_requests(path: str, count: int, *, port: int, first_issue: int) -> list[bytes]:
    """`count` raw HTTP/1.1 deliveries, each signed, with its own delivery id and issue."""
    from bot.github.webhooks import sign

    template = _payload_template()
    out = []
    for i in range(count):
        template["issue"]["number"] = first_issue + i
        body = json.dumps(template).encode()
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "User-Agent: GitHub-Hookshot/bench\r\n"
            "Content-Type: application/json\r\n"
            "X-GitHub-Event: issues\r\n"
            f"X-GitHub-Delivery: {uuid.uuid4()}\r\n"
            f"X-Hub-Signature-256: {sign(body, SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _exchange(conn: Conn, raw: bytes) -> int:
    """Send one request, read its whole response; the status code."""
    reader, writer = conn
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _connect(port: int, count: int) -> list[Conn]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def _close(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()
    for _, writer in conns:
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]

    def summary(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "requests": self.requests,
            "seconds": self.seconds,
            "rps": self.requests / self.seconds,
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "max_ms": max(self.latencies) * 1000,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


async def closed_loop(name: str, port: int, requests: list[bytes], concurrency: int) -> Phase:
    """As fast as the server answers, `concurrency` requests in flight."""
    conns = await _connect(port, concurrency)
    todo = iter(requests)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def worker(conn: Conn) -> None:
        for raw in todo:  # one shared iterator: asyncio runs one coroutine at a time
            t0 = time.perf_counter()
            statuses[await _exchange(conn, raw)] += 1
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    seconds = time.perf_counter() - started
    await _close(conns)
    return Phase(name, len(requests), seconds, latencies, statuses)


async def open_loop(name: str, port: int, requests: list[bytes], rate: float, pool: int) -> Phase:
    """Requests sent on a fixed schedule whether or not earlier ones were answered."""
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    conns = await _connect(port, pool)
    for conn in conns:
        idle.put_nowait(conn)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def one(raw: bytes, scheduled: float, conn: Conn) -> None:
        statuses[await _exchange(conn, raw)] += 1
        # From the scheduled time, not the send time: waiting for a free connection counts.
        latencies.append(time.perf_counter() - scheduled)
        idle.put_nowait(conn)

    tasks = []
    started = time.perf_counter() + 0.02
    for i, raw in enumerate(requests):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await idle.get()
        tasks.append(asyncio.create_task(one(raw, scheduled, conn)))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    await _close(conns)
    return Phase(name, len(requests), seconds, latencies, statuses)


async def _load(config: dict[str, Any]) -> dict[str, Any]:
    import redis

    port = config["port"]
    client = redis.Redis.from_url(config["redis_url"])
    issue = 1

    def requests(path: str, count: int) -> list[bytes]:
        nonlocal issue
        built = build_requests(path, count, port=port, first_issue=issue)
        issue += count
        return built

    def settle(phase: Phase) -> dict[str, Any]:
        """Check the webhook really enqueued, then flush Redis for the next phase."""
        summary = phase.summary()
        summary["queued"] = int(client.llen(f"rq:queue:{QUEUE}"))
        client.flushdb()
        return summary

    concurrency, rate = config["concurrency"], config["rate"]
    rate_count = max(int(rate * config["rate_seconds"]), 1)
    for path in (HELLO_PATH, WEBHOOK_PATH):  # warm-up: imports, Lua/queue set-up, JIT-free paths
        settle(await closed_loop("warmup", port, requests(path, config["warmup"]), concurrency))
    reps = []
    for _ in range(config["repeat"]):
        rep = {}
        for key, path in (("hello_max", HELLO_PATH), ("webhook_max", WEBHOOK_PATH)):
            batch = requests(path, config["requests"])
            rep[key] = settle(await closed_loop(key, port, batch, concurrency))
        for key, path in (("hello_rate", HELLO_PATH), ("webhook_rate", WEBHOOK_PATH)):
            batch = requests(path, rate_count)
            rep[key] = settle(await open_loop(key, port, batch, rate, config["pool"]))
        reps.append(rep)
    client.close()
    return {"reps": reps}


def loadgen(config_json: str) -> None:
    """Load generator process: runs every phase, prints the results as one JSON line."""
    result = asyncio.run(_load(json.loads(config_json)))
    sys.stdout.write(json.dumps(result) + "\n")


# -- the benchmark --------------------------------------------------------------------------


def _python_call(function: str, config: dict[str, Any]) -> list[str]:
    code = f"import sys; from bench.webhook import {function}; {function}(sys.argv[1])"
    return [sys.executable, "-c", code, json.dumps(config)]


def measure(args: argparse.Namespace) -> Report:
    with RedisServer() as redis_server:
        port = free_port()
        server = subprocess.Popen(
            _python_call("serve", {"port": port, "redis_url": redis_server.url}),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:

            def ready() -> bool:
                if server.poll() is not None:
                    err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                    raise RuntimeError(f"uvicorn exited with {server.returncode}: {err[-2000:]}")
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout=30, what="uvicorn")
            config = {
                "port": port,
                "redis_url": redis_server.url,
                "repeat": args.repeat,
                "requests": args.requests,
                "concurrency": args.concurrency,
                "rate": args.rate,
                "rate_seconds": args.rate_seconds,
                "pool": args.pool,
                "warmup": args.warmup,
            }
            proc = subprocess.run(
                _python_call("loadgen", config),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            stop_process(server)
    return _report(args, result["reps"])


def _check(reps: list[dict[str, Any]]) -> None:
    """Every request must have been answered as expected and every delivery enqueued."""
    for rep in reps:
        for key, phase in rep.items():
            expected = "200" if key.startswith("hello") else "202"
            wrong = {s: n for s, n in phase["statuses"].items() if s != expected}
            if wrong:
                raise RuntimeError(f"{key}: unexpected statuses {wrong} (wanted {expected})")
            if key.startswith("webhook") and phase["queued"] != phase["requests"]:
                raise RuntimeError(
                    f"{key}: {phase['queued']} jobs queued, {phase['requests']} sent"
                )


def _report(args: argparse.Namespace, reps: list[dict[str, Any]]) -> Report:
    _check(reps)

    def med(key: str, field: str) -> float:
        return median([rep[key][field] for rep in reps])

    hello_rps, webhook_rps = med("hello_max", "rps"), med("webhook_max", "rps")
    hello_p99, webhook_p99 = med("hello_rate", "p99_ms"), med("webhook_rate", "p99_ms")
    report = Report(
        benchmark="webhook",
        baseline="POST /hello (hello world) on the same uvicorn server, same request bytes",
        repeat=args.repeat,
        columns=["phase", "route", "rps", "p50_ms", "p99_ms", "p99_range_ms", "ratio_vs_hello"],
    )
    rows = [
        ("max throughput", "hello", "hello_max", 1.0),
        ("max throughput", "webhook", "webhook_max", ratio(webhook_rps, hello_rps)),
        (f"{args.rate:g} req/s offered", "hello", "hello_rate", 1.0),
        (f"{args.rate:g} req/s offered", "webhook", "webhook_rate", ratio(webhook_p99, hello_p99)),
    ]
    for phase, route, key, rel in rows:
        report.rows.append(
            {
                "phase": phase,
                "route": route,
                "key": key,
                "rps": med(key, "rps"),
                "p50_ms": med(key, "p50_ms"),
                "p99_ms": med(key, "p99_ms"),
                "max_ms": med(key, "max_ms"),
                # The spread over repetitions: a tail this sensitive to load needs it.
                "p99_range_ms": "{:.1f}..{:.1f}".format(
                    min(r[key]["p99_ms"] for r in reps), max(r[key]["p99_ms"] for r in reps)
                ),
                "ratio_vs_hello": rel,
            }
        )
    report.targets += [
        Target(
            "webhook / hello throughput", ratio(webhook_rps, hello_rps), ">=", THROUGHPUT_TARGET
        ),
        Target(
            f"webhook p99 at {args.rate:g} req/s / {P99_TARGET_MS:g} ms",
            webhook_p99 / P99_TARGET_MS,
            "<",
            1.0,
        ),
    ]
    report.notes += [
        "ratio_vs_hello: throughput ratio on max-throughput rows, p99 ratio on fixed-rate rows",
        f"webhook p99 at {args.rate:g} req/s = {webhook_p99:.1f} ms "
        f"(hello {hello_p99:.1f} ms); medians of per-repetition figures",
        f"closed loop: {args.requests} requests x {args.concurrency} connections; open loop: "
        f"{args.rate_seconds:g} s at {args.rate:g}/s; payload: issues.labeled fixture",
        "one uvicorn worker (h11, asyncio loop), load generator and Redis on the same 2 cores",
    ]
    report.extra["reps"] = reps
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("webhook", __doc__.splitlines()[0], repeat=5)
    p.add_argument("--requests", type=int, default=1500, help="requests per max-throughput phase")
    p.add_argument("--concurrency", type=int, default=16, help="connections in the closed loop")
    p.add_argument("--rate", type=float, default=500.0, help="offered rate (req/s), open loop")
    p.add_argument("--rate-seconds", type=float, default=2.0, help="length of a fixed-rate phase")
    p.add_argument("--pool", type=int, default=64, help="connections available to the open loop")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests per route first")
    return run_main(measure, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
