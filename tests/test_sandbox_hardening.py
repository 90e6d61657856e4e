"""A verdict that can be trusted: candidate code can neither steer nor forge the test result,
and the sandbox holds it. Each case is an attack a red team made work against the old
sandbox, run through real sandboxes: bubblewrap cold and warm, and for the verdict cases
also E2B cold and warm (through the fake E2B, which runs real pytest on this host). Every
hostile case ends with a normal run through the same sandbox.
"""

from __future__ import annotations

import platform
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.sandbox.base import Sandbox, TestResult
from bot.sandbox.e2b import E2BSandbox
from bot.sandbox.jail import GiB, KiB, MiB, SandboxLimits
from bot.sandbox.local import LocalSandbox
from bot.sandbox.pytest_run import PytestConfig
from bot.sandbox.warm import WarmLocalSandbox
from tests.fakes.e2b_envd import FakeE2B

pytestmark = pytest.mark.slow

LIMITS = SandboxLimits(
    wall_seconds=30,
    memory_bytes=768 * MiB,
    cpu_seconds=30,
    processes=48,
    file_size_bytes=64 * MiB,
    open_files=128,
    output_cap=8 * KiB,
    tmpfs_bytes=128 * MiB,
    workspace_bytes=128 * MiB,
)

CALC = "def add(a, b):\n    return a + b\n"
# Tests in a subfolder import the module at the workspace root.
PASSING = {
    "calc.py": CALC,
    "tests/test_calc.py": "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n",
}
# One test passes, one fails: what every attack below tries to turn green.
HALF = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_calc.py": textwrap.dedent(
        """
        from calc import add

        def test_passing():
            assert add(0, 0) == 0

        def test_failing():
            assert add(2, 2) == 4
        """
    ),
}
HALF_OUTCOMES = {
    "tests/test_calc.py::test_passing": "passed",
    "tests/test_calc.py::test_failing": "failed",
}
GREEN_REPORT = (
    '{"passed": 2, "failed": 0, "errors": 0, "skipped": 0, "failing": [], '
    '"outcomes": {}, "collected": 2, "exitstatus": 0}'
)

LOCAL = ("cold", "warm")
EVERY = ("cold", "warm", "e2b", "e2b-warm")


class Boxes:
    """Sandboxes shared by this module's tests, one per (kind, limits)."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[str, SandboxLimits], Sandbox] = {}
        self._fake: FakeE2B | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def get(self, kind: str, limits: SandboxLimits = LIMITS) -> Sandbox:
        key = (kind, limits)
        if key not in self._boxes:
            self._boxes[key] = self._make(kind, limits)
        return self._boxes[key]

    def _make(self, kind: str, limits: SandboxLimits) -> Sandbox:
        if kind == "cold":
            return LocalSandbox(limits)
        if kind == "warm":
            return WarmLocalSandbox(limits)
        if self._fake is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tdd-fake-e2b-")
            self._fake = FakeE2B(Path(self._tmp.name) / "e2b").start()
        return E2BSandbox(
            api_key=self._fake.api_key,
            python=sys.executable,  # the fake runs commands on this host
            test_timeout=limits.wall_seconds,
            create_timeout=5,
            output_cap=limits.output_cap,
            warm=kind == "e2b-warm",
            **self._fake.sdk_options(),
        )

    def close(self) -> None:
        for box in self._boxes.values():
            box.close()
        if self._fake is not None:
            self._fake.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


@pytest.fixture(scope="module")
def boxes() -> Iterator[Boxes]:
    shared = Boxes()
    yield shared
    shared.close()


@pytest.fixture(params=EVERY)
def any_box(request: pytest.FixtureRequest, boxes: Boxes) -> Sandbox:
    return boxes.get(request.param)


@pytest.fixture(params=LOCAL)
def local_for(request: pytest.FixtureRequest, boxes: Boxes) -> Callable[..., Sandbox]:
    """A local sandbox of this test's kind (cold or warm), with the given limits."""

    def get(limits: SandboxLimits = LIMITS) -> Sandbox:
        return boxes.get(request.param, limits)

    return get


def assert_healthy(box: Sandbox) -> None:
    result = box.run_tests(PASSING)
    assert result.ok, result.output
    assert result.outcomes == {"tests/test_calc.py::test_add": "passed"}


def assert_half_failing(result: TestResult) -> None:
    """The real pytest ran the real tests, with no options but ours."""
    assert not result.ok, result.output
    assert (result.passed, result.failed, result.errors) == (1, 1, 0), result.output
    assert result.outcomes == HALF_OUTCOMES
    assert result.failing == ("tests/test_calc.py::test_failing",)


