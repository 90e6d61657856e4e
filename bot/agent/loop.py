"""The test-driven loop: model turn, dispatch its tool call, feed the result back, repeat.

The loop owns the budget; the model never decides when the run is over except by a
`finish` that the loop verifies. It does no I/O itself: the model and the sandbox come in
through `Steps` (journaled in production), progress goes out through a `Reporter`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from bot.agent.context import ContextPolicy, Task, Turn, build_request, render_test_output, shrunk
from bot.agent.model import Message, ModelReply, ModelRequest
from bot.agent.steps import Timed
from bot.agent.tools import EditRules, InvalidCall, Tool, Toolbox, ToolCall, apply_edit
from bot.journal import digest
from bot.pricing import Price, estimate_tokens, usd, worst_case_cost
from bot.sandbox.base import TestResult, Workspace
from bot.text import clip
from bot.verdict import Proof

MAX_SHRINK = 3
# Edits in a row that changed nothing (a refusal and two repeats of it) before the
# conversation starts over from the best candidate: debugging ability falls off after 2-3
# failed attempts, and a fresh start recovers it.
NO_PROGRESS_LIMIT = 3
RESTART_TEMPERATURE_STEP = 0.3
TARGET_CHARS = 3000


class OutcomeKind(StrEnum):
    PASSED = "passed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    GAVE_UP = "gave_up"
    ERROR = "error"
    # Every test passed before the model was asked anything: there is nothing to write.
    NOTHING_TO_DO = "nothing_to_do"
    # The loop's run was green but the verification run could not confirm it.
    UNTRUSTED = "untrusted"


@dataclass(frozen=True)
class Budget:
    """Limits the loop enforces. Wall time counts time spent in steps (model and sandbox)."""

    max_iterations: int = 8
    max_total_tokens: int = 200_000
    max_wall_seconds: float = 600.0
    max_invalid_replies: int = 3
    max_cost_usd: float | None = None  # None: no money cap

    def exceeded(
        self,
        *,
        iterations: int,
        tokens: int,
        elapsed: float,
        cost: float = 0.0,
        next_cost: float = 0.0,
    ) -> str | None:
        """Which limit is used up, or None. `next_cost` is the worst case of the next model
        call: a run never ends above its money cap."""
        if iterations >= self.max_iterations:
            return f"iterations ({iterations}/{self.max_iterations})"
        if tokens >= self.max_total_tokens:
            return f"tokens ({tokens}/{self.max_total_tokens})"
        if elapsed >= self.max_wall_seconds:
            return f"wall time ({elapsed:.0f}s/{self.max_wall_seconds:.0f}s)"
        if self.max_cost_usd is not None and cost + next_cost > self.max_cost_usd:
            return (
                f"cost ({usd(cost)} spent; the next call could cost up to {usd(next_cost)}, "
                f"over the cap of {usd(self.max_cost_usd)})"
            )
        return None


@dataclass(frozen=True)
class Iteration:
    """One model turn and what its tool call led to, for progress and reports."""

    number: int
    action: str
    note: str
    tokens: int
    seconds: float
    changed: tuple[str, ...] = ()
    tests: TestResult | None = None
    replayed: bool = False
    cost: float = 0.0  # US dollars of this turn's model call

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "tests"}
        data["changed"] = list(self.changed)
        data["tests"] = self.tests.to_dict() if self.tests else None
        return data


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str
    files: dict[str, str]  # the passing code, or the best candidate when not passing
    result: TestResult | None  # the tests' result on `files`
    last_result: TestResult | None
    iterations: tuple[Iteration, ...]
    tokens: int
    elapsed: float
    base: TestResult | None = None  # the tests at the base commit, before any model turn
    cost: float = 0.0  # US dollars of model calls (0 when the model's price is unknown)
    proof: Proof | None = None  # the verification run that confirmed (or refuted) a pass

    @property
    def passed(self) -> bool:
        return self.kind is OutcomeKind.PASSED


class Steps(Protocol):
    """The loop's only I/O: a model turn and a sandbox run, each returning its duration."""

    def model(self, request: ModelRequest) -> Timed[ModelReply]: ...

    def tests(self, workspace: Workspace) -> Timed[TestResult]: ...


