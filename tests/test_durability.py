"""Durability: `tdd-agent solve` as a real subprocess, killed or frozen mid-step, then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bot.journal import load_run
from tests.fakes import groq as g

pytestmark = pytest.mark.slow

SLOW_TESTS = (
    "import time\n"
    "from calc import add\n\n"
    "def test_add():\n    time.sleep(1.5)\n    assert add(2, 3) == 5\n\n"
    "def test_add_zero():\n    assert add(0, 0) == 0\n"
)
WRONG = "def add(a, b):\n    return a * b\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def write(content: str) -> g.Reply:
    return g.tool_call("write_file", {"path": "calc.py", "content": content})


def start_cli(
    tmp_path: Path, fake: g.FakeGroq, redis_url: str, run_id: str, lease: float = 1.0
) -> subprocess.Popen:
    tests = tmp_path / "test_calc.py"
    tests.write_text(SLOW_TESTS)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GROQ_API_KEY": "gsk_test",
        "GROQ_BASE_URL": fake.url,
        "REDIS_URL": redis_url,
        "LEASE_SECONDS": str(lease),
        "MAX_ITERATIONS": "4",
    }
    cmd = [
        sys.executable,
        "-m",
        "bot.cli",
        "solve",
        "--task",
        "Write add(a, b).",
        "--tests",
        str(tests),
        "--out",
        str(tmp_path / "out"),
        "--run-id",
        run_id,
    ]
    return subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_step(client: redis.Redis, run_id: str, seq: int, status: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = load_run(client, run_id)
        if loaded is not None:
            for step in loaded[1]:
                if step.seq == seq and step.status == status:
                    return step
        time.sleep(0.05)
    raise AssertionError(f"step {seq} never reached {status!r}")


def test_killed_mid_sandbox_step_resumes_without_repeating_finished_turns(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with g.FakeGroq([write(WRONG), write(RIGHT)]) as fake:
        # A lease longer than start-up, so the second process visibly waits for it to lapse.
        first = start_cli(tmp_path, fake, redis_url, "durable-1", lease=4)
        # Steps: 1 sandbox (red at base), 2 model, 3 sandbox (still red), 4 model,
        # 5 sandbox: kill while 5 is running.
        wait_for_step(redis_client, "durable-1", 5, "started")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(fake.requests) == 2

        second = start_cli(tmp_path, fake, redis_url, "durable-1", lease=4)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert "waiting for its lease to lapse" in err
        assert "resuming durable-1: 5 recorded steps replay" in err

        assert len(fake.requests) == 2, "finished model turns were replayed, not re-requested"
        assert fake.exhausted == 0
        _, steps = load_run(redis_client, "durable-1") or ({}, [])
        assert [(s.seq, s.kind, s.status, s.attempt) for s in steps] == [
            (1, "sandbox", "done", 1),
            (2, "model", "done", 1),
            (3, "sandbox", "done", 1),
            (4, "model", "done", 1),
            (5, "sandbox", "done", 2),  # the interrupted step, and only it, ran again
            (6, "verify", "done", 1),  # the fresh-sandbox verification with canaries
        ]
        assert steps[4].output["passed"] == 2
        assert (tmp_path / "out" / "calc.py").read_text() == RIGHT


def test_a_stale_lease_holder_is_fenced_off(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with g.FakeGroq([write(WRONG), write(RIGHT)]) as fake:
        stale = start_cli(tmp_path, fake, redis_url, "fenced-1")
        wait_for_step(redis_client, "fenced-1", 3, "started")
        stale.send_signal(signal.SIGSTOP)  # frozen: its heartbeat stops, its lease lapses
        try:
            fresh = start_cli(tmp_path, fake, redis_url, "fenced-1")
            _, err = fresh.communicate(timeout=60)
            assert fresh.returncode == 0, err
        finally:
            stale.send_signal(signal.SIGCONT)
        _, stale_err = stale.communicate(timeout=60)
        assert stale.returncode == 1
        assert "taken over by another process" in stale_err

        meta, steps = load_run(redis_client, "fenced-1") or ({}, [])
        assert meta["status"] == "passed"
        assert [(s.seq, s.status) for s in steps] == [
            (1, "done"),
            (2, "done"),
            (3, "done"),
            (4, "done"),
            (5, "done"),
            (6, "done"),
        ]
        assert steps[2].attempt == 2, "the new owner re-ran the step the frozen one had in flight"
        assert len(fake.requests) == 2
        assert meta["iterations"] == 2
