"""Sandbox start-up cost: bare pytest vs LocalSandbox (cold) vs WarmLocalSandbox, one tiny suite.

Baseline: `python -m pytest` with the sandbox's own arguments (`pytest_args()`), run in a fresh
temp dir on the host with the same report plugin and the same bytecode situation as the
sandbox (a private, pre-filled PYTHONPYCACHEPREFIX and `-B`): the ratio then shows what the
isolation costs, not what compiling pytest from source costs.

Two more variants price the verification run of a green loop (bot/run.py `verified`):
- `verify`: what the product does once per green run: a fresh cold `LocalSandbox`, the
  workspace with canaries planted in its test module (a new token each time), the run,
  `close()`, and the verdict on the report; compared with the plain cold run above;
- `loop`: the sandbox work of a typical 2-iteration run without it: a fresh
  `WarmLocalSandbox` (its server starts on the first run), the red run at the base
  commit, two runs of the loop, `close()`. The same run with verification is `loop` +
  `verify`; the target is that verification does not double it.

All variants run interleaved in every repetition (rotating order) so load drift hits all
of them alike.

    uv run python -m bench.sandbox [--repeat 15] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Report, Target, median, parser, percentile, ratio, run_main
from bot.sandbox.base import Sandbox, TestResult, Workspace
from bot.sandbox.jail import SandboxLimits
from bot.sandbox.local import LocalSandbox
from bot.sandbox.pytest_run import PLUGIN_MODULE, PLUGIN_SOURCE, REPORT_ENV, pytest_args
from bot.verdict import judge, plant_canaries, static_test_counts

COLD_TARGET = 1.10
WARM_TARGET = 0.40
# A verification run is one cold run of the same tests plus two canaries, so it should
# cost about one cold run. Set before measuring, not from the figures.
VERIFY_TARGET = 1.50
# The words: verification must not double a run's (sandbox) time.
TYPICAL_TARGET = 2.00
LOOP_ITERATIONS = 2

SUITE: Workspace = {
    "calc.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "test_calc.py": (
        "from calc import add, sub\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_sub():\n    assert sub(5, 3) == 2\n\n\n"
        "def test_both():\n    assert sub(add(1, 2), 3) == 0\n"
    ),
}
EXPECTED_PASSED = 3
TESTS = {"test_calc.py": SUITE["test_calc.py"]}
# The base commit of the red run: the helpers exist but are wrong, so all three tests fail.
BASE: Workspace = {
    **SUITE,
    "calc.py": "def add(a, b):\n    return None\n\n\ndef sub(a, b):\n    return None\n",
}


class BareRunner:
    """Plain pytest on the host, shaped like a sandbox run: fresh dir, files, report, cleanup."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.root = Path(tempfile.mkdtemp(prefix="bench-bare-"))
        self.lib = self.root / "lib"
        self.lib.mkdir()
        (self.lib / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
        self.pycache = self.root / "pycache"
        self.pycache.mkdir()
        # Fill the bytecode cache once, as the sandbox's probe does for its own cache.
        self.run(SUITE, write_bytecode=True)

    def env(self, home: Path, report: Path, *, write_bytecode: bool) -> dict[str, str]:
        env = {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": str(self.lib),
            "PYTHONPYCACHEPREFIX": str(self.pycache),
            REPORT_ENV: str(report),
        }
        if not write_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def run(self, workspace: Workspace, *, write_bytecode: bool = False) -> tuple[float, int]:
        """(seconds, tests passed)."""
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        try:
            work = tmp / "work"
            work.mkdir()
            for name, text in workspace.items():
                (work / name).write_text(text, encoding="utf-8")
            report = tmp / "report.json"
            argv = pytest_args(self.python)
            if write_bytecode:
                argv.remove("-B")
            proc = subprocess.run(
                argv,
                cwd=work,
                env=self.env(tmp, report, write_bytecode=write_bytecode),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
            )
            passed = int(json.loads(report.read_text())["passed"]) if report.exists() else 0
            if proc.returncode != 0:
                raise RuntimeError(f"bare pytest failed ({proc.returncode}): {proc.stdout[-800:]}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return time.perf_counter() - started, passed

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _timed(run: Callable[[Workspace], TestResult], name: str) -> float:
    started = time.perf_counter()
    result = run(SUITE)
    seconds = time.perf_counter() - started
    if not result.ok or result.passed != EXPECTED_PASSED:
        raise RuntimeError(f"{name} run did not pass the suite: {result.summary()}")
    return seconds


def verification(limits: SandboxLimits) -> tuple[float, float]:
    """One verification run as `bot.run.verified` does it: (seconds in all, of which the
    fresh sandbox's construction and close). Raises unless the verdict is a trusted pass."""
    started = time.perf_counter()
    planted, canaries = plant_canaries(TESTS, token=secrets.token_hex(12))
    workspace = {**SUITE, **planted}
    t_build = time.perf_counter()
    sandbox = LocalSandbox(limits)  # cold on purpose, like wiring.executor's new_verifier
    setup = time.perf_counter() - t_build
    try:
        result = sandbox.run_tests(workspace)
    finally:
        t_close = time.perf_counter()
        sandbox.close()
        setup += time.perf_counter() - t_close
    verdict = judge(
        result.outcomes,
        canaries=canaries,
        minimum=static_test_counts(TESTS),
        exit_code=result.exit_code,
        collected=result.collected,
    )
    seconds = time.perf_counter() - started
    if not (verdict.trusted and verdict.passed):
        raise RuntimeError(f"verification did not pass: {verdict.reason}; {result.summary()}")
    return seconds, setup


def typical_loop(new_sandbox: Callable[[], Sandbox]) -> float:
    """The sandbox work of a run without verification: a fresh loop sandbox, the red run at
    the base commit, LOOP_ITERATIONS runs, close. Seconds."""
    started = time.perf_counter()
    sandbox = new_sandbox()
    try:
        red = sandbox.run_tests(BASE)
        if red.ok or red.failed != EXPECTED_PASSED:
            raise RuntimeError(f"the red run did not fail as expected: {red.summary()}")
        for _ in range(LOOP_ITERATIONS):
            result = sandbox.run_tests(SUITE)
            if not result.ok or result.passed != EXPECTED_PASSED:
                raise RuntimeError(f"loop run did not pass the suite: {result.summary()}")
    finally:
        sandbox.close()
    return time.perf_counter() - started


def _start_warm(limits: SandboxLimits) -> tuple[object | None, float | None, str | None]:
    """(sandbox, first-run seconds, why unavailable): the warm runner is optional here."""
    try:
        from bot.sandbox.warm import WarmLocalSandbox

        warm = WarmLocalSandbox(limits)
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    try:
        first = _timed(warm.run_tests, "warm")
    except Exception as exc:
        warm.close()
        return None, None, f"{type(exc).__name__}: {exc}"
    return warm, first, None


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": median(values) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
        "min_ms": min(values) * 1000,
        "max_ms": max(values) * 1000,
    }


def measure(args: argparse.Namespace) -> Report:
    limits = SandboxLimits()
    cold = LocalSandbox(limits)
    cold.check()  # the probe (and its bytecode cache) is a one-off per process
    _timed(cold.run_tests, "cold")
    bare = BareRunner()
    warm, warm_first, unavailable = _start_warm(limits)

    def new_loop_sandbox() -> Sandbox:
        # The product's loop sandbox is warm by default; cold when the warm one cannot run.
        if warm is None:
            return LocalSandbox(limits)
        from bot.sandbox.warm import WarmLocalSandbox

        return WarmLocalSandbox(limits)

    verify_setup: list[float] = []

    def verify() -> float:
        seconds, setup = verification(limits)
        verify_setup.append(setup)
        return seconds

    samples: dict[str, list[float]] = {"bare": [], "cold": [], "warm": [], "verify": [], "loop": []}
    runners: dict[str, Callable[[], float]] = {
        "bare": lambda: bare.run(SUITE)[0],
        "cold": lambda: _timed(cold.run_tests, "cold"),
        "verify": verify,
        "loop": lambda: typical_loop(new_loop_sandbox),
    }
    if warm is not None:
        runners["warm"] = lambda: _timed(warm.run_tests, "warm")  # type: ignore[attr-defined]
    try:
        # One untimed run of each new variant, as the cold and warm ones had above.
        runners["verify"]()
        runners["loop"]()
        verify_setup.clear()
        names = list(runners)
        for rep in range(args.repeat):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(runners[name]())
    finally:
        bare.close()
        if warm is not None:
            warm.close()  # type: ignore[attr-defined]

    base = median(samples["bare"])
    cold_median = median(samples["cold"])
    # Measured in the same repetition, so each run's with-verification time is a pair's sum.
    samples["typical"] = [
        loop + verify for loop, verify in zip(samples["loop"], samples["verify"], strict=True)
    ]
    loop_median = median(samples["loop"])
    report = Report(
        benchmark="sandbox",
        baseline="bare `python -m pytest` with the sandbox's pytest_args() in a fresh temp dir",
        repeat=args.repeat,
        columns=[
            "variant",
            "median_ms",
            "p90_ms",
            "min_ms",
            "max_ms",
            "ratio_vs_bare",
            "ratio_vs_cold",
            "ratio_vs_run",
        ],
    )
    loop_kind = "warm" if warm is not None else "cold"
    labels = {
        "bare": "bare pytest",
        "cold": "LocalSandbox (cold)",
        "warm": "WarmLocalSandbox",
        "verify": "verification (new cold sandbox, canaries)",
        "loop": f"run: red + {LOOP_ITERATIONS} iterations ({loop_kind}), no verify",
        "typical": "run: the same + verification",
    }
    for name, label in labels.items():
        values = samples[name]
        if not values:
            report.rows.append(
                {"variant": f"{label} (unavailable)", "key": name, "available": False}
            )
            continue
        row: dict[str, object] = {
            "variant": label,
            "key": name,
            "available": True,
            **_stats(values),
            "ratio_vs_bare": ratio(median(values), base),
            "samples_ms": [round(v * 1000, 2) for v in values],
        }
        if name in ("cold", "verify"):
            row["ratio_vs_cold"] = ratio(median(values), cold_median)
        if name in ("loop", "typical"):
            row["ratio_vs_run"] = ratio(median(values), loop_median)
        report.rows.append(row)
        if name == "verify":
            report.rows.append(
                {
                    "variant": "  of which LocalSandbox() + close()",
                    "key": "verify_setup",
                    "available": True,
                    **_stats(verify_setup),
                    "ratio_vs_cold": ratio(median(verify_setup), cold_median),
                }
            )
    if warm_first is not None:
        report.rows.append(
            {
                "variant": "warm first run (server start, once)",
                "key": "warm_first",
                "available": True,
                "median_ms": warm_first * 1000,
                "ratio_vs_bare": ratio(warm_first, base),
            }
        )
    report.targets.append(Target("cold / bare", ratio(cold_median, base), "<=", COLD_TARGET))
    if samples["warm"]:
        report.targets.append(
            Target("warm / bare", ratio(median(samples["warm"]), base), "<=", WARM_TARGET)
        )
    else:
        report.notes.append(f"warm runner unavailable: {unavailable}")
        report.notes.append("the run rows use LocalSandbox for the loop, as WARM_RUNNER=0 does")
    report.targets.append(
        Target(
            "verification / cold",
            ratio(median(samples["verify"]), cold_median),
            "<=",
            VERIFY_TARGET,
        )
    )
    report.targets.append(
        Target(
            "run with verification / without",
            ratio(median(samples["typical"]), loop_median),
            "<=",
            TYPICAL_TARGET,
        )
    )
    report.extra["warm_available"] = bool(samples["warm"])
    report.extra["warm_unavailable_reason"] = unavailable
    report.notes.append(
        "wall time per run as the caller sees it (write files, run, read report, clean up)"
    )
    report.notes.append(
        "verification: plant_canaries (new token), a new cold LocalSandbox, run, close, judge; "
        f"run: a new {loop_kind} sandbox, the red run at the base commit (3 failing tests), "
        f"{LOOP_ITERATIONS} green runs, close; with verification = run + verification of "
        "the same repetition"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("sandbox", __doc__.splitlines()[0], repeat=15)
    return run_main(measure, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
