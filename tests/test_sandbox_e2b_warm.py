"""E2BSandbox(warm=True): the warm pytest server inside the sandbox, through the real SDK.

The fake E2B (tests/fakes/e2b_envd.py) runs the server for real on this host as a
background process fed over envd's SendInput and followed over its Start/Connect streams,
so these tests exercise the same RPCs as against E2B. Cold runs of the same workspaces are
the reference: pass/fail must match exactly.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bot.sandbox.base import TestResult
from bot.sandbox.e2b import E2BSandbox
from bot.sandbox.warm_server import SERVER_MODULE
from tests.edits import expected_failures, mathx_tests, module_source, versions
from tests.fakes.e2b_envd import FakeE2B, FakeSandbox, StartRecord, pid_alive

CALC = "def add(a, b):\n    return a + b\n"
TESTS = (
    "from calc import add\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n\n"
    "def test_zero():\n    assert add(0, 0) == 0\n"
)
PASSING = {"calc.py": CALC, "test_calc.py": TESTS}
SUITES = {
    "passing": PASSING,
    "failing": {"calc.py": CALC.replace("a + b", "a - b"), "test_calc.py": TESTS},
    "syntax error": {"calc.py": "def add(a, b)\n    return a + b\n", "test_calc.py": TESTS},
    "no tests": {"calc.py": CALC},
    "in a subfolder": {"calc.py": CALC, "tests/test_calc.py": TESTS},
    "segfault": {
        "test_crash.py": "import os, signal\n\ndef test_crash():\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
    },
    "killed": {"test_die.py": "import os\n\ndef test_die():\n    os.kill(os.getpid(), 9)\n"},
    # Modules the server already holds: these run in a fresh interpreter instead.
    "shadows a preloaded module": {
        "uuid.py": "X = 1\n",
        "test_u.py": "def test_u():\n    import uuid\n    assert uuid.X == 1\n",
    },
    "shadows one pytest needs": {
        "random.py": "X = 1\n",
        "test_r.py": "def test_r():\n    import random\n    assert random.X == 1\n",
    },
}


def verdict(result: TestResult) -> tuple[object, ...]:
    """What must be identical between warm and cold runs."""
    return (
        result.ok,
        result.exit_code,
        result.passed,
        result.failed,
        result.errors,
        result.skipped,
        result.failing,
        result.timed_out,
        result.sandbox_error,
    )


def server_starts(fake: FakeE2B) -> list[StartRecord]:
    return [s for s in fake.starts if any(SERVER_MODULE in arg for arg in s.args)]


def sandbox_of(fake: FakeE2B, sandbox: E2BSandbox) -> FakeSandbox:
    assert sandbox.sandbox_id is not None
    return fake.sandboxes[sandbox.sandbox_id]


def wait_until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeE2B]:
    with FakeE2B(tmp_path / "e2b") as server:
        yield server


@pytest.fixture
def make(fake: FakeE2B) -> Iterator[Callable[..., E2BSandbox]]:
    made: list[E2BSandbox] = []

    def _make(**overrides: Any) -> E2BSandbox:
        options: dict[str, Any] = {
            "api_key": fake.api_key,
            "python": sys.executable,  # the fake runs commands on this host
            "test_timeout": 30,
            "create_timeout": 5,
            "warm": True,
            **fake.sdk_options(),
            **overrides,
        }
        sandbox = E2BSandbox(**options)
        made.append(sandbox)
        return sandbox

    yield _make
    for sandbox in made:
        sandbox.close()


# ---------------------------------------------------------------------------------------
# Same results as cold runs


def test_warm_results_match_cold_ones(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    warm, cold = make(), make(warm=False)

    for name, workspace in SUITES.items():
        warm_result, cold_result = warm.run_tests(workspace), cold.run_tests(workspace)
        assert verdict(warm_result) == verdict(cold_result), (name, warm_result, cold_result)
        assert warm_result.extra["warm"] is True, (name, warm_result.extra)
        assert cold_result.extra == {}  # the cold path is untouched

    assert warm.run_tests(SUITES["failing"]).failing == ("test_calc.py::test_add",)
    shadowed = warm.run_tests(SUITES["shadows a preloaded module"])
    # Exec mode, as a cold run: under `python -P` the stdlib module pytest imported at
    # start-up wins over the workspace's, in both (the loop above compared them).
    assert shadowed.extra["mode"] == "exec"
    assert warm.run_tests(PASSING).extra["mode"] == "fork"
    assert len(server_starts(fake)) == 1


def test_output_is_clipped_like_a_cold_run(make: Callable[..., E2BSandbox]) -> None:
    noisy = TESTS.replace("assert add(2, 3) == 5", "print('x' * 50_000)\n    assert add(2, 3) == 5")
    sandbox = make(output_cap=4000)

    result = sandbox.run_tests({"calc.py": CALC.replace("a + b", "a - b"), "test_calc.py": noisy})

    assert (result.passed, result.failed) == (1, 1)
    assert result.output_truncated and len(result.output) < 4100
    assert "characters clipped" in result.output
    assert "1 failed, 1 passed" in result.output  # the tail survives the cap


# ---------------------------------------------------------------------------------------
# One server, started once, that never holds user code


def test_one_server_serves_every_run(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    sandbox = make()

    results = [sandbox.run_tests(PASSING) for _ in range(5)]

    assert all(r.ok and r.extra["warm"] for r in results)
    assert len(fake.starts) == 1  # no cold run, no second server
    (start,) = server_starts(fake)
    assert start.stdin and start.cwd.startswith("/tmp/tdd/warm-")
    assert start.args[-1].startswith("exec ")  # envd's pid is the server itself
    sends = [c for c in fake.calls if c.startswith("envd POST /process.Process/SendInput")]
    assert len(sends) == 5
    # Each run still got a fresh directory.
    runs = list((sandbox_of(fake, sandbox).host_path("/tmp/tdd")).glob("run-*"))
    assert len(runs) == 5


def test_server_never_imports_user_code(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    workspace = {
        "conftest.py": "import pytest\n\n@pytest.fixture\ndef one():\n    return 1\n",
        "uniq_calc_mod.py": textwrap.dedent(
            """
            import os

            with open("imported_by.txt", "a") as fh:
                fh.write(f"{os.getpid()}\\n")

            def add(a, b):
                return a + b
            """
        ),
        "test_uniq_calc.py": "from uniq_calc_mod import add\n\n"
        "def test_add(one):\n    assert add(one, 1) == 2\n",
    }
    sandbox = make()

    assert sandbox.run_tests(workspace).ok
    assert sandbox.run_tests(PASSING).ok

    modules = set(sandbox.server_modules())
    assert "_pytest.python" in modules  # pytest is preloaded...
    user = {"conftest", "uniq_calc_mod", "test_uniq_calc", "calc", "test_calc"}
    assert not modules & (user | {"tdd_report_plugin"})  # ...user code is not
    (start,) = server_starts(fake)
    (marker,) = sandbox_of(fake, sandbox).host_path("/tmp/tdd").glob("run-*/imported_by.txt")
    importers = {int(line) for line in marker.read_text().split()}
    assert importers and start.pid not in importers


# ---------------------------------------------------------------------------------------
# Timeouts, dying servers, lost streams, closing


def test_endless_loop_times_out_and_is_killed_in_the_sandbox(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox = make(test_timeout=2)
    loop = "def test_loop():\n    while True:\n        pass\n"

    started = time.monotonic()
    result = sandbox.run_tests({"test_loop.py": loop, "calc.py": CALC})

    assert result.timed_out and not result.ok and result.extra["warm"] is True
    assert result.exit_code == 137  # as a cold run reports it
    assert 2 <= time.monotonic() - started < 6
    (start,) = server_starts(fake)
    box = sandbox_of(fake, sandbox)
    assert box.live_processes() == [start.pid]  # the server alone is left
    assert list(box.processes) == [start.pid]
    assert sandbox.run_tests(PASSING).ok  # and it still serves
    assert len(server_starts(fake)) == 1


def test_server_killed_between_runs_is_replaced(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox = make()
    assert sandbox.run_tests(PASSING).ok
    (first,) = server_starts(fake)

    os.kill(first.pid, signal.SIGKILL)
    assert wait_until(lambda: first.pid not in sandbox_of(fake, sandbox).processes, 5)
    result = sandbox.run_tests(SUITES["failing"])

    # Whether the death was noticed before the request or only by it, the answer is right.
    assert (result.passed, result.failed, result.failing) == (1, 1, ("test_calc.py::test_add",))
    again = sandbox.run_tests(PASSING)
    assert again.ok and again.extra["warm"] is True
    assert len(server_starts(fake)) == 2


def test_server_killed_mid_run_falls_back_to_a_cold_run(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    # Under the warm server the test kills it and hangs; under a cold run it passes.
    killer = textwrap.dedent(
        """
        import os, time

        def test_kill_the_server():
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
                if b"tdd_warm_server" in fh.read():
                    os.kill(os.getppid(), 9)
                    time.sleep(60)
        """
    )
    sandbox = make(test_timeout=2)

    result = sandbox.run_tests({"test_killer.py": killer})

    assert result.ok and result.passed == 1
    assert result.extra["warm"] is False and "ended" in result.extra["fallback"]
    # The orphaned warm child outlives its server only until its own watchdog fires.
    box = sandbox_of(fake, sandbox)
    assert wait_until(lambda: box.live_processes() == [], 2 + 1 + 3), box.live_processes()
    assert sandbox.run_tests(PASSING).extra["warm"] is True
    assert len(server_starts(fake)) == 2


def test_stream_lost_while_idle_is_reattached(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox = make()
    assert sandbox.run_tests(PASSING).ok
    (start,) = server_starts(fake)

    assert fake.cut_streams(start.sandbox_id, start.pid) == 1
    # Idle, as between two model turns: the client's reader notices and stops.
    reader = f"e2b-warm-{start.pid}"
    assert wait_until(lambda: all(t.name != reader for t in threading.enumerate()), 5)
    result = sandbox.run_tests(SUITES["failing"])

    assert result.extra["warm"] is True and result.failed == 1
    assert fake.connects == [start.pid]  # followed again over Connect, not restarted
    assert len(server_starts(fake)) == 1


def test_close_kills_the_server_and_the_sandbox(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox = make()
    assert sandbox.run_tests(PASSING).ok
    box = sandbox_of(fake, sandbox)
    (start,) = server_starts(fake)

    sandbox.close()

    assert fake.alive() == []
    assert wait_until(lambda: box.live_processes() == [], 5)
    assert wait_until(lambda: not pid_alive(start.pid), 5)  # reaped, not just killed
    kill = next(i for i, c in enumerate(fake.calls) if "/process.Process/SendSignal" in c)
    assert kill < fake.calls.index(f"DELETE /sandboxes/{start.sandbox_id}")


def test_reattached_sandbox_gets_a_fresh_server(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    first = make()
    assert first.run_tests(PASSING).ok  # then the worker dies without close()
    (old,) = server_starts(fake)

    revived = make(sandbox_id=first.sandbox_id)
    result = revived.run_tests(SUITES["failing"])

    assert result.extra["warm"] is True and result.failed == 1
    assert revived.sandbox_id == first.sandbox_id
    assert len(server_starts(fake)) == 2
    assert any("/process.Process/List" in c for c in fake.calls)
    assert wait_until(lambda: not pid_alive(old.pid), 5), "the dead worker's server was left"


# ---------------------------------------------------------------------------------------
# Random edits: warm and cold agree, including same-size rewrites within one second


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[E2BSandbox, E2BSandbox]]:
    """A warm and a cold sandbox on one fake, shared by the property test's examples."""
    with FakeE2B(tmp_path_factory.mktemp("e2b")) as fake:
        options: dict[str, Any] = {
            "api_key": fake.api_key,
            "python": sys.executable,
            "test_timeout": 30,
            **fake.sdk_options(),
        }
        warm, cold = E2BSandbox(warm=True, **options), E2BSandbox(**options)
        try:
            yield warm, cold
        finally:
            warm.close()
            cold.close()


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(history=versions)
def test_warm_matches_cold_under_random_edits(pair, history):
    warm, cold = pair
    for ops, test_path in history:
        workspace = {"mathx.py": module_source(ops), test_path: mathx_tests()}
        warm_result = warm.run_tests(workspace)
        cold_result = cold.run_tests(workspace)
        assert warm_result.extra["warm"] is True
        assert verdict(warm_result) == verdict(cold_result), (warm_result, cold_result)
        want = expected_failures(ops, test_path)
        if want is None:
            assert warm_result.errors == 1 and warm_result.failing == (test_path,)
        else:
            assert warm_result.failing == want
            assert warm_result.passed == 4 - len(want)
        # At once rewrite the module with another of the same size (the .pyc trap), checked
        # against the host's own answer: cold runs are too slow to pair with every step.
        flipped = {name: "b - a" if op != "b - a" else "a * b" for name, op in ops.items()}
        workspace["mathx.py"] = module_source(flipped)
        flipped_result = warm.run_tests(workspace)
        assert flipped_result.failing == expected_failures(flipped, test_path)
        assert flipped_result.exit_code == (0 if not flipped_result.failing else 1)
