"""The loop in-process: the real groq SDK over HTTP to the fake Groq, a real sandbox and pytest."""

from __future__ import annotations

import json
from collections.abc import Iterator

import groq
import pytest

from bot.agent.context import ContextPolicy, Task
from bot.agent.loop import Budget, OutcomeKind, solve
from bot.agent.model import GroqModel
from bot.agent.steps import DirectSteps
from bot.sandbox.local import LocalSandbox
from tests.fakes import groq as g

TESTS = {
    "test_calc.py": (
        "from calc import add, sub\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n"
        "def test_sub():\n    assert sub(5, 3) == 2\n\n"
        "def test_add_neg():\n    assert add(-1, -1) == -2\n"
    )
}
TASK = Task(text="Write add(a, b) and sub(a, b) in calc.py.", tests=TESTS, target="calc.py")
GOOD = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
HALF = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a + b\n"  # 2 of 3
WORSE = "def add(a, b):\n    return 0\n\n\ndef sub(a, b):\n    return 2\n"  # 1 of 3


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LocalSandbox]:
    box = LocalSandbox()
    yield box
    box.close()


@pytest.fixture
def fake() -> Iterator[g.FakeGroq]:
    with g.FakeGroq() as server:
        yield server


def run(fake: g.FakeGroq, sandbox: LocalSandbox, budget: Budget | None = None, **kw):
    client = groq.Groq(api_key="gsk_test", base_url=fake.url, max_retries=3)
    return solve(
        TASK,
        DirectSteps(GroqModel(client), sandbox),
        budget=budget or Budget(max_iterations=5),
        policy=kw.pop("policy", ContextPolicy()),
        model="openai/gpt-oss-120b",
        **kw,
    )


def write(content: str, path: str = "calc.py") -> g.Reply:
    return g.tool_call("write_file", {"path": path, "content": content})


def test_passes_on_second_iteration_with_first_output_fed_back(fake, sandbox) -> None:
    fake.script(write(HALF), write(GOOD))
    outcome = run(fake, sandbox)

    assert outcome.kind is OutcomeKind.PASSED
    assert outcome.files == {"calc.py": GOOD}
    assert [it.tests.passed for it in outcome.iterations if it.tests] == [2, 3]
    first, second = fake.requests
    assert first.parallel_tool_calls is False
    assert {t["function"]["name"] for t in first.tools} >= {"write_file", "finish"}
    fed_back = second.messages[-1]
    assert fed_back["role"] == "tool"
    assert "Tests: 2 passed, 1 failed" in fed_back["content"]
    assert "test_calc.py::test_sub" in fed_back["content"]
    assert second.messages[:2] == first.messages[:2], "stable prefix for Groq's cache"
    assert outcome.tokens > 0


def test_budget_exhaustion_keeps_the_best_candidate(fake, sandbox) -> None:
    fake.script(write(HALF), write(WORSE))
    outcome = run(fake, sandbox, Budget(max_iterations=2))

    assert outcome.kind is OutcomeKind.BUDGET_EXHAUSTED
    assert "iterations (2/2)" in outcome.reason
    assert outcome.files == {"calc.py": HALF}
    assert outcome.result is not None and outcome.result.passed == 2
    assert outcome.last_result is not None and outcome.last_result.passed == 1
    assert len(fake.requests) == 2, "the loop, not the model, stops the run"


def test_token_budget_is_enforced_by_the_loop(fake, sandbox) -> None:
    first = g.tool_call(
        "write_file", {"path": "calc.py", "content": HALF}, prompt_tokens=6000, completion_tokens=50
    )
    fake.script(first, write(GOOD))
    outcome = run(fake, sandbox, Budget(max_iterations=10, max_total_tokens=6000))
    assert outcome.kind is OutcomeKind.BUDGET_EXHAUSTED
    assert outcome.reason.startswith("budget exhausted: tokens")
    assert len(fake.requests) == 1


def test_a_prompt_over_the_token_budget_is_never_sent(fake, sandbox) -> None:
    fake.script(write(GOOD))
    outcome = run(fake, sandbox, Budget(max_iterations=10, max_total_tokens=10))
    assert outcome.kind is OutcomeKind.BUDGET_EXHAUSTED
    assert "the prompt alone is about" in outcome.reason
    assert fake.requests == []


def test_three_invalid_replies_in_a_row_end_the_run(fake, sandbox) -> None:
    fake.script(
        g.text("Sure! Here is the code: def add(a, b): return a + b"),
        g.tool_call("write_file", '{"path": "calc.py", "content": '),
        g.tool_use_failed("<function=write_file>{bad}</function>"),
    )
    outcome = run(fake, sandbox)

    assert outcome.kind is OutcomeKind.ERROR
    assert "3 invalid replies in a row" in outcome.reason
    assert len(outcome.iterations) == 3, "each invalid reply counts against the budget"
    second, third = fake.requests[1], fake.requests[2]
    assert "instead of a tool call" in second.messages[-1]["content"]
    assert "not valid JSON" in third.messages[-1]["content"]


def test_an_invalid_reply_then_a_valid_one_resets_the_streak(fake, sandbox) -> None:
    fake.script(g.text("thinking..."), g.text("still thinking"), write(GOOD))
    outcome = run(fake, sandbox)
    assert outcome.kind is OutcomeKind.PASSED
    assert len(outcome.iterations) == 3


