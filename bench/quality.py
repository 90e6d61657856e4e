"""Solving small tasks with a real model: passes, turns, tokens, cost and time per task.

Each task in bench/tasks (a `task.md` and a `test_*.py`) is solved through the real command
line, `python -m bot.cli solve --task-file ... --tests ... --json`, against the model the
environment configures (Groq with GROQ_API_KEY; or MODEL_PROVIDER=openai with OPENAI_BASE_URL
and MODEL for an OpenAI-compatible server), in two modes:

- `one`: one model turn (`--max-iterations 1`), the baseline: a single answer, no feedback;
- `loop`: the full test-driven loop (the configured budget, or `--iterations N`).

Per task and mode: runs that passed, model turns, tokens, cost (the result's `cost_usd`,
"-" when the CLI does not report one) and wall time; medians over `--repeat` runs.

    GROQ_API_KEY=gsk_... uv run python -m bench.quality [--tasks GLOB] [--modes one,loop]
    MODEL_PROVIDER=openai OPENAI_BASE_URL=http://localhost:11434/v1 MODEL=qwen2.5-coder:7b \\
        uv run python -m bench.quality --modes one,loop
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Report, Target, median, parser, run_main
from bot.config import Settings, load_settings, process_environ
from bot.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODES = {
    "one": "one model turn (--max-iterations 1)",
    "loop": "the full loop",
}
DEFAULT_TIMEOUT = 1200.0  # the loop's own wall budget is 600 s of model and test time
EXIT_USAGE = 2
NO_MODEL = (
    "no model is configured. Set GROQ_API_KEY for Groq, the default provider (create a key "
    "at https://console.groq.com/keys), or MODEL_PROVIDER=openai with OPENAI_BASE_URL and "
    "MODEL for an OpenAI-compatible server, e.g. MODEL_PROVIDER=openai "
    "OPENAI_BASE_URL=http://localhost:11434/v1 MODEL=qwen2.5-coder:7b. See bench/README.md."
)


class BenchError(RuntimeError):
    """A run that cannot be measured (the CLI refused its arguments or configuration)."""


# -- the tasks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchTask:
    """One folder of bench/tasks: what a user writes, the tests, and the reference solution."""

    name: str
    dir: Path
    task_file: Path
    tests_file: Path
    reference: Path | None  # named as the module the tests import

    @property
    def target(self) -> str | None:
        return self.reference.name if self.reference else None


def load_task(folder: Path) -> BenchTask:
    tests = sorted(folder.glob("test_*.py"))
    if not (folder / "task.md").is_file() or len(tests) != 1:
        raise ValueError(f"{folder}: a task needs task.md and exactly one test_*.py")
    others = [p for p in sorted(folder.glob("*.py")) if not p.name.startswith("test_")]
    if len(others) > 1:
        raise ValueError(f"{folder}: more than one reference module: {[p.name for p in others]}")
    return BenchTask(
        name=folder.name,
        dir=folder,
        task_file=folder / "task.md",
        tests_file=tests[0],
        reference=others[0] if others else None,
    )


def discover(patterns: Sequence[str] = ("*",), root: Path = TASKS_DIR) -> list[BenchTask]:
    """The task folders under `root` whose names match any of the glob `patterns`, by name."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "task.md").exists())
    return [load_task(p) for p in folders if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]


# -- the model ------------------------------------------------------------------------------


def model_problem(environ: Mapping[str, str]) -> str | None:
    """Why no model can be called with `environ` (naming the settings), or None."""
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        return str(exc)
    if settings.model_provider == "openai":
        missing = [
            name
            for name, value in (
                ("OPENAI_BASE_URL", settings.openai_base_url),
                ("MODEL", settings.model),
            )
            if not value
        ]
        if missing:
            return (
                f"MODEL_PROVIDER=openai needs OPENAI_BASE_URL and MODEL (missing: "
                f"{', '.join(missing)}), e.g. OPENAI_BASE_URL=http://localhost:11434/v1 "
                "MODEL=qwen2.5-coder:7b for Ollama. See bench/README.md."
            )
        return None
    key = settings.groq_api_key.get_secret_value() if settings.groq_api_key else ""
    return None if key.strip() else NO_MODEL


def model_label(settings: Settings) -> str:
    name = settings.model or (settings.groq_model if settings.model_provider == "groq" else "?")
    where = settings.openai_base_url if settings.model_provider == "openai" else "groq"
    return f"{name} ({where})"


# -- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One `tdd-agent solve` run, as its JSON result reports it."""

    task: str
    mode: str
    repeat: int
    run_id: str
    exit_code: int | None  # None: killed at --timeout
    outcome: str  # the CLI's outcome, or "timeout" / "no_result"
    reason: str
    turns: int | None
    tokens: int | None
    cost_usd: float | None
    run_seconds: float | None  # the run's own time in model calls and tests
    seconds: float  # wall time of the whole command

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def has_result(self) -> bool:
        return self.outcome not in ("timeout", "no_result")


