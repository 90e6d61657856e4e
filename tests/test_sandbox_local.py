"""The local bubblewrap sandbox, against real bwrap and real pytest: results and containment.

The containment tests run through every local backend (cold and warm); each hostile case
ends by checking that a normal run still works and that nothing it started survives.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.errors import SandboxUnavailable
from bot.sandbox.base import Sandbox, TestResult
from bot.sandbox.capture import HeadTail
from bot.sandbox.jail import GiB, KiB, MiB, SandboxLimits
from bot.sandbox.local import LocalSandbox
from bot.sandbox.rundir import remove_tree, safe_relpath
from bot.sandbox.seccomp import (
    AF_VSOCK,
    EAFNOSUPPORT,
    SECCOMP_RET_ALLOW,
    build_vsock_filter,
    decode,
)
from bot.sandbox.warm import WarmLocalSandbox

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
AS_ROOT = os.geteuid() == 0

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
SHORT = replace(LIMITS, wall_seconds=4)  # long enough for a cold start on a busy machine

PASSING = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": textwrap.dedent(
        """
        from calc import add

        def test_one():
            assert add(1, 1) == 2

        def test_two():
            assert add(2, 2) == 4

        def test_three():
            assert add(0, 0) == 0
        """
    ),
}


BACKENDS: dict[str, Callable[[SandboxLimits], Sandbox]] = {
    "cold": LocalSandbox,
    "warm": WarmLocalSandbox,
}


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[tuple[str, SandboxLimits], Sandbox]]:
    cache: dict[tuple[str, SandboxLimits], Sandbox] = {}
    yield cache
    for box in cache.values():
        box.close()


@pytest.fixture(params=sorted(BACKENDS))
def sandbox_for(
    request: pytest.FixtureRequest, boxes: dict[tuple[str, SandboxLimits], Sandbox]
) -> Callable[[SandboxLimits], Sandbox]:
    """A backend of this test's kind with the given limits, shared within the module."""

    def get(limits: SandboxLimits = LIMITS) -> Sandbox:
        key = (request.param, limits)
        if key not in boxes:
            boxes[key] = BACKENDS[request.param](limits)
        return boxes[key]

    return get


def assert_healthy(box: Sandbox) -> None:
    result = box.run_tests(PASSING)
    assert result.ok, result.output
    assert (result.passed, result.failed, result.errors) == (3, 0, 0)


