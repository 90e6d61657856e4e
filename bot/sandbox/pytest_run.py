"""What every backend shares about running pytest: the command line and reading its report."""

from __future__ import annotations

import json
from pathlib import Path

from bot.sandbox.base import TestResult

PLUGIN_MODULE = "tdd_report_plugin"
PLUGIN_SOURCE = Path(__file__).with_name(f"{PLUGIN_MODULE}.py").read_text(encoding="utf-8")
REPORT_ENV = "TDD_REPORT_PATH"
DEFAULT_OUTPUT_CAP = 64 * 1024


def pytest_args(python: str = "python3") -> list[str]:
    """The pytest invocation: short tracebacks, no cache dir, our report plugin."""
    return [
        python,
        "-B",  # no bytecode: a same-size rewrite within a second can import a stale .pyc
        "-m",
        "pytest",
        "-q",
        "--tb=short",
        "-p",
        "no:cacheprovider",
        "-p",
        PLUGIN_MODULE,
        "--color=no",
        # Tests in a subfolder import the candidate module from the workspace root.
        "-o",
        "pythonpath=.",
    ]


def clip_output(text: str, cap: int = DEFAULT_OUTPUT_CAP) -> tuple[str, bool]:
    """Keep the head and the tail of `text` within `cap` characters."""
    if len(text) <= cap:
        return text, False
    half = cap // 2
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n... [{dropped} characters clipped] ...\n{text[-half:]}", True


def result_from_report(
    *,
    exit_code: int,
    report_json: str | None,
    output: str,
    duration: float,
    timed_out: bool = False,
    output_cap: int = DEFAULT_OUTPUT_CAP,
) -> TestResult:
    """Build a TestResult from pytest's exit code and the plugin's JSON report.

    A missing or unreadable report (pytest killed, interpreter crashed) counts as an error
    run, so it can never look green.
    """
    clipped, truncated = clip_output(output, output_cap)
    report = None
    if report_json:
        try:
            report = json.loads(report_json)
        except json.JSONDecodeError:
            report = None
    if not isinstance(report, dict):
        return TestResult(
            exit_code=exit_code if exit_code != 0 else 1,
            errors=1,
            failing=("<pytest did not finish>",),
            output=clipped,
            duration=duration,
            timed_out=timed_out,
            output_truncated=truncated,
        )
    return TestResult(
        exit_code=exit_code,
        passed=int(report.get("passed", 0)),
        failed=int(report.get("failed", 0)),
        errors=int(report.get("errors", 0)),
        skipped=int(report.get("skipped", 0)),
        failing=tuple(str(x) for x in report.get("failing", [])),
        output=clipped,
        duration=duration,
        timed_out=timed_out,
        output_truncated=truncated,
    )