# ---------------------------------------------------------------------------------------
# Test runs cannot be steered by the workspace

GREENWASH_PLUGIN = textwrap.dedent(
    """
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        report.outcome = "passed"
        report.longrepr = None
    """
)
WORKSPACE_CONFIGS = {
    "pytest.ini -k": {"pytest.ini": "[pytest]\naddopts = -k test_passing\n"},
    "pytest.ini loads a plugin": {
        "pytest.ini": "[pytest]\naddopts = -p greenwash\n",
        "greenwash.py": GREENWASH_PLUGIN,
    },
    ".pytest.ini": {".pytest.ini": "[pytest]\naddopts = -k test_passing\n"},
    "tox.ini": {"tox.ini": "[pytest]\naddopts = -k test_passing\n"},
    "setup.cfg": {"setup.cfg": "[tool:pytest]\naddopts = -k test_passing\n"},
    "pyproject.toml ini_options": {
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-k test_passing"\n'
    },
    "pyproject.toml tool.pytest": {
        "pyproject.toml": '[tool.pytest]\naddopts = ["-k", "test_passing"]\n'
    },
}


def test_workspace_config_files_are_ignored(any_box):
    for name, files in WORKSPACE_CONFIGS.items():
        result = any_box.run_tests({**HALF, **files})
        assert "-k" not in result.command.split(), name
        assert_half_failing(result)
    assert_healthy(any_box)


FAKE_PYTEST = textwrap.dedent(
    f"""
    import os, sys
    print("FAKE PYTEST RAN")
    path = os.environ.get("TDD_REPORT_PATH")
    if path:
        with open(path, "w") as fh:
            fh.write({GREEN_REPORT!r})
    sys.exit(0)
    """
)


def test_workspace_pytest_is_not_run(any_box):
    for files in (
        {"pytest.py": FAKE_PYTEST},
        {"pytest/__init__.py": "", "pytest/__main__.py": FAKE_PYTEST},
    ):
        result = any_box.run_tests({**HALF, **files})
        assert "FAKE PYTEST RAN" not in result.output
        assert_half_failing(result)
    assert_healthy(any_box)


def test_workspace_report_plugin_is_not_loaded(any_box):
    fake_plugin = textwrap.dedent(
        f"""
        import os
        print("FAKE PLUGIN LOADED")

        def pytest_sessionfinish(session, exitstatus):
            path = os.environ.get("TDD_REPORT_PATH")
            if path:
                with open(path, "w") as fh:
                    fh.write({GREEN_REPORT!r})
            os._exit(0)
        """
    )
    which = textwrap.dedent(
        """
        import os, sys

        def test_plugin_is_ours():
            plugin = sys.modules["tdd_report_plugin"]
            assert os.path.dirname(plugin.__file__) != os.getcwd()
            assert hasattr(plugin, "pytest_load_initial_conftests")
        """
    )
    result = any_box.run_tests(
        {**HALF, "tdd_report_plugin.py": fake_plugin, "tests/test_which.py": which}
    )
    assert "FAKE PLUGIN LOADED" not in result.output
    assert not result.ok
    assert result.outcomes == {
        **HALF_OUTCOMES,
        "tests/test_which.py::test_plugin_is_ours": "passed",
    }
    assert_healthy(any_box)


def test_callers_config_is_used_and_the_workspace_root_importable(any_box):
    workspace = {
        "src/lib.py": "X = 1\n",
        "calc.py": CALC,
        "tests/test_cfg.py": textwrap.dedent(
            """
            from calc import add
            from lib import X

            def test_wanted():
                assert add(X, 1) == 2

            def test_unwanted():
                assert False
            """
        ),
        "pytest.ini": "[pytest]\naddopts = -k test_unwanted\n",  # ignored all the same
    }
    configs = [
        "[pytest]\npythonpath = src\naddopts = -k test_wanted\n",
        PytestConfig(
            '[tool.pytest.ini_options]\npythonpath = ["src"]\naddopts = "-k test_wanted"\n',
            "pyproject.toml",
        ),
    ]
    for config in configs:
        result = any_box.run_tests(workspace, pytest_config=config)
        assert result.ok, result.output
        assert result.outcomes == {"tests/test_cfg.py::test_wanted": "passed"}
        assert "-c" in result.command.split()
    # Without it, `src` is not on sys.path: our empty config, not the workspace's, applies.
    result = any_box.run_tests(workspace)
    assert not result.ok and result.outcomes == {"tests/test_cfg.py": "error"}


# ---------------------------------------------------------------------------------------
# The report channel