def solve_command(task: BenchTask, mode: str, run_id: str, iterations: int | None) -> list[str]:
    argv = [sys.executable, "-m", "bot.cli", "solve", "--task-file", str(task.task_file)]
    argv += ["--tests", str(task.tests_file), "--out", ".", "--json", "--run-id", run_id]
    if mode == "one":
        argv += ["--max-iterations", "1"]
    elif iterations is not None:
        argv += ["--max-iterations", str(iterations)]
    return argv


def run_once(
    task: BenchTask,
    mode: str,
    repeat: int,
    *,
    environ: Mapping[str, str],
    workdir: Path,
    iterations: int | None,
    timeout: float,
) -> RunResult:
    """Solve `task` once in `mode` in a fresh directory under `workdir` (the code lands there)."""
    run_dir = workdir / task.name / f"{mode}-{repeat + 1}"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"quality-{task.name}-{mode}-{repeat + 1}-{secrets.token_hex(3)}"
    start = time.monotonic()
    # Its own session, so a timeout ends the CLI and everything it started (the embedded
    # Redis daemonizes into a session of its own and stays, as it does for every CLI run).
    proc = subprocess.Popen(
        solve_command(task, mode, run_id, iterations),
        cwd=run_dir,
        env=dict(environ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        stdout, stderr = proc.communicate()
    seconds = time.monotonic() - start
    (run_dir / "stdout.json").write_text(stdout, encoding="utf-8")
    (run_dir / "stderr.txt").write_text(stderr, encoding="utf-8")
    code = proc.returncode
    if code == EXIT_USAGE and not timed_out:
        raise BenchError(
            f"tdd-agent refused the run ({task.name}, {mode}; exit 2):\n{_tail(stderr)}"
        )
    try:
        data = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return RunResult(
            task=task.name,
            mode=mode,
            repeat=repeat,
            run_id=run_id,
            exit_code=None if timed_out else code,
            outcome="timeout" if timed_out else "no_result",
            reason=f"killed after {timeout:.0f}s" if timed_out else _tail(stderr, 500),
            turns=None,
            tokens=None,
            cost_usd=None,
            run_seconds=None,
            seconds=seconds,
        )
    cost = data.get("cost_usd")
    return RunResult(
        task=task.name,
        mode=mode,
        repeat=repeat,
        run_id=run_id,
        exit_code=code,
        outcome=str(data.get("outcome", "no_result")),
        reason=str(data.get("reason") or ""),
        turns=len(data.get("iterations") or []),
        tokens=data.get("tokens"),
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        run_seconds=data.get("seconds"),
        seconds=seconds,
    )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the run's process group, SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(text: str, chars: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= chars else "…" + text[-chars:]


# -- the report -----------------------------------------------------------------------------


class QualityReport(Report):
    """The common report, with the per-mode totals under the rows and "-" for unknowns."""

    def print_table(self) -> None:
        shown = [*self.rows, *self.extra.get("totals", {}).values()]
        cells = [{k: "-" if v is None else v for k, v in row.items()} for row in shown]
        Report.print_table(dataclasses.replace(self, rows=cells))


def _median(values: Sequence[float | int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _sum(values: Sequence[float | int | None]) -> float | None:
    """The sum, or None when any part is unknown (a partial cost would read as the cost)."""
    return None if not values or any(v is None for v in values) else sum(v or 0 for v in values)


def _outcomes(results: Sequence[RunResult]) -> str:
    counts = Counter(r.outcome for r in results)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


def task_row(task: BenchTask, mode: str, results: Sequence[RunResult]) -> dict[str, Any]:
    return {
        "task": task.name,
        "target": task.target,
        "mode": mode,
        "passed": sum(r.passed for r in results),
        "runs": len(results),
        "turns": _median([r.turns for r in results]),
        "tokens": _median([r.tokens for r in results]),
        "cost_usd": _median([r.cost_usd for r in results]),
        "seconds": _median([r.seconds for r in results]),
        "outcome": _outcomes(results),
        "results": [dataclasses.asdict(r) for r in results],
    }


def total_row(mode: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    passed, runs = sum(r["passed"] for r in rows), sum(r["runs"] for r in rows)
    return {
        "task": f"all {len(rows)} tasks",
        "mode": mode,
        "passed": passed,
        "runs": runs,
        "turns": _sum([r["turns"] for r in rows]),
        "tokens": _sum([r["tokens"] for r in rows]),
        "cost_usd": _sum([r["cost_usd"] for r in rows]),
        "seconds": _sum([r["seconds"] for r in rows]),
        "outcome": f"{passed / runs:.0%} passed" if runs else "-",
    }


def measure(
    args: argparse.Namespace, environ: Mapping[str, str], tasks: Sequence[BenchTask]
) -> Report:
    settings = load_settings(environ)
    modes: list[str] = args.mode_list
    loop_iterations = args.iterations or settings.max_iterations
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], list[RunResult]] = {}
    total = args.repeat * len(tasks) * len(modes)
    done = 0
    try:
        for repeat in range(args.repeat):
            for task in tasks:
                for mode in modes:
                    result = run_once(
                        task,
                        mode,
                        repeat,
                        environ=environ,
                        workdir=workdir,
                        iterations=args.iterations,
                        timeout=args.timeout,
                    )
                    results.setdefault((task.name, mode), []).append(result)
                    done += 1
                    print(
                        f"[{done}/{total}] {task.name} {mode}: {result.outcome} · "
                        f"{result.turns if result.turns is not None else '-'} turns · "
                        f"{result.tokens if result.tokens is not None else '-'} tokens · "
                        f"{result.seconds:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    report = QualityReport(
        benchmark="quality",
        baseline=MODES["one"],
        repeat=args.repeat,
        columns=[
            "task",
            "mode",
            "passed",
            "runs",
            "turns",
            "tokens",
            "cost_usd",
            "seconds",
            "outcome",
        ],
    )
    for task in tasks:
        for mode in modes:
            report.rows.append(task_row(task, mode, results[(task.name, mode)]))
    totals = {m: total_row(m, [r for r in report.rows if r["mode"] == m]) for m in modes}
    every = [r for rs in results.values() for r in rs]
    if "one" in modes and "loop" in modes:
        # Informational: the loop sees test output the single turn never does.
        report.targets.append(
            Target(
                "full-loop passes minus one-turn passes",
                totals["loop"]["passed"] - totals["one"]["passed"],
                ">=",
                0,
                unit="",
            )
        )
    report.targets.append(
        Target(
            "runs without a result (timeout, crash)",
            sum(not r.has_result for r in every),
            "<=",
            0,
            unit="",
        )
    )
    budget = f"; loop budget {loop_iterations} turns" if "loop" in modes else ""
    report.notes += [
        f"model {model_label(settings)}{budget}; timeout {args.timeout:.0f}s per run",
        "per task: medians over --repeat runs; 'all' rows: sums of those medians; "
        "passed and runs count runs",
        "seconds: wall time of the command (start-up, red run, turns, verification); "
        "cost_usd: the result's cost_usd, '-' when the CLI does not report it",
    ]
    errors = Counter(r.reason for r in every if r.outcome in ("error", "no_result"))
    report.notes += [f"{n} run(s) ended with: {reason}" for reason, n in errors.most_common(3)]
    if args.keep:
        report.notes.append(f"outputs kept in {workdir}")
    report.extra.update(
        {
            "model": model_label(settings),
            "provider": settings.model_provider,
            "modes": {m: MODES[m] for m in modes},
            "loop_iterations": loop_iterations,
            "timeout": args.timeout,
            "tasks": [t.name for t in tasks],
            "totals": totals,
        }
    )
    return report


# -- the command ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = parser("quality", __doc__.splitlines()[0], repeat=1)
    p.add_argument(
        "--tasks",
        default="*",
        metavar="GLOB",
        help="task folders to run, by name (comma-separated globs, e.g. 'roman*,lru*')",
    )
    p.add_argument(
        "--modes",
        default="one,loop",
        help="comma-separated: one (a single model turn), loop (the full loop)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="model turns in loop mode (unset: MAX_ITERATIONS, else 8)",
    )
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds one run may take"
    )
    p.add_argument("--keep", metavar="DIR", help="keep each run's code and output under DIR")
    return p


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the benchmark; `environ` is the whole environment the runs get (the edge passes
    the process's, with .env)."""
    args = build_parser().parse_args(argv)
    env = dict(process_environ() if environ is None else environ)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown or len(set(modes)) != len(modes):
        print(
            f"bench.quality: --modes takes one,loop or one of them, not {args.modes!r}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args.mode_list = modes
    if args.iterations is not None and args.iterations < 1:
        print("bench.quality: --iterations must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    problem = model_problem(env)
    if problem:
        print(f"bench.quality: {problem}", file=sys.stderr)
        return EXIT_USAGE
    patterns = [p.strip() for p in args.tasks.split(",") if p.strip()] or ["*"]
    try:
        tasks = discover(patterns)
    except ValueError as exc:
        print(f"bench.quality: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not tasks:
        names = ", ".join(t.name for t in discover())
        print(f"bench.quality: no task matches {args.tasks!r}; tasks: {names}", file=sys.stderr)
        return EXIT_USAGE
    return run_main(lambda a: measure(a, env, tasks), args)


if __name__ == "__main__":
    sys.exit(main(environ=process_environ()))