class Reporter(Protocol):
    def iteration_started(self, number: int, budget: Budget) -> None: ...

    def iteration_done(self, iteration: Iteration, budget: Budget) -> None: ...


class NullReporter:
    def iteration_started(self, number: int, budget: Budget) -> None:
        pass

    def iteration_done(self, iteration: Iteration, budget: Budget) -> None:
        pass


@dataclass
class _State:
    files: dict[str, str]
    turns: list[Turn] = field(default_factory=list)
    iterations: list[Iteration] = field(default_factory=list)
    tokens: int = 0
    elapsed: float = 0.0
    cost: float = 0.0
    invalid_streak: int = 0
    # Refused or unchanged edits in a row: weak models repeat a refused call verbatim.
    no_progress: int = 0
    last_edit: str | None = None  # digest of the previous edit call
    restarts: int = 0
    last: tuple[str, TestResult] | None = None  # (files digest, result)
    best: tuple[tuple[int, int], dict[str, str], TestResult] | None = None
    base: TestResult | None = None


def score(result: TestResult) -> tuple[int, int]:
    """How good a candidate is: more tests passing, then fewer failing."""
    return (result.passed, -(result.failed + result.errors))


def _assistant_message(call: ToolCall) -> Message:
    return {
        "role": "assistant",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
        ],
    }


def _invalid_turn(reply: ModelReply, invalid: InvalidCall) -> Turn:
    # The broken call itself is not echoed back: its arguments may not be valid JSON, which
    # Groq would reject in the next request. Its text (if any) and the error are enough.
    assistant = None
    if reply.content:
        assistant = {"role": "assistant", "content": reply.content[:2000]}
    return Turn(assistant, invalid.message, "(an invalid reply was rejected)", None)


