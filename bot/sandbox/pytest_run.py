"""What every backend shares about running pytest: the command line, its configuration file,
and reading the report.

The command line is built here and nowhere else (cold, warm and E2B runs use it as is):

    python -B -P -s -m pytest -q --tb=short -p no:cacheprovider -p tdd_report_plugin
        --color=no -c <our config file> --rootdir <workspace> --confcutdir <workspace>

* `-P`: the working directory (the workspace) is not put on sys.path at start-up, so a
  workspace `pytest.py`, `_pytest/` or `tdd_report_plugin.py` cannot stand in for the real
  ones. `-s` (the interpreter's, before `-m`) leaves out the user site directory, which code
  of an earlier run could have written to where HOME persists (E2B).
* `-c`: pytest reads only the configuration file we wrote, outside the workspace; it then
  looks for no pytest.ini, tox.ini, setup.cfg or pyproject.toml anywhere, so none the
  candidate writes can add options (`addopts = -k ...`) or plugins.
* `--rootdir`/`--confcutdir`: node ids stay relative to the workspace, and no conftest.py
  above it (say in a shared /tmp) is loaded.
* The workspace root goes on sys.path (so tests in a subfolder import the module at the
  root) from the report plugin, once it is loaded: pytest inserts `pythonpath` entries
  *before* it imports `-p` plugins, so `-o pythonpath=.` would let a workspace file of the
  plugin's name shadow it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.sandbox.base import OUTCOMES, TestResult
from bot.text import clip

PLUGIN_MODULE = "tdd_report_plugin"
PLUGIN_SOURCE = Path(__file__).with_name(f"{PLUGIN_MODULE}.py").read_text(encoding="utf-8")
REPORT_ENV = "TDD_REPORT_PATH"
DEFAULT_OUTPUT_CAP = 64 * 1024

# Interpreter flags (before `-m`): no bytecode (a same-size rewrite within a second can
# import a stale .pyc), no unsafe sys.path[0], no user site directory.
INTERPRETER_FLAGS = ("-B", "-P", "-s")
BASE_OPTIONS = (
    "-q",
    "--tb=short",
    "-p",
    "no:cacheprovider",
    "-p",
    PLUGIN_MODULE,
    "--color=no",
)
# The file names pytest accepts for `-c`; the name decides the section it reads.
CONFIG_NAMES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


@dataclass(frozen=True)
class PytestConfig:
    """The configuration file a run uses (ours, never one from the workspace).

    `filename` says how pytest reads `text`: `[pytest]` in pytest.ini or tox.ini,
    `[tool:pytest]` in setup.cfg, `[tool.pytest.ini_options]` in pyproject.toml. Relative
    `pythonpath` entries are taken relative to the workspace root, as if the file lay there;
    `testpaths` too (pytest resolves them from the working directory). Options in `addopts`
    must be known to the pytest installed in the sandbox.
    """

    text: str = "[pytest]\n"
    filename: str = "pytest.ini"

    def __post_init__(self) -> None:
        if self.filename not in CONFIG_NAMES:
            raise ValueError(
                f"pytest config file name {self.filename!r} must be one of {CONFIG_NAMES}"
            )


DEFAULT_CONFIG = PytestConfig()


def as_config(
    config: PytestConfig | str | None, default: PytestConfig | None = None
) -> PytestConfig:
    """A config from what a caller passed: a PytestConfig, pytest.ini text, or None."""
    if config is None:
        return default or DEFAULT_CONFIG
    if isinstance(config, str):
        return PytestConfig(config)
    return config


def pytest_options(*, config_file: str | None = None, rootdir: str | None = None) -> list[str]:
    """What follows `python -m pytest`. Every real run passes both `config_file` and
    `rootdir`; without them pytest would look for configuration in the working directory."""
    options = list(BASE_OPTIONS)
    if config_file is not None:
        options += ["-c", config_file]
    if rootdir is not None:
        options += ["--rootdir", rootdir, "--confcutdir", rootdir]
    return options


def pytest_args(
    python: str = "python3", *, config_file: str | None = None, rootdir: str | None = None
) -> list[str]:
    """The whole pytest invocation (see the module docstring)."""
    return [
        python,
        *INTERPRETER_FLAGS,
        "-m",
        "pytest",
        *pytest_options(config_file=config_file, rootdir=rootdir),
    ]


def command_line(argv: Sequence[str]) -> str:
    """`argv` as one shell-quoted line, the form TestResult.command records."""
    return shlex.join(argv)


def clip_output(text: str, cap: int = DEFAULT_OUTPUT_CAP) -> tuple[str, bool]:
    """Keep the head and the tail of `text` within `cap` characters."""
    if len(text) <= cap:
        return text, False
    return clip(text, cap, head_share=0.5), True


def _outcomes(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str) and v in OUTCOMES}


def _collected(raw: Any) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def _versions(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def result_from_report(
    *,
    exit_code: int,
    report_json: str | None,
    output: str,
    duration: float,
    timed_out: bool = False,
    output_cap: int = DEFAULT_OUTPUT_CAP,
    command: str = "",
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
            command=command,
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
        outcomes=_outcomes(report.get("outcomes")),
        collected=_collected(report.get("collected")),
        versions=_versions(report.get("versions")),
        command=command,
    )