def test_report_path_is_hidden_from_the_code_under_test(any_box):
    test = textwrap.dedent(
        r"""
        import os, re, subprocess, sys

        NAME = re.compile(rb"TDD_REPORT_PATH|[0-9a-f]{32}\.json")

        def test_not_in_the_environment():
            assert "TDD_REPORT_PATH" not in os.environ
            with open("/proc/self/environ", "rb") as fh:
                assert not NAME.search(fh.read())
            child = subprocess.run(
                [sys.executable, "-c", "import os; print(sorted(os.environ))"],
                capture_output=True, check=True,
            )
            assert b"TDD_REPORT_PATH" not in child.stdout
        """
    )
    result = any_box.run_tests({"test_hidden.py": test})
    assert result.ok, result.output


def test_report_dir_cannot_be_listed_and_no_process_shows_the_path(local_for):
    test = textwrap.dedent(
        r"""
        import os, re
        import pytest

        NAME = re.compile(rb"TDD_REPORT_PATH|[0-9a-f]{32}\.json")

        def test_report_dir_unlistable():
            with pytest.raises(PermissionError):
                os.listdir("/run/tdd/out")

        def test_no_process_shows_it():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for name in ("cmdline", "environ"):
                        try:
                            with open(f"/proc/{pid}/{name}", "rb") as fh:
                                data = fh.read()
                        except OSError:
                            continue  # bwrap's pid 1 belongs to root
                        assert not NAME.search(data), (pid, name, data)
        """
    )
    result = local_for().run_tests({"test_unlistable.py": test})
    assert result.ok, result.output


def test_normal_run_fills_the_proof_fields(any_box):
    workspace = {
        "calc.py": CALC,
        "tests/test_calc.py": textwrap.dedent(
            """
            import pytest
            from calc import add

            @pytest.fixture
            def broken():
                raise RuntimeError("fixture")

            def test_ok():
                assert add(1, 1) == 2

            def test_bad():
                assert add(1, 1) == 3

            def test_error(broken):
                pass

            @pytest.mark.skip
            def test_skipped():
                pass
            """
        ),
    }
    result = any_box.run_tests(workspace)
    assert result.outcomes == {
        "tests/test_calc.py::test_ok": "passed",
        "tests/test_calc.py::test_bad": "failed",
        "tests/test_calc.py::test_error": "error",
        "tests/test_calc.py::test_skipped": "skipped",
    }
    assert result.collected == 4
    assert result.versions == {"python": platform.python_version(), "pytest": pytest.__version__}
    argv = result.command.split()
    assert argv[1:6] == ["-B", "-P", "-s", "-m", "pytest"]
    assert {"-c", "--rootdir", "--confcutdir"} <= set(argv)
    assert TestResult.from_dict(result.to_dict()) == result


# ---------------------------------------------------------------------------------------
# Containment


def test_nested_namespaces_are_refused(local_for):
    numbers = {"x86_64": (56, 435), "aarch64": (220, 435)}.get(platform.machine())
    if numbers is None:
        pytest.skip("syscall numbers known for x86_64 and aarch64 only")
    test = textwrap.dedent(
        f"""
        import ctypes, errno, multiprocessing, os, subprocess, sys, threading
        import pytest

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        @pytest.mark.parametrize("flag", [
            0x10000000,  # CLONE_NEWUSER
            0x10000000 | 0x40000000 | 0x00020000,  # user + net + mount, the red team's
            0x40000000, 0x00020000, 0x08000000, 0x20000000,
        ])
        def test_unshare_refused(flag):
            assert libc.unshare(flag) == -1 and ctypes.get_errno() == errno.EPERM

        def test_raw_clone_with_newuser_refused():
            flags = 0x10000000 | 17  # CLONE_NEWUSER | SIGCHLD
            assert libc.syscall(ctypes.c_long({numbers[0]}), ctypes.c_long(flags), 0, 0, 0, 0) == -1
            assert ctypes.get_errno() == errno.EPERM

        def test_clone3_is_enosys_so_libc_falls_back():
            args = ctypes.create_string_buffer(88)
            assert libc.syscall(ctypes.c_long({numbers[1]}), args, ctypes.c_long(88)) == -1
            assert ctypes.get_errno() == errno.ENOSYS

        def test_setns_refused():
            assert libc.setns(0, 0) == -1 and ctypes.get_errno() == errno.EPERM

        def test_threads_subprocesses_and_multiprocessing_work():
            seen = []
            threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(seen) == [0, 1, 2, 3]
            out = subprocess.run(["sh", "-c", "echo hi"], capture_output=True, check=True)
            assert out.stdout == b"hi\\n"
            with multiprocessing.get_context("fork").Pool(2) as pool:
                assert pool.map(abs, [-1, -2]) == [1, 2]
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                assert pool.map(abs, [-3]) == [3]
            assert libc.unshare(0x00000400) == 0  # CLONE_FILES: no namespace, allowed
        """
    )
    box = local_for()
    result = box.run_tests({"test_ns.py": test})
    assert result.ok and result.passed == 10, result.output
    assert_healthy(box)