def processes_with(marker: str) -> list[str]:
    """Host processes whose command line or name contains `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for name in ("cmdline", "comm"):
            try:
                data = Path(f"/proc/{pid}/{name}").read_bytes()
            except OSError:
                continue
            if marker.encode() in data:
                found.append(f"{pid}: {data!r}")
                break
    return found


def assert_no_survivors(marker: str) -> None:
    deadline = time.monotonic() + 5
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, left


# ---------------------------------------------------------------------------------------
# Results


def test_passing_suite_is_ok_with_counts(sandbox_for):
    result = sandbox_for().run_tests(PASSING)
    assert result.ok, result.output
    assert (result.exit_code, result.passed, result.failed, result.errors) == (0, 3, 0, 0)
    assert result.failing == ()
    assert not result.timed_out and result.sandbox_error is None


def test_failing_suite_reports_pytest_ids(sandbox_for):
    workspace = {
        "calc.py": "def add(a, b):\n    return a - b\n",
        "tests/test_calc.py": textwrap.dedent(
            """
            import pytest
            from calc import add

            def test_zero():
                assert add(0, 0) == 0

            def test_sum():
                assert add(2, 2) == 4

            class TestMore:
                @pytest.mark.parametrize("a", [1, 2])
                def test_param(self, a):
                    assert add(a, a) == 2 * a

            @pytest.mark.skip
            def test_skipped():
                pass
            """
        ),
    }
    result = sandbox_for().run_tests(workspace)
    assert not result.ok
    assert result.exit_code == 1
    assert (result.passed, result.failed, result.errors, result.skipped) == (1, 3, 0, 1)
    assert result.failing == (
        "tests/test_calc.py::test_sum",
        "tests/test_calc.py::TestMore::test_param[1]",
        "tests/test_calc.py::TestMore::test_param[2]",
    )


def test_collection_error_counts_as_error(sandbox_for):
    workspace = {
        "calc.py": "def add(a, b)\n    return a + b\n",  # syntax error
        "test_calc.py": "from calc import add\n\ndef test_add():\n    assert add(1, 1) == 2\n",
        "test_other.py": "def test_fine():\n    pass\n",
    }
    result = sandbox_for().run_tests(workspace)
    assert not result.ok
    assert result.exit_code == 2
    assert result.errors == 1 and result.failing == ("test_calc.py",)
    assert "SyntaxError" in result.output


def test_empty_suite_is_not_ok(sandbox_for):
    result = sandbox_for().run_tests({"calc.py": "X = 1\n"})
    assert result.exit_code == 5 and not result.ok


def test_workspace_paths_must_stay_inside():
    for bad in ("../evil.py", "/etc/evil.py", "a/../../b.py", ""):
        with pytest.raises(ValueError):
            safe_relpath(bad)
    assert str(safe_relpath("pkg/mod.py")) == "pkg/mod.py"
    with pytest.raises(ValueError):
        LocalSandbox(LIMITS).run_tests({"../escape.py": "x = 1\n"})
    with pytest.raises(ValueError):
        LocalSandbox(LIMITS).run_tests({"a": "x", "a/b.py": "x = 1\n"})


# ---------------------------------------------------------------------------------------
# Containment


def test_network_is_blocked(sandbox_for):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    test = textwrap.dedent(
        f"""
        import socket
        import pytest

        def test_host_loopback_unreachable():
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", {port}), timeout=3)

        def test_internet_unreachable():
            with pytest.raises(OSError):
                socket.create_connection(("1.1.1.1", 53), timeout=3)

        def test_dns_fails():
            with pytest.raises(OSError):
                socket.getaddrinfo("example.com", 443)
        """
    )
    box = sandbox_for()
    try:
        result = box.run_tests({"test_net.py": test})
    finally:
        stop.set()
        thread.join()
        server.close()
    assert result.ok and result.passed == 3, result.output
    assert accepted == []
    assert_healthy(box)


def test_vsock_sockets_are_refused(sandbox_for):
    numbers = {"x86_64": (41, 53, 250), "aarch64": (198, 199, 219)}.get(platform.machine())
    if numbers is None:
        pytest.skip("syscall numbers known for x86_64 and aarch64 only")
    test = textwrap.dedent(
        f"""
        import ctypes, errno, socket
        import pytest

        def test_vsock_socket():
            with pytest.raises(OSError) as info:
                socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            assert info.value.errno == errno.EAFNOSUPPORT

        def test_vsock_socketpair():
            with pytest.raises(OSError) as info:
                socket.socketpair(socket.AF_VSOCK)
            assert info.value.errno == errno.EAFNOSUPPORT

        def test_raw_syscall_with_junk_in_high_bits():
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            for nr in {numbers[:2]}:
                r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(40 | (7 << 32)),
                                 ctypes.c_long(1), ctypes.c_long(0), ctypes.c_long(0))
                assert r == -1 and ctypes.get_errno() == errno.EAFNOSUPPORT

        def test_io_uring_is_off():
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            buf = ctypes.create_string_buffer(120)
            assert libc.syscall(ctypes.c_long(425), ctypes.c_long(4), buf) == -1
            assert ctypes.get_errno() == errno.ENOSYS

        def test_keyrings_are_off():
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1)
            assert libc.syscall(ctypes.c_long({numbers[2]}), ctypes.c_long(0),
                                ctypes.c_long(-4), ctypes.c_long(1)) == -1
            assert ctypes.get_errno() == errno.ENOSYS

        def test_other_families_still_work():
            socket.socket(socket.AF_UNIX).close()
            socket.socket(socket.AF_INET).close()
            a, b = socket.socketpair()
            a.close(); b.close()
        """
    )
    box = sandbox_for()
    result = box.run_tests({"test_vsock.py": test})
    assert result.ok and result.passed == 6, result.output
    assert_healthy(box)


def test_writes_outside_the_workdir_fail(sandbox_for, tmp_path):
    marker = f"tdd-marker-{uuid.uuid4().hex}"
    hidden = [
        p
        for p in (
            PROJECT / "pyproject.toml",
            PROJECT / "bot" / "__init__.py",
            Path(__file__),
            Path.home() / ".bashrc",
            Path.home() / ".profile",
            tmp_path,
            Path("/etc/shadow"),
            Path("/etc/hostname"),
        )
        if p.exists()
    ]
    test = textwrap.dedent(
        f"""
        import os
        import pytest

        @pytest.mark.parametrize("path", [
            "/usr/evil", "/etc/evil", "/evil", "/root/evil", "/run/tdd/lib/evil",
            "/proc/evil", {os.path.join(os.path.realpath(sys.prefix), "evil")!r},
        ])
        def test_cannot_write(path):
            with pytest.raises(OSError):
                with open(path, "w") as fh:
                    fh.write("x")

        def test_tmp_and_workdir_are_writable():
            with open("/tmp/{marker}", "w") as fh:
                fh.write("x")
            with open("{marker}", "w") as fh:
                fh.write("x")

        @pytest.mark.parametrize("path", {[str(p) for p in hidden]!r})
        def test_host_files_invisible(path):
            assert not os.path.exists(path)

        def test_not_root():
            assert os.getuid() != 0 or {not AS_ROOT!r}
        """
    )
    box = sandbox_for()
    result = box.run_tests({"test_outside.py": test})
    assert result.ok and result.failed == 0, result.output
    assert not Path("/tmp", marker).exists()
    assert_healthy(box)


def test_secrets_are_invisible(sandbox_for, monkeypatch, tmp_path):
    token = uuid.uuid4().hex
    secrets = {
        "GROQ_API_KEY": f"gsk_{token}",
        "GITHUB_TOKEN": f"ghp_{token}",
        "E2B_API_KEY": f"e2b_{token}",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    files = [PROJECT / f".tdd-secret-{token}", tmp_path / "secret.txt"]
    if os.access("/root", os.W_OK):
        files.append(Path("/root") / f".tdd-secret-{token}")
    for path in files:
        path.write_text(f"secret {token}\n")
    test = textwrap.dedent(
        f"""
        import os
        import pytest

        TOKEN = {token!r}

        def test_env_has_no_secrets():
            for key in {sorted(secrets)!r}:
                assert key not in os.environ
            assert TOKEN not in repr(os.environ)

        def test_no_process_shows_them():
            for pid in os.listdir("/proc"):
                for name in ("environ", "cmdline"):
                    try:
                        data = open(f"/proc/{{pid}}/{{name}}", "rb").read()
                    except OSError:
                        continue
                    assert TOKEN.encode() not in data

        @pytest.mark.parametrize("path", {[str(p) for p in files]!r})
        def test_secret_files_unreadable(path):
            with pytest.raises(OSError):
                open(path).read()
        """
    )
    box = sandbox_for()
    try:
        result = box.run_tests({"test_secrets.py": test})
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    assert result.ok and result.failed == 0, result.output
    assert token not in result.output
    assert_healthy(box)


def test_process_limit_holds(sandbox_for):
    limits = replace(LIMITS, processes=24)
    test = textwrap.dedent(
        """
        import os, time

        def test_count_children():
            children = []
            try:
                for _ in range(500):
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(60)
                        os._exit(0)
                    children.append(pid)
            except BlockingIOError:
                pass
            finally:
                for pid in children:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
            print("forked", len(children))
            assert 0 < len(children) <= 24
        """
    )
    box = sandbox_for(limits)
    result = box.run_tests({"test_nproc.py": test})
    assert result.ok, result.output
    assert_healthy(box)


def test_fork_bomb_is_contained(sandbox_for):
    marker = f"bomb{uuid.uuid4().hex[:8]}"
    test = textwrap.dedent(
        f"""
        import ctypes, os

        def test_bomb():
            ctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)  # PR_SET_NAME
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """
    )
    limits = replace(SHORT, wall_seconds=2, processes=32)
    box = sandbox_for(limits)
    started = time.monotonic()
    result = box.run_tests({"test_bomb.py": test})
    assert time.monotonic() - started < limits.wall_seconds + 10
    assert not result.ok and result.timed_out
    assert_no_survivors(marker)
    assert_healthy(box)


def test_memory_bomb_is_contained(sandbox_for):
    test = textwrap.dedent(
        """
        import pytest

        def test_grow_until_refused():
            hog = []
            with pytest.raises(MemoryError):
                while True:
                    hog.append(bytearray(32 * 2**20))
            assert len(hog) * 32 < 768

        def test_one_huge_block():
            block = bytearray(8 * 2**30)
        """
    )
    box = sandbox_for()
    result = box.run_tests({"test_mem.py": test})
    assert (result.passed, result.failed) == (1, 1), result.output
    assert result.failing == ("test_mem.py::test_one_huge_block",)
    assert "MemoryError" in result.output
    assert_healthy(box)


def test_endless_loop_is_killed_with_its_children(sandbox_for):
    marker = f"tdd-loop-{uuid.uuid4().hex}"
    test = textwrap.dedent(
        f"""
        import os, subprocess

        def test_spin():
            subprocess.Popen(["sh", "-c", "sleep 1000; : {marker}"], start_new_session=True)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execvp("sh", ["sh", "-c", "sleep 1001; : {marker}"])
                os._exit(0)
            while True:
                pass
        """
    )
    # A cold start on a very busy machine can eat the short timeout before the markers
    # start; then the case proves nothing, so it is repeated once with more time.
    for wall in (SHORT.wall_seconds, 3 * SHORT.wall_seconds):
        seen = threading.Event()
        done = threading.Event()

        def watch(seen: threading.Event = seen, done: threading.Event = done) -> None:
            while not done.is_set():
                if len(processes_with(marker)) >= 2:
                    seen.set()
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        box = sandbox_for(replace(SHORT, wall_seconds=wall))
        started = time.monotonic()
        result = box.run_tests({"test_spin.py": test})
        elapsed = time.monotonic() - started
        done.set()
        watcher.join()
        assert result.timed_out and not result.ok
        assert wall <= elapsed < wall + 5, elapsed
        assert_no_survivors(marker)
        if seen.is_set():
            break
    assert seen.is_set(), "the marker processes never started"
    assert_healthy(box)


def test_huge_output_is_capped_head_and_tail(sandbox_for):
    test = textwrap.dedent(
        """
        import os

        def test_flood(capfd):
            with capfd.disabled():
                os.write(1, b"HEAD-MARK\\n")
                chunk = b"x" * (1 << 20)
                for _ in range(1024):
                    os.write(1, chunk)
                os.write(1, b"\\nTAIL-MARK\\n")
        """
    )
    box = sandbox_for()
    result = box.run_tests({"test_flood.py": test})
    assert result.ok and result.passed == 1, result.output[:500]
    assert result.output_truncated
    assert "HEAD-MARK" in result.output and "TAIL-MARK" in result.output
    assert len(result.output) <= LIMITS.output_cap + 200
    assert result.extra["output_bytes"] > GiB
    assert_healthy(box)


def test_fake_report_cannot_turn_a_failure_green(sandbox_for, tmp_path):
    green = {"passed": 5, "failed": 0, "errors": 0, "skipped": 0, "failing": [], "collected": 5}
    host_green = tmp_path / "green.json"
    host_green.write_text(json.dumps({**green, "exitstatus": 0}))
    host_green.chmod(0o644)
    failing_test = "def test_fails():\n    assert False\n"
    box = sandbox_for()

    def conftest(body: str) -> str:
        # The path is in no environment variable any more: only introspection finds it
        # (test_sandbox_hardening.py checks that); the exit code still has the last word.
        return (
            "import atexit, json, os, sys\n\n"
            "REPORT = sys.modules['tdd_report_plugin']._report_path\n" + textwrap.dedent(body)
        )

    # 1. Overwrite the report after pytest wrote it, claiming exit 0: discarded.
    forged = conftest(
        f"""
        def forge():
            with open(REPORT, "w") as fh:
                json.dump({{**{green!r}, "exitstatus": 0}}, fh)
        atexit.register(forge)
        """
    )
    result = box.run_tests({"conftest.py": forged, "test_x.py": failing_test})
    assert not result.ok and result.exit_code == 1
    assert "report_discarded" in result.extra

    # 2. A consistent forgery (exit 1) still fails: ok needs exit 0.
    forged = conftest(
        f"""
        def forge():
            with open(REPORT, "w") as fh:
                json.dump({{**{green!r}, "exitstatus": 1}}, fh)
        atexit.register(forge)
        """
    )
    result = box.run_tests({"conftest.py": forged, "test_x.py": failing_test})
    assert not result.ok and result.exit_code == 1

    # 3. A symlink to a green report on the host, plus exit 0: the host never follows it.
    forged = conftest(
        f"""
        def forge():
            try:
                os.unlink(REPORT)
                os.symlink({str(host_green)!r}, REPORT)
            except OSError:
                pass  # as root the report dir is read-only to the run
            os._exit(0)
        atexit.register(forge)
        """
    )
    result = box.run_tests({"conftest.py": forged, "test_x.py": failing_test})
    assert not result.ok
    assert result.errors >= 1
    assert_healthy(box)


def test_huge_captured_output_hits_the_file_size_limit(sandbox_for):
    test = "def test_print():\n    print('y' * (64 * 2**20))\n"
    box = sandbox_for()
    result = box.run_tests({"test_print.py": test})
    assert not result.ok
    assert_healthy(box)


# ---------------------------------------------------------------------------------------
# Cold-runner specifics


def test_run_dirs_are_removed(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    box = LocalSandbox(replace(SHORT, wall_seconds=1.5), temp_root=str(runs))
    assert box.run_tests(PASSING).ok
    result = box.run_tests({"test_spin.py": "def test_spin():\n    while True:\n        pass\n"})
    assert result.timed_out
    assert list(runs.iterdir()) == []


def test_dirs_of_killed_workers_are_swept(tmp_path):
    stale = tmp_path / "tdd-sandbox-0123456789abcdef"
    (stale / "work").mkdir(parents=True)
    (stale / "work" / "test_x.py").write_text("x")
    live = tmp_path / "tdd-sandbox-fedcba9876543210"
    live.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(f"\0tdd-agent-dir-{live.name}")  # a live run holds its dir's name
    try:
        LocalSandbox(LIMITS, temp_root=str(tmp_path))
    finally:
        holder.close()
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_remove_tree_never_touches_the_parent(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o1777)
    parent.chmod(0o1777)
    tree = parent / "run"
    (tree / "locked" / "deeper").mkdir(parents=True)
    (tree / "locked" / "deeper" / "f.txt").write_text("x")
    (tree / "locked").chmod(0)
    remove_tree(tree)
    remove_tree(tree)  # already gone: nothing to do, and no chmod on the parent
    assert not tree.exists()
    assert parent.stat().st_mode & 0o7777 == 0o1777


def fake_bwrap(tmp_path: Path, message: str) -> tuple[Path, Path]:
    calls = tmp_path / "calls"
    said = tmp_path / "message"
    said.write_text(message + "\n")
    script = tmp_path / "bwrap"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in --help) echo "usage: bwrap"; exit 0;; esac\n'
        f'echo run >> "{calls}"\n'
        f'cat "{said}" >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return script, calls


def test_missing_user_namespaces_raise_unavailable_once(tmp_path):
    script, calls = fake_bwrap(
        tmp_path,
        "bwrap: No permissions to creating new namespace, likely because the kernel does "
        "not allow non-privileged user namespaces.",
    )
    box = LocalSandbox(LIMITS, bwrap=str(script))
    for _ in range(2):
        with pytest.raises(SandboxUnavailable) as info:
            box.run_tests(PASSING)
        message = str(info.value)
        assert "namespace" in message
        assert "kernel.unprivileged_userns_clone=1" in message
        assert "apparmor_restrict_unprivileged_userns" in message
        assert "E2B_API_KEY" in message
    assert calls.read_text().count("run") == 1  # probed once, then cached


def test_other_bwrap_failures_raise_unavailable(tmp_path):
    script, _ = fake_bwrap(tmp_path, "bwrap: Can't find source path /nowhere: No such file")
    with pytest.raises(SandboxUnavailable) as info:
        LocalSandbox(LIMITS, bwrap=str(script)).check()
    assert "bubblewrap could not start" in str(info.value)
    assert "/nowhere" in str(info.value)


def test_missing_bwrap_is_unavailable(tmp_path):
    with pytest.raises(SandboxUnavailable):
        LocalSandbox(LIMITS, bwrap=str(tmp_path / "no-such-bwrap"))


def test_limits_validate():
    with pytest.raises(ValueError):
        SandboxLimits(memory_bytes=0)
    assert "--nproc=128" in SandboxLimits().prlimit_args()


def test_head_tail_keeps_both_ends():
    capture = HeadTail(8)
    for piece in (b"abc", b"defgh", b"ijklmn", b"opqrstuvwxyz"):
        capture.feed(piece)
    assert capture.total == 26 and capture.dropped == 18
    text = capture.text()
    assert text.startswith("abcd") and text.endswith("wxyz") and "18 bytes" in text
    small = HeadTail(100)
    small.feed(b"hello")
    assert small.text() == "hello" and small.dropped == 0


def test_result_needs_exit_zero():
    assert not TestResult(exit_code=1, passed=3).ok
    assert TestResult(exit_code=0, passed=3).ok


# ---------------------------------------------------------------------------------------
# Seccomp program


def test_seccomp_program_shape():
    for machine, arch in (("x86_64", 0xC000003E), ("aarch64", 0xC00000B7)):
        program = build_vsock_filter(machine)
        assert len(program) % 8 == 0
        ops = decode(program)
        assert 10 <= len(ops) <= 64
        assert ops[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch first
        assert (0x15, ops[1][1], 0, arch) == ops[1]
        for pc, (code, jt, jf, _k) in enumerate(ops):
            if code & 0x07 == 0x05:  # jumps stay inside the program
                assert pc + 1 + max(jt, jf) < len(ops)
        assert ops[-1][0] == 0x06  # ends with a return
        assert (0x15, ops[-4][1], 0, AF_VSOCK) == ops[-4]
        assert (0x06, 0, 0, 0x00050000 | EAFNOSUPPORT) in ops
        assert (0x06, 0, 0, SECCOMP_RET_ALLOW) in ops
    assert build_vsock_filter("x86_64") != build_vsock_filter("aarch64")


def test_seccomp_refuses_unknown_machines():
    with pytest.raises(SandboxUnavailable) as info:
        build_vsock_filter("riscv64")
    assert "riscv64" in str(info.value) and "E2B" in str(info.value)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="native filter")
def test_seccomp_program_blocks_vsock_when_loaded():
    program = build_vsock_filter()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            libc = ctypes.CDLL(None, use_errno=True)

            class SockFprog(ctypes.Structure):
                _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

            buf = ctypes.create_string_buffer(program, len(program))
            fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
            assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
            assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # SECCOMP_MODE_FILTER
            outcome = []
            for family in (socket.AF_VSOCK, socket.AF_UNIX, socket.AF_INET):
                try:
                    socket.socket(family, socket.SOCK_STREAM).close()
                    outcome.append(0)
                except OSError as exc:
                    outcome.append(exc.errno)
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = os.read(read_end, 1000)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert json.loads(data) == [errno.EAFNOSUPPORT, 0, 0]
