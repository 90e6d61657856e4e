"""Rendering what the bot posts: the progress comment, the PR body, the check run (pure).

Everything here returns Markdown strings (or the check run's output dict) from plain data.
Text that the model or the tests produced is treated as untrusted: it goes into code spans
or fenced blocks whose fence cannot be closed from inside, and `@`/`#` references in free
text are neutralized so a run never pings people or cross-links unrelated issues.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote

from bot.agent.loop import Budget, Iteration, Outcome, OutcomeKind, score
from bot.pricing import cost_words, usd
from bot.sandbox.base import TestResult
from bot.text import clip, cut
from bot.verdict import proof_rows, render_proof

GITHUB_BODY_LIMIT = 65_536  # issue comments and PR bodies
CHECK_RUN_TEXT_LIMIT = 65_535  # check run output summary and text, each
CHECK_RUN_NAME = "tdd-agent / tests"
PROGRESS_MARKER = "<!-- tdd-agent:progress -->"
CLIPPED_LOG = "(log clipped to fit GitHub's size limit; the full log is in the check run)"
CHECK_RUN_CLIPPED_LOG = "(log clipped to fit GitHub's check run size limit)"

# Progress statuses besides the OutcomeKind values ("passed", "budget_exhausted", ...).
QUEUED = "queued"
RUNNING = "running"

MAX_TABLE_ROWS = 100
PROGRESS_OUTPUT_CHARS = 20_000
_PR_MARKER = re.compile(r"<!-- tdd-agent:pr issue=(?P<issue>\d+) run=(?P<run>\S+) -->")
_PR_URL_NUMBER = re.compile(r"/pull/(\d+)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# --- small pieces -------------------------------------------------------------------------


def _sanitize(text: str) -> str:
    """Normalized newlines, no control characters (GitHub rejects some, e.g. NUL)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _fenced(text: str, info: str = "text") -> str:
    """A fenced block that no backtick run inside `text` can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _code(text: str, limit: int = 120) -> str:
    """An inline code span safe inside a table cell (one line, pipes escaped)."""
    text = cut(" ".join(_sanitize(text).split()), limit)
    if not text:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    # GFM splits table cells on `|` even inside code spans; `\|` is the documented escape.
    return f"{ticks}{pad}{text.replace('|', chr(92) + '|')}{pad}{ticks}"


def _plain(text: str, limit: int = 300) -> str:
    """Untrusted free text on one line: no HTML, no @-mentions, no #-references."""
    text = cut(" ".join(_sanitize(text).split()), limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|")
    # A zero-width space after @ and # keeps the text readable but inert.
    return re.sub(r"([@#])(?=\w)", "\\1\u200b", text)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s"


def _counts(result: TestResult) -> str:
    """`2 passed, 1 failed` (no duration), for headings and table cells."""
    if result.sandbox_error:
        return "sandbox error"
    parts = [f"{result.passed} passed", f"{result.failed} failed"]
    if result.errors:
        parts.append(f"{result.errors} errors")
    if result.timed_out:
        parts.append("timed out")
    return ", ".join(parts)


def _tests_cell(result: TestResult | None) -> str:
    if result is None:
        return "—"
    return ("✅ " if result.ok else "❌ ") + _counts(result)


def _best(iterations: Sequence[Iteration]) -> TestResult | None:
    results = [it.tests for it in iterations if it.tests is not None]
    return max(results, key=score, default=None)


def _passes(result: TestResult | None) -> str:
    if result is None or result.total == 0:
        return "no test run yet"
    return f"passes {result.passed}/{result.total}"


def _pr_number(pr_url: str) -> str | None:
    m = _PR_URL_NUMBER.search(pr_url)
    return m.group(1) if m else None


def _pr_ref(pr_url: str) -> str:
    number = _pr_number(pr_url)
    return f"#{number}" if number else f"[pull request]({pr_url})"


def _log(result: TestResult) -> str:
    text = _sanitize(result.output).strip("\n") or "(no output)"
    if result.sandbox_error:
        text = f"sandbox error: {_sanitize(result.sandbox_error)}\n\n{text}"
    if result.output_truncated:
        text = "(output truncated by the sandbox)\n" + text
    return text


def _details(summary: str, body: str) -> str:
    # The blank lines let GitHub render Markdown (the fence) inside the HTML block.
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def _table(iterations: Sequence[Iteration], *, changes: bool) -> str:
    """The iterations as a Markdown table; very long runs show the latest rows."""
    head = (
        "| # | Action | Changed | Tests | Time | Tokens |"
        if changes
        else ("| # | Action | Tests | Time | Tokens |")
    )
    rule = "|--:|---|---|---|--:|--:|" if changes else "|--:|---|---|--:|--:|"
    rows = [head, rule]
    shown = list(iterations)[-MAX_TABLE_ROWS:]
    for it in shown:
        action = _code(it.action) + (" ↻" if it.replayed else "")
        cells = [str(it.number), action]
        if changes:
            cells.append(", ".join(_code(p, 80) for p in it.changed[:5]) or "—")
        cells += [_tests_cell(it.tests), _duration(it.seconds), f"{it.tokens:,}"]
        rows.append("| " + " | ".join(cells) + " |")
    hidden = len(iterations) - len(shown)
    note = f"\n\n{hidden} earlier iterations are not shown." if hidden else ""
    return "\n".join(rows) + note


def _within(text: str, limit: int) -> str:
    """Last resort when clipping logs was not enough: cut the end, say so."""
    return cut(text, limit, "\n\n… (truncated to fit GitHub's size limit)")


def _fit(
    render: Callable[[list[str], list[int]], str],
    numbers: list[int],
    logs: list[str],
    *,
    limit: int,
    note: str,
) -> str:
    """Render within `limit`: replace the oldest logs by `note`, then clip the newest's middle.

    `render(logs, clipped_numbers)` builds the whole text from the current logs.
    """
    logs = list(logs)
    clipped: list[int] = []
    text = render(logs, clipped)
    for i in range(len(logs) - 1):
        if len(text) <= limit:
            return text
        if len(logs[i]) > len(note):
            logs[i] = note
            clipped.append(numbers[i])
            text = render(logs, clipped)
    if len(text) > limit and logs:
        if numbers[-1] not in clipped:
            clipped.append(numbers[-1])
        newest = logs[-1]
        keep = len(newest)
        while len(text) > limit and keep > 0:
            keep = max(keep - (len(text) - limit) - 200, 0)
            logs[-1] = clip(newest, keep) if keep else note
            text = render(logs, clipped)
    return _within(text, limit)


def _clipped_note(numbers: list[int], where: str) -> str:
    listed = ", ".join(str(n) for n in sorted(numbers))
    noun = "iteration" if len(numbers) == 1 else "iterations"
    return f"> [!NOTE]\n> The test output of {noun} {listed} was clipped to fit {where}"


# --- markers ------------------------------------------------------------------------------


def pr_marker(*, issue_number: int, run_id: str) -> str:
    """The hidden first line of a PR body: which issue and run the PR belongs to."""
    return f"<!-- tdd-agent:pr issue={issue_number} run={quote(run_id, safe='-_.:/')} -->"


def parse_pr_marker(body: str | None) -> dict[str, Any] | None:
    """`{"issue": 12, "run": "..."}` from a PR body the bot wrote, or None.

    The first marker counts: the bot writes it at the top, before any test output that
    could contain a look-alike.
    """
    m = _PR_MARKER.search(body or "")
    if m is None:
        return None
    return {"issue": int(m["issue"]), "run": unquote(m["run"])}


def is_progress_comment(body: str | None) -> bool:
    """Whether a comment is the bot's progress comment (check the author too)."""
    return (body or "").lstrip().startswith(PROGRESS_MARKER)


# --- the progress comment -----------------------------------------------------------------


def _limit_words(limit: str) -> str:
    # Budget.exceeded says `iterations (8/8)`; inside the heading's own parentheses that
    # reads better as `iterations 8/8`.
    return re.sub(r"^([a-z ]+) \((\S+)\)$", r"\1 \2", limit)


def _status_line(
    status: str,
    *,
    iterations: Sequence[Iteration],
    budget: Budget,
    detail: str,
    pr_url: str | None,
) -> str:
    status = str(status)
    # The loop passes reasons with their own prefix; the heading already says it.
    for prefix in ("budget exhausted:", "the model gave up:"):
        if detail.lower().startswith(prefix):
            detail = detail[len(prefix) :].strip()
    detail = _limit_words(detail)
    extra = f" ({_plain(detail)})" if detail else ""
    best = _best(iterations)
    draft = f" — draft PR {_pr_ref(pr_url)}" if pr_url else ""
    if status == QUEUED:
        return f"⏳ Queued — waiting for a worker{extra}"
    if status == RUNNING:
        current = min(len(iterations) + 1, budget.max_iterations)
        return f"🔄 Working on it — iteration {current}/{budget.max_iterations}{extra}"
    if status == OutcomeKind.PASSED:
        opened = f" — opened {_pr_ref(pr_url)}" if pr_url else " — opening a pull request"
        return f"✅ Tests pass{opened}"
    if status == OutcomeKind.BUDGET_EXHAUSTED:
        if not detail:
            limit = budget.exceeded(
                iterations=len(iterations),
                tokens=sum(it.tokens for it in iterations),
                elapsed=sum(it.seconds for it in iterations),
            )
            extra = f" ({_limit_words(limit)})" if limit else ""
        return f"❌ Budget exhausted{extra}: best candidate {_passes(best)}{draft}"
    if status == OutcomeKind.GAVE_UP:
        reason = f": {_plain(detail)}" if detail else ""
        return f"❌ The model gave up{reason} — best candidate {_passes(best)}{draft}"
    if status == OutcomeKind.ERROR:
        reason = f": {_plain(detail)}" if detail else ""
        return f"⚠️ The run failed{reason}{draft}"
    if status == OutcomeKind.NOTHING_TO_DO:
        return (
            "✅ Nothing to do: every test already passes at the base commit, so no model was "
            "asked and no pull request opened"
        )
    if status == OutcomeKind.UNTRUSTED:
        reason = f": {_plain(detail)}" if detail else ""
        return f"❌ Not verified{reason} — best candidate {_passes(best)}{draft}"
    return f"ℹ️ {_plain(status)}{extra}"


def render_progress(
    *,
    run_id: str,
    iterations: Sequence[Iteration],
    budget: Budget,
    status: str,
    detail: str = "",
    pr_url: str | None = None,
    last_output: str | None = None,
) -> str:
    """The single progress comment on the issue, edited in place as the run goes."""
    parts = [
        PROGRESS_MARKER,
        "**tdd-agent** · "
        + _status_line(status, iterations=iterations, budget=budget, detail=detail, pr_url=pr_url),
    ]
    if iterations:
        parts.append(_table(iterations, changes=False))
    if pr_url:
        label = "Pull request" if str(status) == OutcomeKind.PASSED else "Draft pull request"
        parts.append(f"{label}: {pr_url}")
    failed = str(status) in {
        OutcomeKind.BUDGET_EXHAUSTED,
        OutcomeKind.GAVE_UP,
        OutcomeKind.ERROR,
        OutcomeKind.UNTRUSTED,
    }
    if failed and last_output and last_output.strip():
        output = clip(_sanitize(last_output).strip("\n"), PROGRESS_OUTPUT_CHARS)
        parts.append("Last test output:\n\n" + _fenced(output))
    tokens = sum(it.tokens for it in iterations)
    seconds = sum(it.seconds for it in iterations)
    cost = cost_words(sum(it.cost for it in iterations), tokens)
    parts.append(
        f"<sub>run {_code(run_id, 100)} · {tokens:,}/{budget.max_total_tokens:,} tokens · "
        f"{cost} · {_duration(seconds)}</sub>"
    )
    return _within("\n\n".join(parts), GITHUB_BODY_LIMIT)


# --- the pull request body ----------------------------------------------------------------


def _log_entries(iterations: Sequence[Iteration]) -> tuple[list[int], list[str], list[str]]:
    """(iteration numbers, <summary> texts, logs) for iterations that ran the tests."""
    numbers: list[int] = []
    summaries: list[str] = []
    logs: list[str] = []
    previous: tuple[int, TestResult] | None = None
    for it in iterations:
        if it.tests is None:
            continue
        numbers.append(it.number)
        summaries.append(f"Iteration {it.number} — {_counts(it.tests)}")
        if previous is not None and previous[1] == it.tests:
            # The loop reuses a result when the code did not change; say so, once.
            logs.append(f"(same test run as iteration {previous[0]}: the code did not change)")
        else:
            logs.append(_log(it.tests))
            previous = (it.number, it.tests)
    return numbers, summaries, logs


def _outcome_words(outcome: Outcome) -> str:
    return {
        OutcomeKind.PASSED: "all tests pass",
        OutcomeKind.BUDGET_EXHAUSTED: "budget exhausted",
        OutcomeKind.GAVE_UP: "the model gave up",
        OutcomeKind.ERROR: "error",
        OutcomeKind.NOTHING_TO_DO: "nothing to do: the tests already passed",
        OutcomeKind.UNTRUSTED: "not verified",
    }[outcome.kind]


def render_pr_body(
    *,
    issue_number: int,
    run_id: str,
    outcome: Outcome,
    budget: Budget,
    title: str,
    limit: int = GITHUB_BODY_LIMIT,
) -> str:
    """The PR description: link to the issue, outcome, iterations, and each test log."""
    result = outcome.result
    head = [pr_marker(issue_number=issue_number, run_id=run_id)]
    if outcome.passed:
        head.append(f"Closes #{issue_number}")
        head.append(
            f"✅ **All tests pass** ({_counts(result) if result else 'no result'}). "
            f"Written by tdd-agent for “{_plain(title, 200)}”."
        )
    else:
        head.append(f"Related to #{issue_number}")
        head.append(
            "> [!WARNING]\n"
            f"> **The tests do not pass.** This draft holds the best candidate the agent "
            f"found: it {_passes(result)} tests. It stopped because: {_plain(outcome.reason)}.\n"
            "> Review it as a starting point, or comment `/retry` with guidance."
        )
    summary = "\n".join(
        [
            "## Summary",
            "",
            f"- **Outcome:** {_outcome_words(outcome)}",
            f"- **Tests on this code:** {_tests_cell(result)}",
            f"- **Iterations:** {len(outcome.iterations)}/{budget.max_iterations}",
            f"- **Tokens:** {outcome.tokens:,}/{budget.max_total_tokens:,}",
            f"- **Cost:** {cost_words(outcome.cost, outcome.tokens)}",
            f"- **Time:** {_duration(outcome.elapsed)}",
            "- **Files:** " + (", ".join(_code(p, 100) for p in sorted(outcome.files)) or "none"),
            f"- **Run:** {_code(run_id, 100)}",
        ]
    )
    table = "## Iterations\n\n" + (
        _table(outcome.iterations, changes=True) if outcome.iterations else "No iterations ran."
    )
    proof = render_outcome_proof(outcome)
    numbers, summaries, logs = _log_entries(outcome.iterations)

    def render(current: list[str], clipped: list[int]) -> str:
        parts = list(head)
        if clipped:
            parts.append(
                _clipped_note(clipped, "GitHub's size limit; the full logs are in the check run.")
            )
        parts.append(summary)
        if proof:
            parts.append("## Proof: red → green\n\n" + proof)
        parts.append(table)
        if current:
            parts.append("## Test output")
            parts += [_details(s, _fenced(log)) for s, log in zip(summaries, current, strict=True)]
        return "\n\n".join(parts) + "\n"

    return _fit(render, numbers, logs, limit=limit, note=CLIPPED_LOG)


# --- the check run ------------------------------------------------------------------------


def render_outcome_proof(outcome: Outcome) -> str:
    """The verification's red → green table, or "" when no verification ran."""
    proof = outcome.proof
    if proof is None:
        return ""
    base = outcome.base.outcomes if outcome.base is not None else None
    text = render_proof(
        proof_rows(base, proof.verdict.outcomes),
        command=proof.result.command,
        python=proof.result.versions.get("python", "?"),
        pytest=proof.result.versions.get("pytest", "?"),
        exit_code=proof.result.exit_code,
        hashes=proof.hashes,
        unchanged=proof.unchanged,
    )
    if not proof.verdict.passed:
        text = f"> [!CAUTION]\n> {_plain(proof.verdict.reason, 500)}\n\n{text}"
    return text


def render_check_run(*, outcome: Outcome) -> dict[str, str]:
    """Output and conclusion for the `tdd-agent / tests` check run: every iteration's log."""
    result = outcome.result
    if outcome.passed:
        title = f"All tests pass ({_counts(result)})" if result else "All tests pass"
    else:
        title = f"Tests fail: best candidate {_passes(result)} ({_outcome_words(outcome)})"
    summary = "\n\n".join(
        [
            f"**{title}** — {_plain(outcome.reason)}",
            f"{len(outcome.iterations)} iterations · {outcome.tokens:,} tokens · "
            f"{cost_words(outcome.cost, outcome.tokens)} · {_duration(outcome.elapsed)}",
            render_outcome_proof(outcome),
            _table(outcome.iterations, changes=True) if outcome.iterations else "",
        ]
    ).strip()
    numbers, summaries, logs = _log_entries(outcome.iterations)

    def render(current: list[str], clipped: list[int]) -> str:
        parts = [_clipped_note(clipped, "the check run's size limit.")] if clipped else []
        parts += [f"### {s}\n\n{_fenced(log)}" for s, log in zip(summaries, current, strict=True)]
        return "\n\n".join(parts) if parts else "No test runs."

    text = _fit(render, numbers, logs, limit=CHECK_RUN_TEXT_LIMIT, note=CHECK_RUN_CLIPPED_LOG)
    return {
        "title": title[:200],
        "summary": _within(summary, CHECK_RUN_TEXT_LIMIT),
        "text": text,
        "conclusion": "success" if outcome.passed else "failure",
    }


# --- short messages -----------------------------------------------------------------------


def _login(user: str) -> str:
    # GitHub logins are letters, digits and hyphens (bots add `[bot]`); anything else is cut.
    return re.sub(r"[^A-Za-z0-9\-\[\]]", "", user)


def _run_ref(run_url_or_id: str) -> str:
    if run_url_or_id.startswith(("https://", "http://")):
        return f"[this run]({run_url_or_id})"
    return f"run {_code(run_url_or_id, 100)}"


def permission_denied_message(user: str) -> str:
    """The reply when someone without write access tries to start a run."""
    return (
        f"Thanks, @{_login(user)}! Only people with write access to this repository can "
        "start tdd-agent, so I haven't started a run. A maintainer can start one for you."
    )


def already_running_message(run_url_or_id: str) -> str:
    """The reply when a run for this issue or PR is still going."""
    return (
        f"⏳ tdd-agent is already working on this ({_run_ref(run_url_or_id)}). Its progress "
        "comment updates as it goes; start another run once it has finished."
    )


def retry_started_message(*, run_url_or_id: str, guidance: str | None = None) -> str:
    """The reply to a `/retry` comment: a new run started, with the guidance it got."""
    text = f"🔁 Retrying ({_run_ref(run_url_or_id)})"
    if guidance and guidance.strip():
        quoted = "\n".join(f"> {_plain(line, 1000)}" for line in guidance.strip().splitlines())
        return f"{text} with this guidance:\n\n{quoted}"
    return text + ". Add text after `/retry` to give the agent guidance."


def failure_message(*, reason: str, run_url_or_id: str, trigger_label: str | None = None) -> str:
    """The comment when a run ends without a pull request (the bot or a service failed)."""
    again = (
        f"remove and re-apply the `{trigger_label}` label" if trigger_label else "comment `/retry`"
    )
    return (
        f"⚠️ tdd-agent stopped without a result ({_run_ref(run_url_or_id)}): "
        f"{_plain(reason, 1000)}\n\nTo try again, {again}."
    )


def issue_problem_message(problem: str, trigger_label: str) -> str:
    """The comment when the issue cannot become a task (an IssueError's message)."""
    return (
        f"⚠️ I can't start on this issue yet: {problem}\n\n"
        f"Edit the issue, then remove and re-apply the `{trigger_label}` label."
    )


def daily_cap_message(*, spent: float, cap: float, seconds_left: float, trigger_label: str) -> str:
    """The reply when the installation's daily spending cap stops a run from starting."""
    hours, minutes = int(seconds_left // 3600), int(seconds_left % 3600 // 60)
    return (
        f"⏸️ tdd-agent has reached its daily spending cap for this installation "
        f"({usd(spent)} of {usd(cap)} today, UTC), so I haven't started a run. Runs can start "
        f"again after 00:00 UTC, in about {hours} h {minutes} min: apply the "
        f"`{_plain(trigger_label, 50)}` label again then."
    )
