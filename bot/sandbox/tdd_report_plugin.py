"""pytest plugin loaded inside sandboxes: writes pytest's own outcomes as JSON, and puts the
workspace root on sys.path.

Only the stdlib and pytest: it runs under the sandbox's Python, next to untrusted code.

The report path comes from TDD_REPORT_PATH. The variable is taken out of the environment
the moment this module is imported (pytest imports `-p` plugins before any conftest, test
or candidate module), and its bytes are wiped from the environment block the process
started with, which /proc/self/environ would otherwise keep showing. The file name is
random per run and its directory cannot be listed, so code under test cannot find the
report without reading this process's memory. Without the variable the plugin writes
nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import pytest

_REPORT_ENV = "TDD_REPORT_PATH"
# A test with several reports (a failed call and a failing teardown) keeps the worst.
_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def _initial_environ_entries(prefix: bytes) -> list[tuple[int, int]]:
    """(address, length) of `prefix...` strings inside the exec-time environment block."""
    try:
        import ctypes

        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().rsplit(b")", 1)[1].split()
        # Fields 50 and 51 of proc(5): env_start and env_end (3 is the first after comm).
        start, end = int(stat[47]), int(stat[48])
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
        found = []
        i = 0
        while (address := environ[i]) is not None:
            entry = ctypes.string_at(address)
            # Only the block /proc shows: strings setenv() made live on the heap, where
            # libc may still index them.
            if entry.startswith(prefix) and start <= address and address + len(entry) <= end:
                found.append((address, len(entry)))
            i += 1
        return found
    except (OSError, ValueError, IndexError, AttributeError):
        return []


def _take_report_path() -> str | None:
    path = os.environ.get(_REPORT_ENV)
    if path is None:
        return None
    entries = _initial_environ_entries(_REPORT_ENV.encode() + b"=")
    del os.environ[_REPORT_ENV]  # unsetenv: subprocesses of the tests do not inherit it
    if entries:
        import ctypes

        for address, length in entries:
            ctypes.memset(address, 0, length)
    directory = os.path.dirname(path) or "."
    # Where the report dir is ours (E2B, or no root on the host), stop it being listed; a
    # root-owned dir (the local sandbox as root) already is unlistable and not ours. Only a
    # dir made for the report alone: a caller's own temp dir keeps its mode.
    with contextlib.suppress(OSError):
        if os.stat(directory).st_uid == os.getuid() and os.listdir(directory) in (
            [],
            [os.path.basename(path)],
        ):
            os.chmod(directory, 0o300)
    return path


_report_path = _take_report_path()
_versions = {
    "python": "{}.{}.{}".format(*sys.version_info[:3]),
    "pytest": str(pytest.__version__),
}
_state: dict[str, Any] = {
    "passed": 0,
    "failed": 0,
    "errors": 0,
    "skipped": 0,
    "failing": [],
    "outcomes": {},
}


def _outcome(nodeid: str, outcome: str) -> None:
    previous = _state["outcomes"].get(nodeid)
    if previous is None or _RANK[outcome] > _RANK[previous]:
        _state["outcomes"][nodeid] = outcome


def _fail(nodeid: str, key: str) -> None:
    _state[key] += 1
    if nodeid not in _state["failing"]:
        _state["failing"].append(nodeid)
    _outcome(nodeid, "failed" if key == "failed" else "error")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any) -> None:
    """Put the workspace root first on sys.path before any conftest is imported (what
    `pythonpath = .` would do, but only now that every plugin is loaded)."""
    root = early_config.rootpath
    inipath = early_config.inipath
    if inipath is not None and inipath.parent != root:
        # pytest put our config's relative `pythonpath` entries under the config's own
        # (read-only) dir: move them to the workspace, where the repository meant them.
        for entry in early_config.getini("pythonpath"):
            try:
                moved = str(root / entry.relative_to(inipath.parent))
            except ValueError:
                continue  # an absolute path elsewhere: kept as configured
            sys.path[:] = [moved if p == str(entry) else p for p in sys.path]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call":
        if report.passed:
            # An unexpected pass of an xfail(strict=False) counts as passed, like pytest.
            _state["passed"] += 1
            _outcome(report.nodeid, "passed")
        elif report.failed:
            _fail(report.nodeid, "failed")
        elif report.skipped:
            _state["skipped"] += 1
            _outcome(report.nodeid, "skipped")
    elif report.failed:
        # setup/teardown failures are errors in pytest's own vocabulary.
        _fail(report.nodeid, "errors")
    elif report.skipped and report.when == "setup":
        _state["skipped"] += 1
        _outcome(report.nodeid, "skipped")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _fail(report.nodeid or "<collection>", "errors")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if not _report_path:
        return
    data = dict(
        _state,
        exitstatus=int(exitstatus),
        collected=session.testscollected,
        versions=_versions,
    )
    payload = json.dumps(data).encode()
    fd = os.open(_report_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
