"""The pieces of the hardened invocation that need no sandbox: the pytest command line, the
result fields, the seccomp program (loaded for real in a forked child), the memory rule's
cgroup detection and process-tree sum, and the report file's modes.

Everything here runs in well under a second; the same behaviour through real sandboxes is
in test_sandbox_hardening.py.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import platform
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.sandbox.base import TestResult
from bot.sandbox.jail import SandboxLimits, make_report_dir, new_report_file
from bot.sandbox.memory import MemoryRule, own_cgroup_dir, tree_rss
from bot.sandbox.pytest_run import (
    PLUGIN_MODULE,
    PytestConfig,
    as_config,
    pytest_args,
    result_from_report,
)
from bot.sandbox.seccomp import (
    BPF_JSET_K,
    CLONE_NEWUSER,
    ENOSYS,
    EPERM,
    SECCOMP_RET_ERRNO,
    build_filter,
    decode,
)

# ---------------------------------------------------------------------------------------
# The command line


def test_command_line_is_pinned_to_our_config_and_rootdir():
    argv = pytest_args("/py", config_file="/run/tdd/cfg/pytest.ini", rootdir="/workspace")
    # Interpreter flags before `-m`: no cwd on sys.path, no user site, no bytecode.
    assert argv[: argv.index("-m")] == ["/py", "-B", "-P", "-s"]
    assert argv[argv.index("-m") + 1] == "pytest"
    options = argv[argv.index("pytest") + 1 :]
    pairs = set(itertools.pairwise(options))
    assert ("-c", "/run/tdd/cfg/pytest.ini") in pairs
    assert ("--rootdir", "/workspace") in pairs and ("--confcutdir", "/workspace") in pairs
    assert ("-p", "no:cacheprovider") in pairs and ("-p", PLUGIN_MODULE) in pairs
    # The workspace must not reach sys.path before plugins load (see pytest_run.py).
    assert "-o" not in options and not any("pythonpath" in o for o in options)


def test_pytest_config_names_and_text():
    assert as_config(None) == PytestConfig("[pytest]\n", "pytest.ini")
    assert as_config("[pytest]\naddopts = -x\n").filename == "pytest.ini"
    mine = PytestConfig("[tool:pytest]\n", "setup.cfg")
    assert as_config(None, mine) is mine and as_config("x", mine).text == "x"
    for name in ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg"):
        PytestConfig("", name)
    for bad in ("conftest.py", "../pytest.ini", "x/pytest.ini", ""):
        with pytest.raises(ValueError):
            PytestConfig("", bad)


# ---------------------------------------------------------------------------------------
# TestResult


def test_result_fields_round_trip_and_old_journals_load():
    result = TestResult(
        exit_code=1,
        passed=1,
        failed=1,
        failing=("t.py::b",),
        outcomes={"t.py::a": "passed", "t.py::b": "failed"},
        collected=2,
        versions={"python": "3.11.7", "pytest": "9.2.0"},
        command="python -P -m pytest -c /x/pytest.ini",
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert TestResult.from_dict(data) == result
    old = {k: v for k, v in data.items() if k not in ("outcomes", "collected", "versions")}
    del old["command"]
    loaded = TestResult.from_dict(old)
    assert loaded.outcomes == {} and loaded.collected is None and loaded.versions == {}
    assert loaded.command == "" and loaded.failing == ("t.py::b",)
    assert TestResult.from_dict({**data, "from_the_future": 1}) == result


def test_result_from_report_fills_the_new_fields():
    report = {
        "passed": 1,
        "failed": 0,
        "errors": 1,
        "skipped": 0,
        "failing": ["t.py::b"],
        "outcomes": {"t.py::a": "passed", "t.py::b": "error", "t.py::c": "bogus"},
        "collected": 2,
        "versions": {"python": "3.11.7", "pytest": "9.2.0"},
        "exitstatus": 1,
    }
    result = result_from_report(
        exit_code=1, report_json=json.dumps(report), output="", duration=0.1, command="cmd"
    )
    assert result.outcomes == {"t.py::a": "passed", "t.py::b": "error"}
    assert (result.collected, result.command) == (2, "cmd")
    assert result.versions == {"python": "3.11.7", "pytest": "9.2.0"}
    missing = result_from_report(exit_code=0, report_json=None, output="", duration=0.1)
    assert not missing.ok and missing.outcomes == {} and missing.errors == 1
    assert missing.collected is None


# ---------------------------------------------------------------------------------------
# Seccomp: namespaces


def test_seccomp_program_checks_namespace_flags():
    ops = decode(build_filter("x86_64"))
    jsets = [k for code, _jt, _jf, k in ops if code == BPF_JSET_K]
    assert len(jsets) == 2 and all(k & CLONE_NEWUSER for k in jsets)
    returns = {k for code, _jt, _jf, k in ops if code == 0x06}
    assert SECCOMP_RET_ERRNO | EPERM in returns and SECCOMP_RET_ERRNO | ENOSYS in returns


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="native filter")
def test_seccomp_program_refuses_namespaces_but_not_threads_when_loaded():
    program = build_filter()
    clone3 = 435
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long

            class SockFprog(ctypes.Structure):
                _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

            buf = ctypes.create_string_buffer(program, len(program))
            fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
            assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
            assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # SECCOMP_MODE_FILTER
            outcome: dict[str, object] = {}
            for name, flag in (("user", 0x10000000), ("net", 0x40000000), ("ns", 0x20000)):
                outcome[name] = (libc.unshare(flag), ctypes.get_errno())
            args = ctypes.create_string_buffer(88)
            outcome["clone3"] = (libc.syscall(ctypes.c_long(clone3), args, 88), ctypes.get_errno())
            done: list[int] = []
            thread = threading.Thread(target=done.append, args=(1,))
            thread.start()
            thread.join()
            outcome["thread"] = done
            outcome["subprocess"] = subprocess.run(["true"], check=False).returncode
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = os.read(read_end, 10_000)
    os.close(read_end)
    os.waitpid(pid, 0)
    outcome = json.loads(data)
    for name in ("user", "net", "ns"):
        assert outcome[name] == [-1, errno.EPERM], name
    assert outcome["clone3"] == [-1, errno.ENOSYS]
    assert outcome["thread"] == [1] and outcome["subprocess"] == 0


# ---------------------------------------------------------------------------------------
# Memory: which rule, and what the watchdog counts


def fake_hierarchy(tmp_path: Path, controls: str) -> tuple[str, str]:
    """A cgroup2 'mount' at tmp_path with our process in /svc/worker."""
    own = tmp_path / "svc" / "worker"
    own.mkdir(parents=True)
    (own / "cgroup.subtree_control").write_text(controls)
    mountinfo = f"36 25 0:30 / {tmp_path} rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
    return "0::/svc/worker\n", mountinfo


def test_memory_rule_uses_a_cgroup_that_delegates_memory(tmp_path):
    proc_cgroup, mountinfo = fake_hierarchy(tmp_path, "cpu memory pids\n")
    assert own_cgroup_dir(proc_cgroup, mountinfo) == tmp_path / "svc" / "worker"
    rule = MemoryRule.detect(proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    assert rule.kind == "cgroup" and rule.cgroup_parent == tmp_path / "svc" / "worker"
    assert "memory.max" in rule.describe(SandboxLimits())


def test_memory_rule_falls_back_to_the_watchdog(tmp_path):
    proc_cgroup, mountinfo = fake_hierarchy(tmp_path, "cpu pids\n")
    assert MemoryRule.detect(proc_cgroup=proc_cgroup, mountinfo=mountinfo).kind == "watchdog"
    # cgroup v1 only (no cgroup2 line), or a v2 hierarchy we are not in.
    v1 = "30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert MemoryRule.detect(proc_cgroup="4:memory:/x\n0::/\n", mountinfo=v1).kind == "watchdog"
    # A named parent that does not delegate memory is not swapped for another.
    assert MemoryRule.detect(str(tmp_path / "svc" / "worker")).cgroup_parent is None


def test_tree_rss_counts_the_children():
    hold = "b = bytearray(64 * 2**20); print('ready', flush=True); import time; time.sleep(30)"
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}])"
    # Its own process group, so the grandchild goes down with it (killed by that id).
    parent = subprocess.Popen(
        [sys.executable, "-c", spawn], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
        assert tree_rss(parent.pid) >= 64 * 2**20
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        parent.stdout.close()


# ---------------------------------------------------------------------------------------
# The report file


def test_report_files_are_random_private_and_in_an_unlistable_dir(tmp_path):
    bind = make_report_dir(tmp_path / "out")
    assert bind.kind == "--bind" and bind.dest == "/run/tdd/out"
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o711
    (host_a, inside_a), (host_b, _inside_b) = (
        new_report_file(tmp_path / "out", None),
        new_report_file(tmp_path / "out", None),
    )
    assert host_a != host_b
    assert re.fullmatch(r"/run/tdd/out/[0-9a-f]{32}\.json", inside_a)
    assert host_a.name == inside_a.rsplit("/", 1)[1]
    assert stat.S_IMODE(host_a.stat().st_mode) == 0o600 and host_a.stat().st_size == 0
