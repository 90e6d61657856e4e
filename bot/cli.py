"""`tdd-agent`: solve a task test-first from the command line, and inspect past runs.

Exit status: 0 the tests pass; 1 the run ended without passing tests; 2 usage or
configuration error (the message says the fix).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir
from rich.console import Console
from rich.table import Table

from bot import wiring
from bot.agent.context import Task
from bot.agent.loop import Outcome, OutcomeKind
from bot.config import Settings, load_settings, process_environ
from bot.errors import (
    ConfigError,
    IssueError,
    JournalError,
    LeaseLost,
    ModelError,
    NoTarget,
    SandboxUnavailable,
    TddAgentError,
    UsageError,
)
from bot.issue import IssueSpec, build_task
from bot.journal import list_runs, load_run
from bot.keys import run_key
from bot.paths import is_relative_path
from bot.pricing import cost_words, usd
from bot.progress import TerminalReporter
from bot.redis_server import check_url, embedded_status, stop_embedded_redis
from bot.run import RunRequest
from bot.text import tail_lines

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  tdd-agent solve --task "Write fizzbuzz(n)" --tests tests/test_fizzbuzz.py
  tdd-agent solve --task-file task.md --tests test_roman.py --target roman.py --out ./result
  tdd-agent solve --input '{"task": "...", "tests": "def test_x(): ..."}'
  tdd-agent solve ... --run-id my-run     resume my-run from its journal
  tdd-agent runs                          recent runs
  tdd-agent runs show my-run              every step of a run
  tdd-agent redis status                  is the embedded Redis running, and where
  tdd-agent redis stop                    stop the embedded Redis (it outlives each command)

configuration comes from the environment (or .env): GROQ_API_KEY (required for Groq,
the default provider), MODEL, GROQ_BASE_URL; or MODEL_PROVIDER=openai with OPENAI_BASE_URL
and MODEL for an OpenAI-compatible server; REDIS_URL (else an embedded Redis in the data
directory), MAX_ITERATIONS, MAX_TOTAL_TOKENS, MAX_WALL_SECONDS, SANDBOX, E2B_API_KEY.
See README.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdd-agent",
        description="Write code test-first with a model until the given pytest tests pass.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('tdd-agent')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    solve = sub.add_parser(
        "solve",
        help="solve a task: iterate model → code → pytest until green",
        description="Iterate model → code → pytest until the tests pass or the budget runs out.",
        epilog="exit status: 0 tests pass (code written to --out), or they already passed "
        "before any change (nothing_to_do); 1 no passing code (the best candidate is written); "
        "2 usage or configuration error",
    )
    src = solve.add_argument_group("what to solve")
    src.add_argument("--task", metavar="TEXT", help="the task, as text")
    src.add_argument("--task-file", type=Path, metavar="PATH", help="read the task from this file")
    src.add_argument(
        "--tests",
        type=Path,
        metavar="PATH",
        action="append",
        default=[],
        help="a pytest file the code must pass (repeatable); it stays read-only",
    )
    src.add_argument(
        "--input",
        metavar="JSON",
        help='JSON: {"task": "...", "tests": "<pytest source>" or {"path": "source"}, '
        '"target": "mod.py"}',
    )
    src.add_argument(
        "--target",
        metavar="PATH",
        help="module to write (default: inferred from the tests' imports)",
    )
    out = solve.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where to write the code (default: .)",
    )
    out.add_argument("--json", action="store_true", help="print one JSON result object on stdout")
    run = solve.add_argument_group("run")
    run.add_argument(
        "--run-id", metavar="ID", help="name the run; an existing run resumes from its journal"
    )
    run.add_argument(
        "--model",
        metavar="NAME",
        help="model name (default: MODEL, else GROQ_MODEL or openai/gpt-oss-120b for Groq)",
    )
    run.add_argument(
        "--max-iterations", type=int, metavar="N", help="model turns at most (default 8)"
    )
    run.add_argument(
        "--max-tokens", type=int, metavar="N", help="total tokens at most (default 200000)"
    )
    run.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="time in model and tests at most (default 600)",
    )
    run.add_argument("--sandbox", choices=["auto", "local", "e2b"], help="sandbox backend")

    runs = sub.add_parser("runs", help="list recent runs, or `runs show RUN_ID`")
    runs.add_argument("action", nargs="?", choices=["show"], help="show one run's steps")
    runs.add_argument("run_id", nargs="?", help="the run to show")
    runs.add_argument("--limit", type=int, default=20, help="how many runs to list")
    runs.add_argument("--json", action="store_true", help="print JSON")

    red = sub.add_parser(
        "redis",
        help="the embedded Redis: `redis status` or `redis stop`",
        description="Without REDIS_URL the CLI keeps its journal in an embedded Redis in the "
        "data directory (DATA_DIR); it keeps running after each command so the next one finds "
        "the journal.",
        epilog="exit status: status: 0 running, 1 not running; stop: 0 (also when not running)",
    )
    red.add_argument("action", choices=["status", "stop"], help="report on it, or shut it down")
    return parser


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


# -- solve --------------------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); it must be UTF-8 text: save it as UTF-8"
        ) from exc


def task_from_args(args: argparse.Namespace) -> tuple[Task, str | None]:
    """The task from the solve arguments, and a note when the target was inferred."""
    if args.task is not None and args.task_file is not None:
        raise UsageError("give one of --task TEXT or --task-file PATH, not both")
    text: str | None = args.task
    tests: dict[str, str] = {}
    target: str | None = args.target
    if args.input:
        try:
            data = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            raise UsageError('--input needs a JSON object with a "task" string and "tests"')
        text = data["task"]
        raw_tests = data.get("tests")
        if isinstance(raw_tests, str):
            tests["test_task.py"] = raw_tests
        elif isinstance(raw_tests, dict) and all(isinstance(v, str) for v in raw_tests.values()):
            tests.update(raw_tests)
        else:
            raise UsageError('--input "tests" must be pytest source or {"path": "source"}')
        target = target or data.get("target")
    if args.task_file:
        text = _read(args.task_file, "task file")
    for path in args.tests:
        tests[path.name] = _read(path, "tests file")
    if not text or not text.strip():
        raise UsageError("give the task with --task, --task-file or --input")
    if not tests:
        raise UsageError("give at least one pytest file with --tests (or tests in --input)")
    if target and not is_relative_path(target):
        raise UsageError(f"--target must be a relative path, not {target}")
    # The same rules as an issue's: an empty repository, the tests and an optional target.
    spec = IssueSpec(title="", text=text, inline_tests=tests, target=target or None)
    try:
        built = build_task(spec, {}, installed=wiring.installed_modules())
    except NoTarget as exc:
        raise UsageError(
            "cannot tell which module to write from the tests' imports; pass --target mod.py"
            + (f" ({exc})" if "several" in str(exc) else "")
        ) from exc
    except IssueError as exc:
        raise UsageError(str(exc)) from exc
    task = Task(text=text, tests=built.tests, target=built.target)
    note = None
    if not target:
        note = f"target {task.target} (inferred from the tests' imports; --target overrides)"
    return task, note


def check_solve_args(args: argparse.Namespace) -> None:
    """The argument mistakes that would otherwise surface only after a paid run."""
    for flag, value, default in [
        ("--max-iterations", args.max_iterations, "8"),
        ("--max-tokens", args.max_tokens, "200000"),
        ("--max-seconds", args.max_seconds, "600"),
    ]:
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be more than 0, not {value:g} (default {default})")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(
            f"--out {args.out} is a file; give a directory (it is created when missing)"
        )


def check_redis_url(settings: Settings) -> None:
    """A malformed REDIS_URL is a usage error before any model call or Redis start."""
    if settings.redis_url:
        check_url(settings.redis_url)


def data_dir(settings: Settings) -> Path:
    """Where the embedded Redis keeps its files (the same rule as wiring.redis_client)."""
    return settings.data_dir or Path(user_data_dir("tdd-agent"))


def _settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    overrides: dict[str, Any] = {}
    for arg, field in [
        ("model", "model"),
        ("max_iterations", "max_iterations"),
        ("max_tokens", "max_total_tokens"),
        ("max_seconds", "max_wall_seconds"),
        ("sandbox", "sandbox"),
    ]:
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    return load_settings(environ, **overrides)


def write_files(out: Path, files: dict[str, str]) -> list[Path]:
    written = []
    for rel, text in sorted(files.items()):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
        written.append(dest)
    return written


def outcome_json(run_id: str, outcome: Outcome, written: list[Path]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "outcome": outcome.kind.value,
        "reason": outcome.reason,
        "iterations": [it.to_dict() for it in outcome.iterations],
        "tokens": outcome.tokens,
        "cost_usd": round(outcome.cost, 8),
        "seconds": round(outcome.elapsed, 3),
        "files": [str(p) for p in written],
        "tests": outcome.result.to_dict() if outcome.result else None,
    }


def cmd_solve(args: argparse.Namespace, environ: dict[str, str], err: Console) -> int:
    check_solve_args(args)
    task, note = task_from_args(args)
    settings = _settings(args, environ)
    check_redis_url(settings)
    model = wiring.model_name(settings)
    model_client = wiring.model_client(settings)  # a missing key fails before Redis starts
    reporter = TerminalReporter(err, quiet=False)
    if note:
        reporter.info(note)
    run_id = args.run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    executor = wiring.executor(
        settings, wiring.redis_client(settings, embedded=True), model=model_client
    )
    reporter.info(
        f"run {run_id}: model {model} ({settings.model_provider}), "
        f"sandbox {wiring.sandbox_backend(settings)}, "
        f"budget {plural(settings.max_iterations, 'iteration')} / "
        f"{settings.max_total_tokens:,} tokens / "
        f"{settings.max_wall_seconds:.0f}s"
        + (f" / {usd(settings.max_cost_usd)}" if settings.max_cost_usd is not None else "")
    )
    waited = {"said": False}

    def on_wait(remaining: float) -> None:
        if not waited["said"]:
            waited["said"] = True
            reporter.info(
                f"run {run_id} is held by another process (or one that died); waiting for its "
                f"lease to lapse (≤ {remaining:.1f}s)…"
            )

    try:
        outcome = executor.run(
            RunRequest(run_id=run_id, task=task),
            reporter=reporter,
            on_wait=on_wait,
            on_resume=lambda n: reporter.info(f"resuming {run_id}: {n} recorded steps replay"),
        )
    except KeyboardInterrupt:
        reporter.close()
        reporter.info(f"interrupted: resume with --run-id {run_id}")
        raise
    except ModelError as exc:
        reporter.close()
        reporter.info(f"the model failed: {exc}; resume with --run-id {run_id}")
        return EXIT_FAILED
    finally:
        reporter.close()
    written = write_files(args.out, outcome.files) if outcome.files else []
    if args.json:
        print(json.dumps(outcome_json(run_id, outcome, written), indent=2))
    where = ", ".join(str(p) for p in written) or "nothing"
    if outcome.passed:
        reporter.info(
            f"[passed] {plural(len(outcome.iterations), 'iteration')}, "
            f"{outcome.tokens:,} tokens, "
            f"{cost_words(outcome.cost, outcome.tokens)}, {outcome.elapsed:.1f}s. Wrote {where}."
        )
        return EXIT_OK
    if outcome.kind is OutcomeKind.NOTHING_TO_DO:
        reporter.info(f"[nothing_to_do] {outcome.reason}: no model call was made.")
        return EXIT_OK
    reporter.info(f"[{outcome.kind.value}] {outcome.reason}")
    if outcome.last_result is not None:
        reporter.info("last test output:\n" + tail_lines(outcome.last_result.output, 4000))
    if written and outcome.result is not None:
        reporter.info(f"best candidate ({outcome.result.summary()}) written to {where}")
    reporter.info(f"resume or inspect: tdd-agent runs show {run_id}")
    return EXIT_FAILED


# -- runs ---------------------------------------------------------------------------------


def run_status(client: Any, run_id: str, status: object) -> str:
    """A run's status; "running" without a live lease is a run whose process died."""
    if status == "running" and not client.exists(run_key(run_id, "lease")):
        return "interrupted"
    return str(status if status is not None else "?")