class _Runner:
    def __init__(
        self,
        task: Task,
        steps: Steps,
        *,
        budget: Budget,
        policy: ContextPolicy,
        model: str,
        max_tokens: int,
        temperature: float,
        reporter: Reporter,
        initial_files: dict[str, str] | None,
        rules: EditRules | None = None,
        price: Price | None = None,
        sandbox_usd_per_second: float = 0.0,
    ) -> None:
        self.task = task
        self.steps = steps
        self.budget = budget
        self.policy = policy
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.price = price
        self.sandbox_rate = sandbox_usd_per_second
        self.reporter = reporter
        self.rules = rules or EditRules(tests=frozenset(task.tests))
        self.state = _State(files=dict(initial_files or {}))
        self._mark = (0, 0, 0.0, 0.0)
        self._replayed = False

    def workspace(self) -> Workspace:
        return {**(self.task.context_files or {}), **self.state.files, **self.task.tests}

    def run_tests(self) -> TestResult:
        """Test the current files, reusing the last result when nothing changed."""
        files_digest = digest(self.state.files)
        if self.state.last is not None and self.state.last[0] == files_digest:
            return self.state.last[1]
        step = self.steps.tests(self.workspace())
        result = step.value
        self.state.elapsed += step.seconds
        self.state.cost += step.seconds * self.sandbox_rate
        self.state.last = (files_digest, result)
        best = self.state.best
        if best is None or score(result) > best[0]:
            self.state.best = (score(result), dict(self.state.files), result)
        return result

    def request(self, level: int = 0) -> ModelRequest:
        return build_request(
            self.task,
            self.state.turns,
            shrunk(self.policy, level),
            tools=TOOLS,
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )

    def ask_model(self) -> ModelReply:
        """One model turn; a 413 shrinks the context and asks again."""
        for level in range(MAX_SHRINK + 1):
            step = self.steps.model(self.request(level))
            reply, self._replayed = step.value, step.replayed
            self.state.elapsed += step.seconds
            self.state.tokens += reply.usage.total_tokens
            if self.price is not None:
                usage = reply.usage
                self.state.cost += self.price.cost(usage.prompt_tokens, usage.completion_tokens)
            if not reply.too_large:
                break
        return reply

    def prompt_tokens(self) -> int:
        """The next request's size before sending it (a generous estimate)."""
        return estimate_tokens(json.dumps(self.request().to_dict(), ensure_ascii=False))

    def outcome(self, kind: OutcomeKind, reason: str) -> Outcome:
        s = self.state
        last = s.last[1] if s.last else None
        if kind is OutcomeKind.PASSED or s.best is None:
            files, result = s.files, last
        else:
            _, files, result = s.best
        return Outcome(
            kind,
            reason,
            files,
            result,
            last,
            tuple(s.iterations),
            s.tokens,
            s.elapsed,
            s.base,
            cost=s.cost,
        )

    def red_run(self) -> Outcome | None:
        """The tests at the base commit, before any model turn: the red of red → green."""
        base = self.state.base = self.run_tests()
        if base.ok:
            return self.outcome(
                OutcomeKind.NOTHING_TO_DO, "every test already passes at the base commit"
            )
        # The model starts from what the tests say today, like a developer would.
        observed = self._tested(base, "The tests at the start, before any change:")
        self.state.turns.append(Turn(None, observed, f"at the start: {base.summary()}", None))
        return None

    def loop(self) -> Outcome:
        s = self.state
        ended = self.red_run()
        if ended is not None:
            return ended
        while True:
            prompt = self.prompt_tokens()
            if not s.iterations and prompt > self.budget.max_total_tokens:
                return self.outcome(
                    OutcomeKind.BUDGET_EXHAUSTED,
                    f"budget exhausted: the prompt alone is about {prompt:,} tokens, over the "
                    f"budget of {self.budget.max_total_tokens:,} (MAX_TOTAL_TOKENS); shorten "
                    "the task or the tests, or raise the budget",
                )
            limit = self.budget.exceeded(
                iterations=len(s.iterations),
                tokens=s.tokens,
                elapsed=s.elapsed,
                cost=s.cost,
                next_cost=worst_case_cost(
                    self.price, prompt_tokens=prompt, max_tokens=self.max_tokens
                ),
            )
            if limit:
                return self.outcome(OutcomeKind.BUDGET_EXHAUSTED, f"budget exhausted: {limit}")
            number = len(s.iterations) + 1
            self.reporter.iteration_started(number, self.budget)
            self._mark = (number, s.tokens, s.elapsed, s.cost)
            reply = self.ask_model()
            if reply.too_large:
                return self.outcome(
                    OutcomeKind.ERROR, "the request is too large for the model even when shrunk"
                )
            # A reply that is only a python block is the target's new content (models
            # without tool calling answer that way).
            parsed = TOOLS.parse(reply, fallback_path=self.task.target)
            if isinstance(parsed, InvalidCall):
                s.invalid_streak += 1
                s.turns.append(_invalid_turn(reply, parsed))
                self._record("invalid reply", parsed.message)
                if s.invalid_streak >= self.budget.max_invalid_replies:
                    return self.outcome(
                        OutcomeKind.ERROR,
                        f"the model made {s.invalid_streak} invalid replies in a row",
                    )
                continue
            s.invalid_streak = 0
            ended = self.dispatch(parsed)
            if ended is not None:
                return ended
            if s.no_progress >= NO_PROGRESS_LIMIT:
                self.restart()

    def _record(
        self,
        action: str,
        note: str,
        *,
        changed: tuple[str, ...] = (),
        tests: TestResult | None = None,
    ) -> None:
        number, tokens0, elapsed0, cost0 = self._mark
        it = Iteration(
            number=number,
            action=action,
            note=note,
            tokens=self.state.tokens - tokens0,
            seconds=self.state.elapsed - elapsed0,
            cost=self.state.cost - cost0,
            replayed=self._replayed,
            changed=changed,
            tests=tests,
        )
        self.state.iterations.append(it)
        self.reporter.iteration_done(it, self.budget)

    def dispatch(self, call: ToolCall) -> Outcome | None:
        """Carry out one tool call; an Outcome when it ends the run."""
        handler = TOOLS.handler(call)
        return handler(self, call, _assistant_message(call), TOOLS.describe(call))

    def _observe(self, assistant: Message, text: str, summary: str, call_id: str) -> None:
        self.state.turns.append(Turn(assistant, text, summary, call_id))

    def _tested(self, result: TestResult, prefix: str = "") -> str:
        observed = render_test_output(result, limit=self.policy.observation_chars)
        return f"{prefix}\n\n{observed}" if prefix else observed

    def target_view(self) -> str:
        """The target as it stands, with line numbers: repair turns must edit what exists."""
        target = self.task.target
        content = self.state.files.get(target)
        if content is None:
            return f"{target} does not exist yet: create it with write_file."
        numbered = "\n".join(f"{i:4} | {line}" for i, line in enumerate(content.splitlines(), 1))
        return f"Current content of {target}:\n{clip(numbered, TARGET_CHARS)}"

    def edit(self, call: ToolCall, assistant: Message, action: str) -> Outcome | None:
        s = self.state
        call_digest = digest([call.name, call.arguments])
        repeated = call_digest == s.last_edit
        s.last_edit = call_digest
        edit = apply_edit(s.files, call, rules=self.rules)
        if not edit.applied:
            s.no_progress += 1
            message = edit.message
            if repeated:
                message = (
                    "You repeated your previous call exactly, and it was refused again for the "
                    f"same reason. Do something different.\n{message}"
                )
            self._observe(
                assistant, f"{message}\n\n{self.target_view()}", f"{action}: refused", call.id
            )
            self._record(action, f"refused: {edit.message}")
            return None
        s.no_progress = 0
        changed = tuple(p for p in edit.files if edit.files[p] != s.files.get(p))
        s.files = edit.files
        note = edit.message
        target = self.task.target
        if target not in changed and target not in s.files:
            note += (
                f" Note: the tests import {target}, which does not exist yet; "
                f"the code must go into {target}."
            )
        result = self.run_tests()
        observed = self._tested(result, note)
        if not result.ok:
            observed += f"\n\n{self.target_view()}"
        self._observe(assistant, observed, f"{action}: {result.summary()}", call.id)
        self._record(action, edit.message, changed=changed, tests=result)
        return self.outcome(OutcomeKind.PASSED, "all tests pass") if result.ok else None

    def restart(self) -> None:
        """Start the conversation over from the best candidate, a little more adventurous."""
        s = self.state
        s.restarts += 1
        s.no_progress = 0
        s.last_edit = None
        if s.best is not None:
            s.files = dict(s.best[1])
        result = s.best[2] if s.best is not None else s.last[1] if s.last else None
        self.temperature = min(self.temperature + RESTART_TEMPERATURE_STEP, 1.0)
        text = (
            "Starting over: the last attempts changed nothing. Here is the best candidate so "
            f"far and its test output.\n\n{self.target_view()}"
        )
        if result is not None:
            text += "\n\n" + self._tested(result)
        s.turns = [Turn(None, text, "started over from the best candidate", None)]

    def read(self, call: ToolCall, assistant: Message, action: str) -> Outcome | None:
        path = call.arguments["path"]
        content = self.workspace().get(path)
        text = content if content is not None else f"{path} does not exist."
        self._observe(assistant, text, f"read {path}", call.id)
        self._record(action, f"read {path}")
        return None

    def test(self, call: ToolCall, assistant: Message, action: str) -> Outcome | None:
        result = self.run_tests()
        self._observe(assistant, self._tested(result), f"run_tests: {result.summary()}", call.id)
        self._record(action, result.summary(), tests=result)
        return self.outcome(OutcomeKind.PASSED, "all tests pass") if result.ok else None

    def finish(self, call: ToolCall, assistant: Message, action: str) -> Outcome | None:
        summary = str(call.arguments.get("summary", ""))[:500]
        if call.arguments.get("give_up"):
            self._record(action, summary)
            return self.outcome(OutcomeKind.GAVE_UP, f"the model gave up: {summary}")
        # "Done" is the harness's call: the tests run again and must pass.
        result = self.run_tests()
        if result.ok:
            self._record(action, summary, tests=result)
            return self.outcome(OutcomeKind.PASSED, "all tests pass")
        refusal = "finish refused: the tests do not pass yet. Keep working."
        self._observe(
            assistant, self._tested(result, refusal), f"finish refused: {result.summary()}", call.id
        )
        self._record(action, "finish refused: tests fail", tests=result)
        return None


