"""Rendering the PR body, progress comment and check run from loop outcomes."""

from __future__ import annotations

import re
from dataclasses import replace

from markdown_it import MarkdownIt

from bot.agent.loop import Budget, Iteration, Outcome, OutcomeKind
from bot.report import (
    CHECK_RUN_TEXT_LIMIT,
    CLIPPED_LOG,
    GITHUB_BODY_LIMIT,
    PROGRESS_MARKER,
    QUEUED,
    RUNNING,
    already_running_message,
    failure_message,
    is_progress_comment,
    issue_problem_message,
    parse_pr_marker,
    permission_denied_message,
    pr_marker,
    render_check_run,
    render_pr_body,
    render_progress,
    retry_started_message,
)
from bot.sandbox.base import TestResult
from bot.verdict import Proof, Verdict

BUDGET = Budget(max_iterations=8, max_total_tokens=200_000)
RUN = "issue-octo-roman-12-5f1c2a"


def result(passed: int, failed: int = 0, output: str = "", *, errors: int = 0) -> TestResult:
    ok = failed == 0 and errors == 0 and passed > 0
    return TestResult(
        exit_code=0 if ok else 1,
        passed=passed,
        failed=failed,
        errors=errors,
        failing=tuple(f"test_issue.py::test_{i}" for i in range(failed)),
        output=output,
        duration=0.42,
    )


def pytest_output(passed: int, failed: int, tag: str) -> str:
    lines = [f"log of {tag}", "." * passed + "F" * failed]
    for i in range(failed):
        lines += [
            f"___ test_{i} ___",
            f"    assert to_roman({i + 4}) == 'IV'",
            "E   AssertionError: assert 'IIII' == 'IV'",
        ]
    lines.append(f"{failed} failed, {passed} passed in 0.42s")
    return "\n".join(lines)


def iteration(
    number: int,
    tests: TestResult | None,
    *,
    action: str = "write_file roman.py (14 lines)",
    changed: tuple[str, ...] = ("roman.py",),
) -> Iteration:
    return Iteration(
        number=number,
        action=action,
        note="",
        tokens=1500 + number,
        seconds=3.5,
        changed=changed,
        tests=tests,
    )


def outcome(
    kind: OutcomeKind, iterations: list[Iteration], *, best: TestResult | None = None
) -> Outcome:
    last = next((it.tests for it in reversed(iterations) if it.tests), None)
    reasons = {
        OutcomeKind.PASSED: "all tests pass",
        OutcomeKind.BUDGET_EXHAUSTED: "budget exhausted: iterations (8/8)",
        OutcomeKind.GAVE_UP: "the model gave up: cannot do it",
        OutcomeKind.ERROR: "the model made 3 invalid replies in a row",
    }
    return Outcome(
        kind=kind,
        reason=reasons[kind],
        files={"roman.py": "def to_roman(n): ...\n"},
        result=best or last,
        last_result=last,
        iterations=tuple(iterations),
        tokens=sum(it.tokens for it in iterations),
        elapsed=sum(it.seconds for it in iterations),
    )


def passing_run() -> Outcome:
    return outcome(
        OutcomeKind.PASSED,
        [
            iteration(1, result(1, 2, pytest_output(1, 2, "first"))),
            iteration(2, None, action="read_file roman.py", changed=()),
            iteration(3, result(3, 0, pytest_output(3, 0, "third"))),
        ],
    )


def failing_run() -> Outcome:
    best = result(3, 2, pytest_output(3, 2, "best"))
    return outcome(
        OutcomeKind.BUDGET_EXHAUSTED,
        [
            iteration(n, best if n == 5 else result(1, 4, pytest_output(1, 4, f"it{n}")))
            for n in range(1, 9)
        ],
        best=best,
    )