# Columns of `tdd-agent runs` that give way, in this order, when the terminal is narrow.
OPTIONAL_COLUMNS = ("task", "started", "cost", "duration", "tokens", "iterations")


def runs_table(runs: list[dict[str, Any]], width: int) -> Table:
    """The runs listing for a terminal `width` wide: the run id is never cut (it is what
    users copy); other columns are dropped, the task first, until the rest fits."""
    rows = []
    for run in runs:
        rows.append(
            {
                "run": run["run_id"],
                "status": str(run.get("status", "?")),
                "iterations": str(run.get("iterations", "-")),
                "tokens": f"{run['tokens']:,}" if run.get("tokens") is not None else "-",
                "cost": usd(float(run["cost_usd"])) if run.get("cost_usd") is not None else "-",
                "duration": f"{run['duration']:.1f}s" if run.get("duration") is not None else "-",
                "started": time.strftime("%m-%d %H:%M", time.localtime(run["created_at"])),
                "task": str(run.get("title", ""))[:50],
            }
        )
    names = ["run", "status", "iterations", "tokens", "cost", "duration", "started", "task"]

    def needed(name: str) -> int:
        # The task folds, so a few columns of it are enough; the others are kept whole.
        longest = max(len(name), *(len(row[name]) for row in rows))
        return min(longest, 12) if name == "task" else longest

    def total(cols: list[str]) -> int:
        return sum(needed(n) for n in cols) + 3 * len(cols) + 1  # padding and borders

    for name in OPTIONAL_COLUMNS:
        if total(names) <= width:
            break
        names.remove(name)
    # Still too wide for the id and its status: drop the borders rather than cut the id.
    table = Table() if total(names) <= width else Table(box=None, pad_edge=False)
    for name in names:
        if name == "task":
            table.add_column(name, overflow="fold", ratio=1, min_width=4)
        else:
            table.add_column(name, no_wrap=True, min_width=needed(name))
    for row in rows:
        table.add_row(*(row[n] for n in names))
    return table


