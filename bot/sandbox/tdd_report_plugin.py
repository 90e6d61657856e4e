"""pytest plugin loaded inside sandboxes: writes pytest's own outcome counts as JSON.

Stdlib-only on purpose: it runs under the sandbox's Python, next to untrusted code.
The report path comes from TDD_REPORT_PATH; without it the plugin does nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

_state: dict[str, Any] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": []}


def _fail(nodeid: str, key: str) -> None:
    _state[key] += 1
    if nodeid not in _state["failing"]:
        _state["failing"].append(nodeid)


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call":
        if report.passed:
            # An unexpected pass of an xfail(strict=False) counts as passed, like pytest.
            _state["passed"] += 1
        elif report.failed:
            _fail(report.nodeid, "failed")
        elif report.skipped:
            _state["skipped"] += 1
    elif report.failed:
        # setup/teardown failures are errors in pytest's own vocabulary.
        _fail(report.nodeid, "errors")
    elif report.skipped and report.when == "setup":
        _state["skipped"] += 1


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _fail(report.nodeid or "<collection>", "errors")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("TDD_REPORT_PATH")
    if not path:
        return
    data = dict(_state, exitstatus=int(exitstatus), collected=session.testscollected)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