Handler = Callable[[_Runner, ToolCall, Message, str], Outcome | None]
_PATH = {"type": "string", "description": "Path relative to the repository root, e.g. {target}"}

TOOLS: Toolbox[Handler] = Toolbox(
    [
        Tool(
            "write_file",
            "write_file(path, content)",
            "Create or replace a whole file; the code under test goes into {target}. The "
            "tests run automatically afterwards.",
            {"path": _PATH, "content": {"type": "string", "description": "The whole file"}},
            _Runner.edit,
            required=("path", "content"),
            describe=lambda a: (
                f"write_file {a['path']} ({str(a['content']).count(chr(10)) + 1} lines)"
            ),
        ),
        Tool(
            "replace_in_file",
            "replace_in_file(path, old, new)",
            "Replace one exact snippet that appears once in an existing file. The tests run "
            "automatically afterwards.",
            {
                "path": _PATH,
                "old": {"type": "string", "description": "Exact text, appearing once"},
                "new": {"type": "string", "description": "Replacement text"},
            },
            _Runner.edit,
            required=("path", "old", "new"),
            describe=lambda a: f"replace_in_file {a['path']}",
        ),
        Tool(
            "read_file",
            "read_file(path)",
            "Read a file of the workspace (candidate code, tests or repository files).",
            {"path": _PATH},
            _Runner.read,
            required=("path",),
            describe=lambda a: f"read_file {a['path']}",
        ),
        Tool(
            "run_tests",
            "run_tests()",
            "Run the test suite on the current files.",
            {},
            _Runner.test,
        ),
        Tool(
            "finish",
            "finish(summary, give_up)",
            "Say you are done. Accepted only if the tests pass when re-run; set give_up to "
            "true if you cannot make them pass.",
            {"summary": {"type": "string"}, "give_up": {"type": "boolean"}},
            _Runner.finish,
            required=("summary",),
            describe=lambda a: "finish (give up)" if a.get("give_up") else "finish",
        ),
    ]
)


def solve(
    task: Task,
    steps: Steps,
    *,
    budget: Budget,
    policy: ContextPolicy,
    model: str,
    max_tokens: int = 4096,
    temperature: float = 0.2,
    reporter: Reporter | None = None,
    initial_files: dict[str, str] | None = None,
    rules: EditRules | None = None,
    price: Price | None = None,
    sandbox_usd_per_second: float = 0.0,
) -> Outcome:
    """Run the loop until the tests pass, the model gives up, or the budget runs out."""
    runner = _Runner(
        task,
        steps,
        budget=budget,
        policy=policy,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        reporter=reporter or NullReporter(),
        initial_files=initial_files,
        rules=rules,
        price=price,
        sandbox_usd_per_second=sandbox_usd_per_second,
    )
    return runner.loop()