def cmd_runs(args: argparse.Namespace, environ: dict[str, str], out: Console) -> int:
    settings = load_settings(environ)
    check_redis_url(settings)
    client = wiring.redis_client(settings, embedded=True)
    if args.action == "show":
        if not args.run_id:
            raise UsageError("usage: tdd-agent runs show RUN_ID")
        return show_run(client, args.run_id, out, as_json=args.json)
    runs = [
        {**run, "status": run_status(client, run["run_id"], run.get("status"))}
        for run in list_runs(client, limit=args.limit)
    ]
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return EXIT_OK
    if not runs:
        out.print("no runs yet: start one with `tdd-agent solve --help`")
        return EXIT_OK
    out.print(runs_table(runs, out.width))
    return EXIT_OK


def cmd_redis(args: argparse.Namespace, environ: dict[str, str], out: Console) -> int:
    settings = load_settings(environ)
    where = data_dir(settings)
    note = (
        "\n(REDIS_URL is set: the CLI uses that Redis, not this embedded one)"
        if settings.redis_url
        else ""
    )
    if args.action == "stop":
        if stop_embedded_redis(where):
            out.print(f"stopped the embedded Redis in {where}{note}", highlight=False)
        else:
            out.print(f"the embedded Redis in {where} is not running{note}", highlight=False)
        return EXIT_OK
    status = embedded_status(where)
    aof = f"{status.aof_bytes:,} bytes" if status.aof_bytes is not None else "none yet"
    out.print(
        f"embedded Redis: {'running' if status.running else 'not running'}\n"
        f"socket: {status.socket}\n"
        f"data dir: {status.data_dir}\n"
        f"pid: {status.pid if status.running and status.pid is not None else '-'}\n"
        f"append-only file: {aof}" + note,
        highlight=False,
        markup=False,
    )
    return EXIT_OK if status.running else EXIT_FAILED


