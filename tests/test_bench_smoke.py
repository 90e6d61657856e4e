"""The benchmarks still run: each one, with tiny parameters, emits its JSON report.

No timing is asserted here (speed goals live in bench/ and are measurements, not tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import e2e, journal, sandbox, tokens, webhook

pytestmark = pytest.mark.slow

CASES: list[tuple[str, Callable[[list[str]], int], list[str]]] = [
    ("sandbox", sandbox.main, ["--repeat", "1"]),
    ("journal", journal.main, ["--repeat", "1", "--steps", "5"]),
    (
        "webhook",
        webhook.main,
        ["--repeat", "1", "--requests", "60", "--rate-seconds", "0.2", "--warmup", "10"],
    ),
    ("e2e", e2e.main, ["--repeat", "1", "--modes", "simple"]),
    ("tokens", tokens.main, ["--iterations", "2"]),
]


@pytest.mark.parametrize(("name", "main", "argv"), CASES, ids=[c[0] for c in CASES])
def test_benchmark_runs_and_reports(
    name: str, main: Callable[[list[str]], int], argv: list[str], tmp_path: Path
) -> None:
    out = tmp_path / f"{name}.json"
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == name
    assert report["rows"] and report["targets"]
    for target in report["targets"]:
        assert {"name", "value", "op", "limit", "met"} <= set(target)
        assert isinstance(target["met"], bool)
    assert isinstance(report["all_met"], bool)