def test_finish_with_red_tests_is_refused(fake, sandbox) -> None:
    fake.script(
        write(HALF),
        g.tool_call("finish", {"summary": "done, looks right"}),
        write(GOOD),
    )
    outcome = run(fake, sandbox)

    assert outcome.kind is OutcomeKind.PASSED
    refusal = fake.requests[2].messages[-1]["content"]
    assert refusal.startswith("finish refused: the tests do not pass yet")
    assert outcome.iterations[1].note == "finish refused: tests fail"


def test_give_up_ends_the_run_with_the_best_candidate(fake, sandbox) -> None:
    fake.script(write(HALF), g.tool_call("finish", {"summary": "cannot", "give_up": True}))
    outcome = run(fake, sandbox)
    assert outcome.kind is OutcomeKind.GAVE_UP
    assert outcome.files == {"calc.py": HALF}


def test_the_model_cannot_overwrite_the_tests(fake, sandbox) -> None:
    cheat = "def test_add():\n    assert True\n"
    fake.script(
        write(cheat, "test_calc.py"),
        write(cheat, "conftest.py"),
        g.tool_call("replace_in_file", {"path": "test_calc.py", "old": "== 5", "new": "== 0"}),
        write(GOOD),
    )
    outcome = run(fake, sandbox, Budget(max_iterations=5, max_invalid_replies=5))

    assert outcome.kind is OutcomeKind.PASSED
    assert "test_calc.py" not in outcome.files and "conftest.py" not in outcome.files
    assert "read-only" in fake.requests[1].messages[-1]["content"]
    assert outcome.iterations[-1].tests is not None and outcome.iterations[-1].tests.passed == 3


def test_rate_limits_and_server_errors_are_retried(fake, sandbox) -> None:
    fake.script(g.rate_limited(retry_after=0.05), g.server_error(502), write(GOOD))
    outcome = run(fake, sandbox)
    assert outcome.kind is OutcomeKind.PASSED
    assert [r.status for r in fake.requests] == [429, 502, 200]
    assert len(outcome.iterations) == 1


def test_request_too_large_shrinks_the_context(fake, sandbox) -> None:
    fake.script(write(HALF), write(WORSE), write(HALF + "\n"), g.too_large(), write(GOOD))
    outcome = run(fake, sandbox, Budget(max_iterations=6), policy=ContextPolicy(keep_full=3))
    assert outcome.kind is OutcomeKind.PASSED
    too_large, retried = fake.requests[3], fake.requests[4]
    assert too_large.status == 413
    assert len(str(retried.messages)) < len(str(too_large.messages))
    assert len(outcome.iterations) == 4


def test_wall_time_budget(fake, sandbox) -> None:
    fake.script(write(HALF), write(GOOD))
    outcome = run(fake, sandbox, Budget(max_iterations=5, max_wall_seconds=0.01))
    assert outcome.kind is OutcomeKind.BUDGET_EXHAUSTED
    assert "wall time" in outcome.reason
    # The red run at the start already used the whole 10 ms: no model turn is paid for.
    assert fake.requests == []
    assert outcome.base is not None and not outcome.base.ok


# -- a loop that helps weaker models too ----------------------------------------------------


def test_a_repeated_refused_call_is_named_and_two_repeats_start_over(fake, sandbox) -> None:
    refused = g.tool_call("write_file", {"path": "test_calc.py", "content": "x = 1\n"})
    fake.script(write(HALF), refused, refused, refused, write(GOOD))
    outcome = run(fake, sandbox, Budget(max_iterations=6))

    assert outcome.kind is OutcomeKind.PASSED
    first_refusal = fake.requests[2].messages[-1]["content"]
    assert "read-only" in first_refusal and "repeated" not in first_refusal
    # A refusal shows the target as it stands, with line numbers, to edit what exists.
    assert "Current content of calc.py" in first_refusal and "   1 | def add" in first_refusal
    assert "You repeated your previous call exactly" in fake.requests[3].messages[-1]["content"]
    # After the second repeat: a fresh context from the best candidate, a higher temperature.
    fresh = fake.requests[4]
    assert len(fresh.messages) == 3, "system, task, and the restart message only"
    assert "Starting over" in fresh.messages[-1]["content"]
    assert "return a + b" in fresh.messages[-1]["content"], "the best candidate is shown"
    assert fresh.json is not None and fresh.json["temperature"] > 0.2


def test_a_failed_run_shows_the_targets_current_content(fake, sandbox) -> None:
    fake.script(write(HALF), write(GOOD))
    run(fake, sandbox)
    fed_back = fake.requests[1].messages[-1]["content"]
    assert "Tests: 2 passed, 1 failed" in fed_back
    assert "Current content of calc.py" in fed_back and "return a + b" in fed_back


def test_tool_descriptions_name_the_real_target_never_a_sample(fake, sandbox) -> None:
    fake.script(write(GOOD))
    run(fake, sandbox)
    schemas = json.dumps(fake.requests[0].tools)
    assert "calc.py" in schemas and "roman.py" not in schemas and "{target}" not in schemas


def test_writing_another_module_while_the_target_is_missing_says_so(fake, sandbox) -> None:
    fake.script(write(GOOD, "helpers.py"), write(GOOD))
    run(fake, sandbox)
    assert "the code must go into calc.py" in fake.requests[1].messages[-1]["content"]


def test_a_module_that_imports_itself_is_refused_with_the_reason(fake, sandbox) -> None:
    fake.script(write("from calc import add\n\ndef sub(a, b):\n    return a - b\n"), write(GOOD))
    run(fake, sandbox)
    refusal = fake.requests[1].messages[-1]["content"]
    assert "imports calc itself" in refusal and "circular import" in refusal