def show_run(client: Any, run_id: str, out: Console, *, as_json: bool) -> int:
    loaded = load_run(client, run_id)
    if loaded is None:
        raise UsageError(f"no run {run_id!r}; `tdd-agent runs` lists the recent ones")
    meta, steps = loaded
    if as_json:
        data = {"run_id": run_id, **meta, "steps": [s.__dict__ for s in steps]}
        print(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    status = run_status(client, run_id, meta.get("status"))
    out.print(
        f"run {run_id}: {status} — {meta.get('reason', '')}\n"
        f"task: {meta.get('title', '')} → {meta.get('target', '')}"
        + (f"\ncost: {usd(float(meta['cost_usd']))}" if meta.get("cost_usd") is not None else ""),
        highlight=False,
    )
    table = Table()
    for name in ("#", "kind", "status", "try", "seconds", "tokens"):
        table.add_column(name, no_wrap=True, min_width=len(name))
    table.add_column("what", no_wrap=True, overflow="ellipsis", ratio=1)
    for step in steps:
        if step.kind == "model":
            what = str(step.meta.get("summary", ""))
            tokens = f"{step.meta.get('tokens', 0):,}"
        else:
            out_data = step.output or {}
            what = str(step.meta.get("summary", ""))
            failing = out_data.get("failing") or []
            if failing:
                what += f" · first failing: {failing[0]}"
            tokens = ""
        table.add_row(
            str(step.seq),
            step.kind,
            step.status,
            str(step.attempt),
            f"{step.duration:.2f}",
            tokens,
            what,
        )
    out.print(table)
    if meta.get("log"):
        turns = Table(title="iterations", title_justify="left")
        for name in ("#", "action"):
            turns.add_column(name, no_wrap=True)
        turns.add_column("result", overflow="fold", ratio=1)
        for entry in meta["log"]:
            note = str(entry.get("note", ""))
            # A refused edit says why; an applied one says what the tests did.
            result = note if note.startswith("refused") else entry.get("tests") or note
            turns.add_row(str(entry.get("n", "")), str(entry.get("action", "")), str(result))
        out.print(turns)
    last = next((s for s in reversed(steps) if s.kind == "sandbox" and s.output), None)
    if last is not None:
        out.print("last test output:", highlight=False)
        out.print(
            tail_lines(str(last.output.get("output", "")), 3000), highlight=False, markup=False
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point; `environ` lets tests pass settings without touching os.environ."""
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    env = process_environ() if environ is None else environ
    # Piped output gets a wide page rather than rich's 80 columns, so tables stay readable;
    # COLUMNS, when set, wins either way.
    width = None if sys.stdout.isatty() else 160
    if env.get("COLUMNS", "").isdigit() and int(env["COLUMNS"]) > 0:
        width = int(env["COLUMNS"])
    out = Console(soft_wrap=True, width=width)
    try:
        if args.command == "solve":
            return cmd_solve(args, env, err)
        if args.command == "runs":
            return cmd_runs(args, env, out)
        if args.command == "redis":
            return cmd_redis(args, env, out)
        parser.print_help()
        return EXIT_USAGE
    except (UsageError, ConfigError, SandboxUnavailable) as exc:
        err.print(f"tdd-agent: {exc}", highlight=False, markup=False)
        return EXIT_USAGE
    except LeaseLost as exc:
        err.print(f"tdd-agent: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
    except JournalError as exc:
        err.print(f"tdd-agent: {exc}", highlight=False, markup=False)
        return EXIT_USAGE
    except TddAgentError as exc:
        err.print(f"tdd-agent: error: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
