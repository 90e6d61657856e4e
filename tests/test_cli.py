"""`tdd-agent` in-process: arguments, exit codes, output, and the embedded Redis."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from bot.journal import RunJournal, load_run
from tests.fakes import groq as g

TESTS = (
    "from calc import add\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n\n"
    "def test_zero():\n    assert add(0, 0) == 0\n"
)
GOOD = "def add(a, b):\n    return a + b\n"
BAD = "def add(a, b):\n    return a * b\n"


@pytest.fixture
def fake() -> Iterator[g.FakeGroq]:
    with g.FakeGroq() as server:
        yield server


def env(fake: g.FakeGroq, redis_url: str | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    values = {
        "GROQ_API_KEY": "gsk_test",
        "GROQ_BASE_URL": fake.url,
        "DATA_DIR": str(tmp_path / "data"),
    }
    if redis_url:
        values["REDIS_URL"] = redis_url
    values.update(extra)
    return values


def write(content: str) -> g.Reply:
    return g.tool_call("write_file", {"path": "calc.py", "content": content})


def test_missing_api_key_says_where_to_get_one(tmp_path, capsys) -> None:
    (tmp_path / "test_calc.py").write_text(TESTS)
    code = main(["solve", "--task", "add", "--tests", str(tmp_path / "test_calc.py")], environ={})
    assert code == 2
    err = capsys.readouterr().err
    assert "GROQ_API_KEY is not set" in err and "console.groq.com/keys" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["solve", "--tests", "missing.py", "--task", "x"], "cannot read tests file"),
        (["solve", "--input", "{not json"], "--input is not valid JSON"),
        (["solve", "--input", '{"task": "x", "tests": 3}'], '"tests" must be pytest source'),
        (["solve", "--input", '{"task": "x", "tests": "def test_a(): pass"}'], "pass --target"),
        (["solve", "--task", "x"], "at least one pytest file"),
    ],
)
def test_usage_errors_exit_2_with_the_fix(argv, message, capsys, tmp_path, fake) -> None:
    assert main(argv, environ=env(fake, None, tmp_path)) == 2
    assert message in capsys.readouterr().err


def test_solve_from_json_input_writes_the_code_and_prints_json(
    tmp_path, fake, redis_url, redis_client, capsys
) -> None:
    fake.script(write(BAD), write(GOOD))
    out = tmp_path / "out"
    payload = json.dumps({"task": "Write add(a, b).", "tests": TESTS})
    code = main(
        ["solve", "--input", payload, "--out", str(out), "--json", "--run-id", "cli-1"],
        environ=env(fake, redis_url, tmp_path),
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "calc.py").read_text() == GOOD
    result = json.loads(captured.out)
    assert result["outcome"] == "passed" and result["run_id"] == "cli-1"
    assert [it["tests"]["passed"] for it in result["iterations"]] == [1, 2]
    assert "target calc.py (inferred from the tests' imports" in captured.err
    assert "[1/8] write_file calc.py" in captured.err and "[passed]" in captured.err

    assert main(["runs"], environ=env(fake, redis_url, tmp_path)) == 0
    listing = capsys.readouterr().out
    assert "cli-1" in listing and "passed" in listing
    assert main(["runs", "show", "cli-1"], environ=env(fake, redis_url, tmp_path)) == 0
    shown = capsys.readouterr().out
    assert "sandbox" in shown and "write_file calc.py" in shown and "failing" in shown
    assert main(["runs", "show", "nope"], environ=env(fake, redis_url, tmp_path)) == 2


def test_budget_exhausted_exits_1_and_keeps_the_best_candidate(
    tmp_path, fake, redis_url, redis_client, capsys
) -> None:
    fake.script(write(BAD), write("def add(a, b):\n    return 7\n"))
    (tmp_path / "test_calc.py").write_text(TESTS)
    code = main(
        [
            "solve",
            "--task",
            "add",
            "--tests",
            str(tmp_path / "test_calc.py"),
            "--out",
            str(tmp_path / "o"),
            "--max-iterations",
            "2",
        ],
        environ=env(fake, redis_url, tmp_path),
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "budget exhausted: iterations (2/2)" in err
    assert "last test output" in err
    # `a * b` passes test_zero (1 of 2); `7` passes none: the first is the best candidate.
    assert (tmp_path / "o" / "calc.py").read_text() == BAD


def test_embedded_redis_keeps_the_journal_across_invocations(tmp_path, fake, capsys) -> None:
    fake.script(write(GOOD))
    (tmp_path / "test_calc.py").write_text(TESTS)
    argv = [
        "solve",
        "--task",
        "add",
        "--tests",
        str(tmp_path / "test_calc.py"),
        "--out",
        str(tmp_path / "o"),
        "--run-id",
        "embedded-1",
    ]
    environ = env(fake, None, tmp_path)
    try:
        assert main(argv, environ=environ) == 0
        assert len(fake.requests) == 1
        # The same run again: every step (red run, model, tests, verification) replays
        # from the embedded Redis, no model call.
        assert main(argv, environ=environ) == 0
        assert len(fake.requests) == 1
        assert "resuming embedded-1: 4 recorded steps replay" in capsys.readouterr().err
        assert (tmp_path / "data" / "appendonly.aof").exists()
    finally:
        pid_file = tmp_path / "data" / "redis.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_unreachable_redis_is_a_clear_error_without_the_password(capsys) -> None:
    code = main(["runs"], environ={"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"})
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach Redis" in err and "hunter2" not in err and ":***@" in err


def test_tests_that_already_pass_end_as_nothing_to_do_without_a_model_call(
    tmp_path, fake, redis_url, capsys
) -> None:
    payload = json.dumps({"task": "Nothing to build.", "tests": "def test_x():\n    assert 1\n"})
    code = main(
        ["solve", "--input", payload, "--target", "m.py", "--json", "--out", str(tmp_path)],
        environ=env(fake, redis_url, tmp_path),
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["outcome"] == "nothing_to_do"
    assert "[nothing_to_do] every test already passes at the base commit" in captured.err
    assert fake.requests == []


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        ("", "is empty"),
        ("from calc import add\ndef test_add(:\n", "line 2"),
        ("from calc import add\n", "defines no test"),
        # httpx is installed in the test environment: never a module to write.
        ("import httpx\n\ndef test_get():\n    assert httpx\n", "pass --target"),
    ],
    ids=["empty", "unparsable", "no-test", "third-party-import"],
)
def test_hopeless_tasks_end_before_any_model_request(
    tests: str, message: str, tmp_path, fake, capsys
) -> None:
    (tmp_path / "test_calc.py").write_text(tests)
    argv = ["solve", "--task", "x", "--tests", str(tmp_path / "test_calc.py")]
    assert main(argv, environ=env(fake, None, tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and ("test_calc.py" in err or "--target" in err)
    assert fake.requests == []


PRICES = '{"openai/gpt-oss-120b": {"input": 1000, "output": 2000}}'
CALL_COST = 1000 * 1000 / 1e6 + 100 * 2000 / 1e6  # $1.20 for each scripted call below


def priced(content: str) -> g.Reply:
    args = {"path": "calc.py", "content": content}
    return g.tool_call("write_file", args, prompt_tokens=1000, completion_tokens=100)


def test_the_cost_is_the_same_in_progress_json_and_journal(
    tmp_path, fake, redis_url, redis_client, capsys
) -> None:
    fake.script(priced(BAD), priced(GOOD))
    payload = json.dumps({"task": "Write add(a, b).", "tests": TESTS})
    environ = env(fake, redis_url, tmp_path, MODEL_PRICES=PRICES)
    argv = ["solve", "--input", payload, "--out", str(tmp_path), "--json", "--run-id", "c-1"]
    code = main(argv, environ=environ)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["cost_usd"] == pytest.approx(2 * CALL_COST)
    meta, steps = load_run(redis_client, "c-1") or ({}, [])
    assert meta["cost_usd"] == pytest.approx(2 * CALL_COST)
    assert sum(s.meta.get("cost_usd", 0) for s in steps) == pytest.approx(2 * CALL_COST)
    assert [it["cost"] for it in result["iterations"]] == pytest.approx([CALL_COST] * 2)
    assert "$1.20" in captured.err and "$2.40" in captured.err  # progress lines, final line


def test_max_cost_ends_the_run_before_the_call_that_would_cross_it(
    tmp_path, fake, redis_url, capsys
) -> None:
    fake.script(priced(BAD), priced(GOOD))
    payload = json.dumps({"task": "Write add(a, b).", "tests": TESTS})
    # A call's worst case is its prompt plus 1,000 answer tokens ($2): the first call fits
    # under $4, the second (after $1.20 spent) would not.
    environ = env(
        fake, redis_url, tmp_path, MODEL_PRICES=PRICES, MAX_COST_USD="4", MODEL_MAX_TOKENS="1000"
    )
    code = main(["solve", "--input", payload, "--out", str(tmp_path), "--json"], environ=environ)
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert result["outcome"] == "budget_exhausted" and "cost" in result["reason"]
    assert len(fake.requests) == 1
    assert result["cost_usd"] == pytest.approx(CALL_COST)


def test_a_prompt_over_the_token_budget_ends_before_any_model_request(
    tmp_path, fake, redis_url, capsys
) -> None:
    huge = "# " + "x" * 1_000_000 + "\n" + TESTS
    payload = json.dumps({"task": "Write add(a, b).", "tests": huge})
    argv = ["solve", "--input", payload, "--out", str(tmp_path), "--json"]
    code = main(argv, environ=env(fake, redis_url, tmp_path))
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert "the prompt alone is about" in result["reason"]
    assert "MAX_TOTAL_TOKENS" in result["reason"]
    assert fake.requests == []


def test_runs_show_lists_refused_edits_with_their_reason(tmp_path, fake, redis_url, capsys) -> None:
    refused = g.tool_call("write_file", {"path": "pytest.ini", "content": "[pytest]\n"})
    fake.script(refused, write(GOOD))
    payload = json.dumps({"task": "Write add(a, b).", "tests": TESTS})
    environ = env(fake, redis_url, tmp_path)
    argv = ["solve", "--input", payload, "--out", str(tmp_path), "--run-id", "show-1"]
    assert main(argv, environ=environ) == 0
    capsys.readouterr()
    assert main(["runs", "show", "show-1"], environ=environ) == 0
    shown = capsys.readouterr().out
    assert "iterations" in shown
    assert "refused: pytest.ini" in shown and "write_file pytest.ini" in shown


# -- the CLI's rough edges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-iterations", "0"], "--max-iterations must be more than 0, not 0"),
        (["--max-iterations", "-1"], "--max-iterations must be more than 0, not -1"),
        (["--max-tokens", "0"], "--max-tokens must be more than 0"),
        (["--max-seconds", "-2.5"], "--max-seconds must be more than 0, not -2.5"),
        (["--task-file", "task.md"], "give one of --task TEXT or --task-file PATH, not both"),
        (["--out", "taken.txt"], "is a file; give a directory"),
    ],
    ids=["iterations-0", "iterations-negative", "tokens", "seconds", "task-twice", "out-file"],
)
def test_argument_mistakes_exit_2_before_any_model_request(
    extra: list[str], message: str, tmp_path, fake, capsys
) -> None:
    (tmp_path / "test_calc.py").write_text(TESTS)
    (tmp_path / "task.md").write_text("add")
    (tmp_path / "taken.txt").write_text("already here")
    extra = [str(tmp_path / a) if a in ("task.md", "taken.txt") else a for a in extra]
    argv = ["solve", "--task", "add", "--tests", str(tmp_path / "test_calc.py"), *extra]
    assert main(argv, environ=env(fake, None, tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert fake.requests == []
    assert not (tmp_path / "data").exists()  # no embedded Redis was started
    assert (tmp_path / "taken.txt").read_text() == "already here"


@pytest.mark.parametrize("which", ["tests", "task"])
def test_a_file_that_is_not_utf8_is_named_before_any_model_request(
    which: str, tmp_path, fake, capsys
) -> None:
    tests, task = tmp_path / "test_calc.py", tmp_path / "task.md"
    tests.write_text(TESTS)
    task.write_text("Write add(a, b).")
    (tests if which == "tests" else task).write_bytes(b"\xff\xfe")
    argv = ["solve", "--task-file", str(task), "--tests", str(tests)]
    assert main(argv, environ=env(fake, None, tmp_path)) == 2
    err = capsys.readouterr().err
    name = "tests file" if which == "tests" else "task file"
    assert f"{name} {tests if which == 'tests' else task} is not UTF-8 text" in err
    assert "must be UTF-8 text" in err and "Traceback" not in err
    assert fake.requests == []


@pytest.mark.parametrize("url", ["localhost:6379", "redis://:bad@["])
@pytest.mark.parametrize("command", ["solve", "runs"])
def test_a_malformed_redis_url_says_the_expected_form(
    url: str, command: str, tmp_path, fake, capsys
) -> None:
    (tmp_path / "test_calc.py").write_text(TESTS)
    argv = ["solve", "--task", "add", "--tests", str(tmp_path / "test_calc.py")]
    code = main(argv if command == "solve" else ["runs"], environ=env(fake, url, tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert "is not a Redis URL" in err
    assert "redis://host:port/db" in err and "unix:///path" in err
    assert "bad" not in err  # the password stays out of the message
    assert fake.requests == []
    assert not (tmp_path / "data").exists()


def test_runs_never_cuts_the_run_id_on_a_narrow_terminal(
    tmp_path, fake, redis_url, redis_client, capsys
) -> None:
    run_id = "a-rather-long-run-id-20240101-120000-beef"
    fake.script(write(GOOD))
    payload = json.dumps({"task": "Write add(a, b) " + "with care " * 10, "tests": TESTS})
    environ = env(fake, redis_url, tmp_path)
    argv = ["solve", "--input", payload, "--out", str(tmp_path), "--run-id", run_id]
    assert main(argv, environ=environ) == 0
    assert "[passed] 1 iteration," in capsys.readouterr().err  # not "1 iterations"
    for columns in (50, 70, 200):
        assert main(["runs"], environ={**environ, "COLUMNS": str(columns)}) == 0
        listing = capsys.readouterr().out
        assert run_id in listing, listing
        if columns >= 70:  # room for the id and the status: the table fits
            assert max(len(line) for line in listing.splitlines()) <= columns, listing
    assert "task" in listing and "Write add" in listing  # a wide terminal has it all


def test_a_run_whose_process_died_is_interrupted_not_running(
    tmp_path, fake, redis_url, redis_client, capsys
) -> None:
    environ = env(fake, redis_url, tmp_path)
    journal = RunJournal(redis_client, "died-1", lease_seconds=5)
    journal.acquire()
    journal.set_meta(status="running", title="add")
    try:
        assert main(["runs"], environ=environ) == 0
        assert "running" in capsys.readouterr().out
    finally:
        journal.release()  # its lease key goes, as it lapses when the process dies
    assert main(["runs"], environ=environ) == 0
    listing = capsys.readouterr().out
    assert "interrupted" in listing and "running" not in listing
    assert main(["runs", "show", "died-1"], environ=environ) == 0
    assert "died-1: interrupted" in capsys.readouterr().out


def test_a_model_failure_says_how_to_resume(
    tmp_path, fake, redis_url, redis_client, capsys
) -> None:
    fake.script(g.server_error(500))
    payload = json.dumps({"task": "Write add(a, b).", "tests": TESTS})
    environ = env(fake, redis_url, tmp_path, GROQ_MAX_RETRIES="0")
    argv = ["solve", "--input", payload, "--out", str(tmp_path), "--run-id", "flaky-1"]
    assert main(argv, environ=environ) == 1
    err = capsys.readouterr().err
    assert "the model failed: " in err and "; resume with --run-id flaky-1" in err
    assert len(fake.requests) == 1


def test_redis_status_and_stop_manage_the_embedded_redis(tmp_path, fake, capsys) -> None:
    environ = env(fake, None, tmp_path)
    data = tmp_path / "data"
    try:
        assert main(["redis", "status"], environ=environ) == 1
        assert "embedded Redis: not running" in capsys.readouterr().out
        assert main(["runs"], environ=environ) == 0  # starts it
        capsys.readouterr()
        assert main(["redis", "status"], environ=environ) == 0
        shown = capsys.readouterr().out
        pid = int((data / "redis.pid").read_text())
        assert "embedded Redis: running" in shown
        assert f"socket: {data / 'redis.sock'}" in shown and f"data dir: {data}" in shown
        assert f"pid: {pid}" in shown and "append-only file: " in shown

        assert main(["redis", "stop"], environ=environ) == 0
        assert f"stopped the embedded Redis in {data}" in capsys.readouterr().out
        assert not (data / "redis.sock").exists()
        assert main(["redis", "status"], environ=environ) == 1
        assert "embedded Redis: not running" in capsys.readouterr().out
        assert main(["redis", "stop"], environ=environ) == 0
        assert "is not running" in capsys.readouterr().out
    finally:
        pid_file = data / "redis.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