def fences(markdown: str) -> list[str]:
    """The contents of the fenced code blocks, as a CommonMark parser sees them."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [t.content.rstrip("\n") for t in tokens if t.type == "fence"]


def closing_keywords(body: str, issue: int) -> list[str]:
    pattern = rf"(?i)\b(close[sd]?|fix(e[sd])?|resolve[sd]?):?\s+#{issue}\b"
    return re.findall(pattern, body)


# --- PR body ------------------------------------------------------------------------------


def test_passing_pr_body_closes_the_issue_and_shows_every_log() -> None:
    run = passing_run()
    body = render_pr_body(issue_number=12, run_id=RUN, outcome=run, budget=BUDGET, title="Roman")

    assert body.startswith(pr_marker(issue_number=12, run_id=RUN) + "\n")
    assert "Closes #12" in body
    assert "Related to" not in body
    assert "[!WARNING]" not in body
    assert "✅ **All tests pass** (3 passed, 0 failed)" in body
    assert "- **Iterations:** 3/8" in body
    assert f"- **Tokens:** {run.tokens:,}/200,000" in body
    assert "- **Files:** `roman.py`" in body
    # One <details> per iteration that ran the tests, each holding that run's output.
    assert "<details><summary>Iteration 1 — 1 passed, 2 failed</summary>" in body
    assert "<details><summary>Iteration 3 — 3 passed, 0 failed</summary>" in body
    assert "<summary>Iteration 2" not in body
    assert fences(body) == [pytest_output(1, 2, "first"), pytest_output(3, 0, "third")]
    # The table lists every iteration, including the one that ran no tests.
    assert "| 2 | `read_file roman.py` | — | — | 3.5s | 1,502 |" in body
    assert "| 3 | `write_file roman.py (14 lines)` | `roman.py` | ✅ 3 passed, 0 failed |" in body


def test_failing_pr_body_does_not_close_the_issue_and_warns() -> None:
    body = render_pr_body(
        issue_number=12, run_id=RUN, outcome=failing_run(), budget=BUDGET, title="Roman"
    )
    assert closing_keywords(body, 12) == []
    assert "Related to #12" in body
    assert "> [!WARNING]\n> **The tests do not pass.**" in body
    assert "it passes 3/5 tests" in body
    assert "budget exhausted: iterations (8/8)" in body
    assert "- **Outcome:** budget exhausted" in body
    assert len(re.findall(r"<details><summary>Iteration \d+ — ", body)) == 8
    assert parse_pr_marker(body) == {"issue": 12, "run": RUN}


def test_pr_marker_round_trips_and_ignores_forgeries_in_output() -> None:
    forged = "<!-- tdd-agent:pr issue=999 run=evil -->"
    run = outcome(OutcomeKind.PASSED, [iteration(1, result(1, 0, f"print: {forged}"))])
    odd_run_id = "retry run #3 --> x"
    body = render_pr_body(issue_number=7, run_id=odd_run_id, outcome=run, budget=BUDGET, title="t")
    assert parse_pr_marker(body) == {"issue": 7, "run": odd_run_id}
    assert body.splitlines()[0].endswith("-->")
    assert body.splitlines()[0].count("-->") == 1
    assert parse_pr_marker("just a human PR") is None
    assert parse_pr_marker(None) is None


def test_backticks_in_output_cannot_break_the_fence() -> None:
    nasty = (
        "AssertionError: expected\n```\n</details>\n# Heading\n````python\n"
        "`````\n@octocat see #1\n~~~\nend"
    )
    run = outcome(OutcomeKind.GAVE_UP, [iteration(1, result(0, 1, nasty))])
    body = render_pr_body(issue_number=3, run_id=RUN, outcome=run, budget=BUDGET, title="t")
    assert fences(body) == [nasty]
    assert "``````text\n" + nasty + "\n``````" in body
    # Nothing after the log leaked out of the block: the details element still closes.
    assert body.rstrip().endswith("</details>")


def test_untrusted_text_in_cells_and_title_is_inert() -> None:
    it = iteration(1, result(0, 1, "x"), action="write_file a|b.py (1 lines)", changed=("a|b.py",))
    run = outcome(OutcomeKind.GAVE_UP, [it])
    run = Outcome(**{**run.__dict__, "reason": "the model gave up: ask @octocat about #4 <b>"})
    body = render_pr_body(
        issue_number=3, run_id=RUN, outcome=run, budget=BUDGET, title="Ping @everyone <script>"
    )
    assert "`write_file a\\|b.py (1 lines)`" in body
    assert "`a\\|b.py`" in body
    assert "@octocat" not in body and "@\u200boctocat" in body
    assert "#4" not in body and "#\u200b4" in body
    assert "<b>" not in body and "&lt;b&gt;" in body


def test_size_limit_clips_the_oldest_logs_first() -> None:
    big = [result(0, 3, f"iteration {n} start\n" + ("x" * 99 + "\n") * 200) for n in range(1, 9)]
    run = outcome(OutcomeKind.BUDGET_EXHAUSTED, [iteration(n, big[n - 1]) for n in range(1, 9)])
    assert sum(len(r.output) for r in big) > GITHUB_BODY_LIMIT

    body = render_pr_body(issue_number=12, run_id=RUN, outcome=run, budget=BUDGET, title="t")

    assert len(body) <= GITHUB_BODY_LIMIT
    logs = fences(body)
    assert len(logs) == 8
    assert logs[-1] == big[-1].output.strip("\n")  # newest intact
    assert logs[0] == CLIPPED_LOG  # oldest clipped
    clipped = [n for n, log in enumerate(logs, start=1) if log == CLIPPED_LOG]
    assert clipped == list(range(1, len(clipped) + 1))  # a prefix: oldest first
    assert 0 < len(clipped) < 8
    listed = ", ".join(map(str, clipped))
    note = f"> The test output of iterations {listed} was clipped to fit GitHub's size limit"
    assert note in body
    assert body.index(note) < body.index("## Summary")  # said at the top


def test_a_single_huge_log_is_clipped_in_the_middle() -> None:
    huge = "HEAD-OF-LOG\n" + "y" * 150_000 + "\nTAIL: 1 failed, 0 passed"
    run = outcome(OutcomeKind.BUDGET_EXHAUSTED, [iteration(1, result(0, 1, huge))])
    body = render_pr_body(issue_number=1, run_id=RUN, outcome=run, budget=BUDGET, title="t")
    assert len(body) <= GITHUB_BODY_LIMIT
    assert len(body) > GITHUB_BODY_LIMIT - 2_000  # clipped only as much as needed
    (log,) = fences(body)
    assert log.startswith("HEAD-OF-LOG")
    assert log.endswith("TAIL: 1 failed, 0 passed")
    assert "characters clipped" in log
    assert "The test output of iteration 1 was clipped" in body


def test_custom_limit_is_respected() -> None:
    body = render_pr_body(
        issue_number=12, run_id=RUN, outcome=failing_run(), budget=BUDGET, title="t", limit=5_000
    )
    assert len(body) <= 5_000
    assert body.startswith("<!-- tdd-agent:pr issue=12")
    assert "Related to #12" in body


def test_a_reused_test_run_is_not_repeated() -> None:
    same = result(2, 1, pytest_output(2, 1, "shared"))
    run = outcome(
        OutcomeKind.GAVE_UP,
        [iteration(1, same), iteration(2, same, action="run_tests", changed=())],
    )
    body = render_pr_body(issue_number=1, run_id=RUN, outcome=run, budget=BUDGET, title="t")
    assert fences(body) == [
        pytest_output(2, 1, "shared"),
        "(same test run as iteration 1: the code did not change)",
    ]


# --- progress comment ---------------------------------------------------------------------


def test_progress_while_running() -> None:
    its = [iteration(1, result(1, 2, "boom")), iteration(2, result(2, 1, "boom"))]
    body = render_progress(run_id=RUN, iterations=its, budget=BUDGET, status=RUNNING)
    assert body.startswith(PROGRESS_MARKER)
    assert is_progress_comment(body)
    assert "🔄 Working on it — iteration 3/8" in body
    assert "| 1 | `write_file roman.py (14 lines)` | ❌ 1 passed, 2 failed | 3.5s | 1,501 |" in body
    assert "| 2 |" in body
    assert "```" not in body  # no test output while running
    assert f"`{RUN}`" in body
    assert "3,003/200,000 tokens" in body


def test_progress_first_iteration_and_queued() -> None:
    body = render_progress(run_id=RUN, iterations=[], budget=BUDGET, status=RUNNING)
    assert "🔄 Working on it — iteration 1/8" in body
    assert "| # |" not in body
    queued = render_progress(
        run_id=RUN, iterations=[], budget=BUDGET, status=QUEUED, detail="2 runs ahead"
    )
    assert "⏳ Queued — waiting for a worker (2 runs ahead)" in queued


def test_progress_when_passed() -> None:
    its = [iteration(1, result(1, 2, "x")), iteration(2, result(3, 0, "ok"))]
    body = render_progress(
        run_id=RUN,
        iterations=its,
        budget=BUDGET,
        status=OutcomeKind.PASSED,
        pr_url="https://github.com/octo/roman/pull/34",
        last_output="all good",
    )
    assert "✅ Tests pass — opened #34" in body
    assert "Pull request: https://github.com/octo/roman/pull/34" in body
    assert "all good" not in body  # output only on failure
    assert "| 2 | `write_file roman.py (14 lines)` | ✅ 3 passed, 0 failed |" in body


def test_progress_when_the_budget_is_exhausted() -> None:
    run = failing_run()
    body = render_progress(
        run_id=RUN,
        iterations=run.iterations,
        budget=BUDGET,
        status=run.kind,
        detail=run.reason,
        pr_url="https://github.com/octo/roman/pull/34",
        last_output=run.last_result.output if run.last_result else None,
    )
    line = "❌ Budget exhausted (iterations 8/8): best candidate passes 3/5 — draft PR #34"
    assert line in body
    assert "Draft pull request: https://github.com/octo/roman/pull/34" in body
    assert fences(body) == [pytest_output(1, 4, "it8")]
    # Without a detail, the exhausted limit is worked out from the iterations.
    plain = render_progress(
        run_id=RUN, iterations=run.iterations, budget=BUDGET, status="budget_exhausted"
    )
    assert "❌ Budget exhausted (iterations 8/8): best candidate passes 3/5" in plain


def test_progress_when_the_model_gives_up_or_the_run_fails() -> None:
    its = [iteration(1, result(0, 2, "E   ImportError"))]
    body = render_progress(
        run_id=RUN,
        iterations=its,
        budget=BUDGET,
        status=OutcomeKind.GAVE_UP,
        detail="the model gave up: ping @octocat",
        last_output="E   ImportError",
    )
    assert "❌ The model gave up: ping @\u200boctocat — best candidate passes 0/2" in body
    assert fences(body) == ["E   ImportError"]
    failed = render_progress(
        run_id=RUN, iterations=[], budget=BUDGET, status="error", detail="Groq is down"
    )
    assert "⚠️ The run failed: Groq is down" in failed


def test_progress_stays_within_the_comment_limit() -> None:
    its = [iteration(n, result(0, 1, "z")) for n in range(1, 400)]
    body = render_progress(
        run_id=RUN,
        iterations=its,
        budget=Budget(max_iterations=500),
        status=OutcomeKind.BUDGET_EXHAUSTED,
        last_output="q" * 500_000,
    )
    assert len(body) < GITHUB_BODY_LIMIT // 2
    assert "299 earlier iterations are not shown." in body
    assert "| 399 |" in body and "| 299 |" not in body
    (log,) = fences(body)
    assert "characters clipped" in log


# --- check run ----------------------------------------------------------------------------


def test_check_run_for_a_passing_run() -> None:
    check = render_check_run(outcome=passing_run())
    assert check["conclusion"] == "success"
    assert check["title"] == "All tests pass (3 passed, 0 failed)"
    assert "| 3 | `write_file roman.py (14 lines)` | `roman.py` | ✅ 3 passed" in check["summary"]
    assert "### Iteration 1 — 1 passed, 2 failed" in check["text"]
    assert fences(check["text"]) == [pytest_output(1, 2, "first"), pytest_output(3, 0, "third")]


def test_check_run_for_a_failing_run_keeps_within_limits() -> None:
    big = [result(1, 4, f"run {n}\n" + "w" * 30_000) for n in range(1, 9)]
    run = outcome(OutcomeKind.BUDGET_EXHAUSTED, [iteration(n, big[n - 1]) for n in range(1, 9)])
    check = render_check_run(outcome=run)
    assert check["conclusion"] == "failure"
    assert check["title"] == "Tests fail: best candidate passes 1/5 (budget exhausted)"
    assert len(check["text"]) <= CHECK_RUN_TEXT_LIMIT
    assert len(check["summary"]) <= CHECK_RUN_TEXT_LIMIT
    logs = fences(check["text"])
    assert len(logs) == 8
    assert logs[-1] == big[-1].output
    assert logs[0].startswith("(log clipped")
    assert all(f"### Iteration {n} — 1 passed, 4 failed" in check["text"] for n in range(1, 9))


def test_check_run_for_an_error_without_test_runs() -> None:
    run = outcome(OutcomeKind.ERROR, [iteration(1, None, action="invalid reply", changed=())])
    check = render_check_run(outcome=run)
    assert check["conclusion"] == "failure"
    assert check["text"] == "No test runs."
    assert "the model made 3 invalid replies in a row" in check["summary"]


# --- short messages -----------------------------------------------------------------------


def test_short_messages() -> None:
    denied = permission_denied_message("drive-by-user")
    assert denied.startswith("Thanks, @drive-by-user!")
    assert "write access" in denied

    running = already_running_message("https://tdd.example.com/runs/abc")
    assert "[this run](https://tdd.example.com/runs/abc)" in running
    assert "run `abc`" in already_running_message("abc")

    retry = retry_started_message(run_url_or_id="r-2", guidance="Use divmod.\nKeep it short.")
    assert retry == "🔁 Retrying (run `r-2`) with this guidance:\n\n> Use divmod.\n> Keep it short."
    assert "Add text after `/retry`" in retry_started_message(run_url_or_id="r-2")

    failed = failure_message(reason="E2B timed out", run_url_or_id="r-3", trigger_label="agent:tdd")
    assert "E2B timed out" in failed
    assert "re-apply the `agent:tdd` label" in failed
    assert "comment `/retry`" in failure_message(reason="x", run_url_or_id="r-3")

    problem = issue_problem_message("Target `x` is a test file.", "agent:tdd")
    assert "Target `x` is a test file." in problem
    assert "`agent:tdd`" in problem


def proved(kind: OutcomeKind, verdict: Verdict) -> Outcome:
    base = TestResult(
        exit_code=1,
        failed=1,
        errors=1,
        outcomes={
            "tests/test_roman.py::test_four": "failed",
            "tests/test_roman.py::test_one": "passed",
        },
    )
    verification = TestResult(
        exit_code=1,
        passed=2,
        command="python -P -m pytest -c /run/tdd/lib/pytest.ini tests/test_roman.py",
        versions={"python": "3.11.7", "pytest": "8.4.1"},
    )
    proof = Proof(verdict=verdict, result=verification, hashes={"tests/test_roman.py": "ab" * 32})
    return replace(passing_run(), kind=kind, base=base, proof=proof)


def test_the_pr_and_the_check_run_show_the_red_to_green_proof() -> None:
    verdict = Verdict(
        True,
        True,
        "all 2 tests passed",
        {"tests/test_roman.py::test_four": "passed", "tests/test_roman.py::test_one": "passed"},
    )
    run = proved(OutcomeKind.PASSED, verdict)
    body = render_pr_body(
        issue_number=7, run_id="r-1", outcome=run, budget=Budget(), title="Roman numerals"
    )
    proof = body[body.index("## Proof: red → green") : body.index("## Iterations")]
    assert "tests/test_roman.py::test_four" in proof and "tests/test_roman.py::test_one" in proof
    assert "python -P -m pytest" in proof and "3.11.7" in proof and "8.4.1" in proof
    assert "ab" * 32 in proof and "unchanged" in proof
    assert "already" in proof  # test_one passed at base already
    check = render_check_run(outcome=run)
    assert "python -P -m pytest" in check["summary"] and check["conclusion"] == "success"


def test_an_untrusted_run_says_why_and_never_looks_green() -> None:
    verdict = Verdict(
        False, False, "the test report was not trustworthy: the must-fail canary passed"
    )
    run = replace(proved(OutcomeKind.UNTRUSTED, verdict), reason=verdict.reason)
    body = render_pr_body(issue_number=7, run_id="r-1", outcome=run, budget=Budget(), title="x")
    assert "Closes #7" not in body and "The tests do not pass" in body
    assert "not trustworthy: the must-fail canary passed" in body
    assert render_check_run(outcome=run)["conclusion"] == "failure"
    progress = render_progress(
        run_id="r-1",
        iterations=run.iterations,
        budget=Budget(),
        status="untrusted",
        detail=run.reason,
    )
    assert "Not verified" in progress and "not trustworthy" in progress


def test_nothing_to_do_progress_says_no_model_was_asked() -> None:
    text = render_progress(run_id="r", iterations=[], budget=Budget(), status="nothing_to_do")
    assert "already passes at the base commit" in text and "no model was asked" in text