def test_whole_run_memory_limit_holds(local_for):
    # Six processes of 300 MiB: each within its own RLIMIT_AS, together over the run's.
    limits = replace(LIMITS, memory_bytes=512 * MiB, run_memory_bytes=1 * GiB)
    test = textwrap.dedent(
        """
        import multiprocessing, time

        def hold(mib):
            block = bytearray(mib * 2**20)
            time.sleep(30)

        def test_many_processes():
            ctx = multiprocessing.get_context("fork")
            procs = [ctx.Process(target=hold, args=(300,)) for _ in range(6)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        """
    )
    box = local_for(limits)
    result = box.run_tests({"test_hog.py": test})
    assert not result.ok and not result.timed_out and result.sandbox_error is None
    assert result.extra.get("memory_exceeded") is True, result.output
    assert "<memory limit exceeded>" in result.failing
    assert result.duration < 10
    assert_healthy(box)


def test_disk_is_capped_and_a_full_disk_is_an_ordinary_failure(local_for):
    limits = replace(LIMITS, tmpfs_bytes=64 * MiB, workspace_bytes=64 * MiB)
    test = textwrap.dedent(
        """
        import os
        import pytest

        @pytest.mark.parametrize("where", [".", "/tmp", "/dev/shm"])
        def test_fill(where):
            chunk = b"x" * 2**20
            for i in range(24):
                with open(os.path.join(where, f"big{i}"), "wb") as fh:
                    for _ in range(64):
                        fh.write(chunk)
        """
    )
    box = local_for(limits)
    result = box.run_tests({"test_fill.py": test})
    assert not result.ok and result.sandbox_error is None and not result.timed_out
    assert (result.failed, result.errors) == (3, 0), result.output
    assert result.output.count("No space left on device") >= 3
    # A workspace bigger than /workspace fails too, before pytest starts.
    big = {**PASSING, **{f"blob{i}.txt": "y" * (40 * 2**20) for i in range(2)}}
    result = box.run_tests(big)
    assert not result.ok and result.sandbox_error is None
    assert "No space left on device" in result.output
    assert_healthy(box)


def test_warm_runs_start_from_a_clean_slate(boxes):
    box = boxes.get("warm")
    leaver = textwrap.dedent(
        """
        import ctypes, os

        def test_leave_traces():
            for top in ("/tmp", "/dev/shm", "."):
                os.makedirs(f"{top}/locked/deeper")
                with open(f"{top}/locked/deeper/file", "w") as fh:
                    fh.write("x")
                os.chmod(f"{top}/locked/deeper", 0)
                os.chmod(f"{top}/locked", 0)
            rt = ctypes.CDLL("librt.so.1", use_errno=True)
            rt.mq_open.restype = ctypes.c_int
            assert rt.mq_open(b"/tdd-left", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0
            assert os.listdir("/dev/mqueue") == ["tdd-left"]
        """
    )
    assert box.run_tests({"test_leave.py": leaver}).ok
    checker = textwrap.dedent(
        """
        import ctypes, errno, os

        def test_clean_slate():
            # A checkout or venv under /tmp is bound in read-only (as on some CI machines), so
            # /tmp need not be empty: what the last run left must be gone.
            assert "locked" not in os.listdir("/tmp")
            assert os.listdir("/dev/shm") == []
            assert sorted(os.listdir(".")) == ["test_check.py"]
            assert os.listdir("/dev/mqueue") == []
            rt = ctypes.CDLL("librt.so.1", use_errno=True)
            assert rt.mq_open(b"/tdd-left", os.O_RDWR, 0, None) == -1
            assert ctypes.get_errno() == errno.ENOENT
        """
    )
    result = box.run_tests({"test_check.py": checker})
    assert result.ok, result.output
    assert_healthy(box)


def test_probe_reports_the_rules_that_apply(local_for):
    report = local_for().check()  # type: ignore[attr-defined]
    assert report.error is None
    assert report.memory.startswith(("cgroup v2", "watchdog"))
    assert "4 GiB" in report.memory  # LIMITS.run_memory_bytes (the default)
    assert re.search(r"/workspace \d+ MiB", report.disk)
