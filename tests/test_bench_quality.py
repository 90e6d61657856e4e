"""The quality benchmark's tasks are sound, and the benchmark runs (on the fake Groq).

Soundness, per task: its tests fail without the reference solution and pass with it (plain
pytest in a temp dir), the CLI would infer the reference's file name as the target from the
tests' imports, and the agent may write a module of that name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import quality
from bot.agent.targets import infer_target
from bot.policy import write_refusal
from bot.wiring import installed_modules
from tests.fakes import groq as g

TASKS = quality.discover()


def run_pytest(where: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # No plugins: the tasks' tests need only pytest and the standard library.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_there_are_twelve_to_sixteen_tasks_with_references() -> None:
    assert 12 <= len(TASKS) <= 16
    assert all(t.reference is not None for t in TASKS)
    assert len({t.target for t in TASKS}) == len(TASKS)


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_task_is_sound(task: quality.BenchTask, tmp_path: Path) -> None:
    assert task.reference is not None
    tests = {task.tests_file.name: task.tests_file.read_text(encoding="utf-8")}
    assert task.task_file.read_text(encoding="utf-8").strip()
    assert infer_target(tests) == task.reference.name
    refusal = write_refusal(
        task.reference.name, tests=frozenset(tests), shadowed=installed_modules()
    )
    assert refusal is None

    shutil.copy(task.tests_file, tmp_path)
    red = run_pytest(tmp_path)
    assert red.returncode != 0, red.stdout

    shutil.copy(task.reference, tmp_path / task.reference.name)
    green = run_pytest(tmp_path)
    assert green.returncode == 0, green.stdout + green.stderr
    passed = re.search(r"(\d+) passed", green.stdout)
    assert passed and 4 <= int(passed.group(1)) <= 10, green.stdout


def test_refuses_to_run_without_a_model(capsys) -> None:
    assert quality.main(["--tasks", "rpn_calc"], environ={}) == 2
    err = capsys.readouterr().err
    assert "GROQ_API_KEY" in err and "MODEL_PROVIDER" in err


def test_openai_provider_needs_its_settings(capsys) -> None:
    assert quality.main([], environ={"MODEL_PROVIDER": "openai", "MODEL": "m"}) == 2
    err = capsys.readouterr().err
    assert "OPENAI_BASE_URL" in err and "missing: OPENAI_BASE_URL" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "one,twice"], "--modes"),
        (["--tasks", "no-such-task"], "no task matches"),
        (["--iterations", "0"], "--iterations"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys) -> None:
    assert quality.main(argv, environ={"GROQ_API_KEY": "gsk_test"}) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_scripted_run_through_the_cli(tmp_path: Path, redis_url: str) -> None:
    task = next(t for t in TASKS if t.name == "rpn_calc")
    assert task.reference is not None
    good = task.reference.read_text(encoding="utf-8")
    bad = "def evaluate(expression):\n    return 0\n"

    def write(content: str) -> g.Reply:
        return g.tool_call("write_file", {"path": "rpn.py", "content": content})

    out = tmp_path / "report.json"
    # One turn: a wrong answer. The loop: the same wrong answer, then the reference.
    with g.FakeGroq([write(bad), write(bad), write(good)]) as fake:
        environ = {
            "GROQ_API_KEY": "gsk_test",
            "GROQ_BASE_URL": fake.url,
            "REDIS_URL": redis_url,
            "PATH": os.environ.get("PATH", os.defpath),
        }
        argv = ["--tasks", "rpn_calc", "--modes", "one,loop", "--iterations", "3"]
        argv += ["--keep", str(tmp_path / "runs"), "--json", str(out)]
        assert quality.main(argv, environ=environ) == 0
        assert len(fake.requests) == 3 and fake.exhausted == 0

    report = json.loads(out.read_text())
    assert report["benchmark"] == "quality"
    assert report["totals"]["loop"]["passed"] == 1
    assert report["totals"]["one"]["passed"] == 0
    one, loop = report["rows"]
    assert (one["mode"], one["outcome"], one["turns"]) == ("one", "budget_exhausted", 1)
    assert (loop["mode"], loop["outcome"], loop["turns"]) == ("loop", "passed", 2)
    assert loop["tokens"] > 0 and loop["target"] == "rpn.py"
    assert "cost_usd" in loop
    assert all(t["met"] for t in report["targets"]) and report["all_met"] is True
    assert (tmp_path / "runs" / "rpn_calc" / "loop-1" / "rpn.py").read_text() == good
