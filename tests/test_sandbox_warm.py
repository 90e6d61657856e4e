"""The warm runner: same results as cold runs, a clean server, and recovery when it breaks.

Containment (network, secrets, bombs, timeouts, output, writes) runs through both backends
in test_sandbox_local.py; this file covers what only the warm runner has.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from bot.sandbox.base import TestResult
from bot.sandbox.jail import KiB, MiB, SandboxLimits
from bot.sandbox.local import LocalSandbox
from bot.sandbox.warm import WarmLocalSandbox, workspace_module_names
from tests.edits import expected_failures, mathx_tests, module_source, versions

pytestmark = pytest.mark.slow

LIMITS = SandboxLimits(
    wall_seconds=30,
    memory_bytes=768 * MiB,
    cpu_seconds=30,
    processes=48,
    file_size_bytes=16 * MiB,
    open_files=128,
    output_cap=8 * KiB,
    tmpfs_bytes=64 * MiB,
)
PASSING = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n",
}


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmLocalSandbox]:
    with WarmLocalSandbox(LIMITS) as box:
        yield box


@pytest.fixture(scope="module")
def cold() -> LocalSandbox:
    return LocalSandbox(LIMITS)


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
    )


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it on the host."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found


def alive(pids: set[int], wait: float = 5.0) -> set[int]:
    """Which of `pids` still run (zombies count as gone), after waiting up to `wait` s."""

    def running() -> set[int]:
        left = set()
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                left.add(pid)
        return left

    deadline = time.monotonic() + wait
    while (left := running()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ---------------------------------------------------------------------------------------
# Same results as cold runs (random edits from tests/edits.py)


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(history=versions)
def test_warm_matches_cold_under_random_edits(warm, cold, history):
    for ops, test_path in history:
        workspace = {"mathx.py": module_source(ops), test_path: mathx_tests()}
        warm_result = warm.run_tests(workspace)
        cold_result = cold.run_tests(workspace)
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


def test_module_shadowing_a_preloaded_one_runs_in_a_fresh_interpreter(warm, cold):
    workspace = {
        "random.py": "X = 1\n",
        "test_r.py": "def test_r():\n    import random\n    assert random.X == 1\n",
    }
    warm_result = warm.run_tests(workspace)
    assert warm_result.extra["mode"] == "exec"
    assert verdict(warm_result) == verdict(cold.run_tests(workspace))
    assert warm.run_tests(PASSING).extra["mode"] == "fork"


def test_workspace_module_names():
    names = workspace_module_names(
        {"a.py": "", "pkg/b.py": "", "tests/test_c.py": "", "README.md": "", "conftest.py": ""}
    )
    assert names == {"a", "pkg", "b", "tests", "test_c", "conftest"}


# ---------------------------------------------------------------------------------------
# The server stays clean and recovers


def test_server_never_imports_user_code(warm):
    workspace = {
        "conftest.py": "import pytest\n\n@pytest.fixture\ndef one():\n    return 1\n",
        "uniq_calc_mod.py": "def add(a, b):\n    return a + b\n",
        "uniq_pkg/__init__.py": "",
        "uniq_pkg/helpers.py": "HELP = 1\n",
        "test_uniq_calc.py": textwrap.dedent(
            """
            from uniq_calc_mod import add
            from uniq_pkg.helpers import HELP

            def test_add(one):
                assert add(one, HELP) == 2
            """
        ),
    }
    assert warm.run_tests(workspace).ok
    assert warm.run_tests(PASSING).ok
    modules = set(warm.server_modules())
    assert "_pytest.python" in modules  # pytest is preloaded...
    user = {"conftest", "uniq_calc_mod", "uniq_pkg", "uniq_pkg.helpers", "test_uniq_calc"}
    assert not modules & (user | {"calc", "test_calc", "tdd_report_plugin"})  # ...user code not


def test_server_killed_by_the_code_under_test_is_replaced():
    with WarmLocalSandbox(LIMITS) as box:
        assert box.run_tests(PASSING).ok
        first = box.server_pid
        assert first is not None
        tree = descendants(first)
        killer = "import os\n\ndef test_kill():\n    os.kill(os.getppid(), 9)\n"
        result = box.run_tests({"test_kill.py": killer})
        assert not result.ok and result.sandbox_error
        assert not alive(tree)  # the old sandbox is gone entirely
        assert box.run_tests(PASSING).ok
        assert box.server_pid not in (None, first) and box.restarts == 1


def test_hung_server_is_replaced():
    with WarmLocalSandbox(replace(LIMITS, wall_seconds=3), host_grace=1.0) as box:
        stopper = "import os\n\ndef test_stop():\n    os.kill(os.getppid(), 19)  # SIGSTOP\n"
        started = time.monotonic()
        result = box.run_tests({"test_stop.py": stopper})
        assert time.monotonic() - started < 3 + 1 + 10
        assert not result.ok and result.timed_out
        assert box.run_tests(PASSING).ok and box.restarts == 1


def test_close_stops_everything_and_removes_files(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    box = WarmLocalSandbox(LIMITS, temp_root=str(runs))
    assert box.run_tests(PASSING).ok
    pid = box.server_pid
    assert pid is not None
    tree = descendants(pid)
    assert len(tree) >= 3  # bwrap, its init, the server
    assert list(runs.iterdir())
    box.close()
    assert not alive(tree)
    assert list(runs.iterdir()) == []
    box.close()  # idempotent
    # A closed sandbox starts a fresh server when used again.
    assert box.run_tests(PASSING).ok
    box.close()
    assert list(runs.iterdir()) == []


def test_runs_do_not_leak_into_each_other(warm):
    leaver = textwrap.dedent(
        """
        import ctypes, os

        def test_leave_traces():
            open("/tmp/left-behind", "w").write("x")
            open("/dev/shm/left-behind", "w").write("x")
            open("left-behind.txt", "w").write("x")
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.shmget(0x7DD, 1 << 20, 0o1600) >= 0  # IPC_CREAT | 0600
            assert libc.semget(0x7DD, 1, 0o1600) >= 0
            assert libc.msgget(0x7DD, 0o1600) >= 0
            # /workspace is a tmpfs that belongs to root (as root): a locked dir in it.
            os.makedirs("locked/deeper")
            os.chmod("locked", 0)
        """
    )
    assert warm.run_tests({"test_leave.py": leaver}).ok
    checker = textwrap.dedent(
        """
        import os

        def test_clean_slate():
            assert not os.path.exists("/tmp/left-behind")
            assert not os.path.exists("/dev/shm/left-behind")
            for kind in ("shm", "sem", "msg"):
                assert len(open(f"/proc/sysvipc/{kind}").read().splitlines()) == 1
            assert sorted(os.listdir(".")) == ["test_check.py"]
            open("new.txt", "w").write("x")
        """
    )
    result = warm.run_tests({"test_check.py": checker})
    assert result.ok, result.output
