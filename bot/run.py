"""Running one task end to end under its journal: lease, loop, outcome recorded."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import redis

from bot.agent.context import ContextPolicy, Task
from bot.agent.loop import Budget, Outcome, OutcomeKind, Reporter, solve
from bot.agent.model import ModelClient
from bot.agent.steps import JournaledSteps
from bot.agent.tools import EditRules
from bot.errors import JournalMismatch, LeaseLost
from bot.journal import RunJournal, digest
from bot.pricing import Price
from bot.sandbox.base import RemoteSandbox, Sandbox, TestResult
from bot.sandbox.pytest_run import PytestConfig
from bot.verdict import Proof, judge, plant_canaries, static_test_counts, test_hashes


@dataclass(frozen=True)
class RunConfig:
    """What a run needs to know of the settings, as domain values."""

    budget: Budget = field(default_factory=Budget)
    policy: ContextPolicy = field(default_factory=ContextPolicy)
    model: str = "openai/gpt-oss-120b"
    max_tokens: int = 4096
    temperature: float = 0.2
    lease_seconds: float = 10.0
    # Import names the test environment provides: a candidate module may not shadow them.
    shadowed: frozenset[str] = frozenset()
    price: Price | None = None  # the model's price; None: unknown, runs cost 0
    sandbox_usd_per_second: float = 0.0  # what the sandbox backend bills (E2B), else 0


def edit_rules(task: Task, config: RunConfig, initial_files: dict[str, str] | None) -> EditRules:
    """The write rules for this task; the repository's own packages are its to change."""
    own = {PurePosixPath(p).parts[0].removesuffix(".py") for p in task.context_files or {}}
    own |= {PurePosixPath(p).parts[0].removesuffix(".py") for p in initial_files or {}}
    return EditRules(tests=frozenset(task.tests), shadowed=config.shadowed - own)


@dataclass(frozen=True)
class RunRequest:
    run_id: str
    task: Task
    source: str = "cli"
    initial_files: dict[str, str] | None = None
    # The repository's pytest configuration at the base commit (None: an empty one).
    pytest_config: PytestConfig | None = None


def execute(
    request: RunRequest,
    *,
    client: redis.Redis,
    model: ModelClient,
    sandbox: Sandbox,
    config: RunConfig,
    verifier: Callable[[], Sandbox] | None = None,
    reporter: Reporter | None = None,
    on_wait: Callable[[float], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> Outcome:
    """Run (or resume) `request` to its outcome, recording every step in the journal.

    A green loop is confirmed by a verification run in a fresh sandbox from `verifier`
    (none: trusted as is, for tests of the loop alone)."""
    journal = RunJournal(client, request.run_id, lease_seconds=config.lease_seconds)
    task_digest = digest(request.task.to_dict())
    journal.acquire(on_wait=on_wait)
    try:
        recorded_digest = journal.get_meta("task_digest")
        if recorded_digest is not None and recorded_digest != task_digest:
            raise JournalMismatch(
                f"run {request.run_id} was started with a different task or tests; "
                "use a new --run-id for a new task"
            )
        recorded = journal.recorded_steps
        if recorded and on_resume is not None:
            on_resume(recorded)
        meta: dict[str, object] = {}
        if isinstance(sandbox, RemoteSandbox):
            # Recorded so that a resumed run reattaches to the same remote sandbox.
            prior = journal.get_meta("sandbox_id")
            if prior:
                sandbox.attach(prior)
            meta["sandbox_id"] = sandbox.start()
        journal.set_meta(
            status="running",
            source=request.source,
            title=request.task.title or request.task.text.strip().splitlines()[0][:80],
            target=request.task.target,
            task_digest=task_digest,
            model=config.model,
            max_iterations=config.budget.max_iterations,
            resumed_at=time.time() if recorded else None,
            **meta,
        )
        try:
            outcome = solve(
                request.task,
                JournaledSteps(
                    journal,
                    model,
                    sandbox,
                    price=config.price,
                    sandbox_usd_per_second=config.sandbox_usd_per_second,
                ),
                budget=config.budget,
                policy=config.policy,
                model=config.model,
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                reporter=reporter,
                initial_files=request.initial_files,
                rules=edit_rules(request.task, config, request.initial_files),
                price=config.price,
                sandbox_usd_per_second=config.sandbox_usd_per_second,
            )
            if outcome.passed and verifier is not None:
                outcome = verified(outcome, request, journal, verifier)
        except LeaseLost:
            raise
        except Exception as exc:
            journal.set_meta(status=OutcomeKind.ERROR.value, reason=str(exc)[:1000])
            raise
        journal.set_meta(
            status=outcome.kind.value,
            reason=outcome.reason,
            iterations=len(outcome.iterations),
            tokens=outcome.tokens,
            cost_usd=round(outcome.cost, 8),
            price_known=config.price is not None,
            # What each turn did, refusals with their reasons, for `tdd-agent runs show`.
            log=[
                {
                    "n": it.number,
                    "action": it.action,
                    "note": it.note[:500],
                    "tests": it.tests.summary() if it.tests else None,
                }
                for it in outcome.iterations
            ],
            duration=round(outcome.elapsed, 3),
            files=outcome.files,
            result=outcome.result.to_dict() if outcome.result else None,
        )
        return outcome
    finally:
        journal.release()


def verified(
    outcome: Outcome, request: RunRequest, journal: RunJournal, verifier: Callable[[], Sandbox]
) -> Outcome:
    """Run the tests again in a fresh sandbox, with canaries the model never saw, and keep
    the pass only if that run's report can be trusted and every test passes in it.

    The canary token is drawn once per run and kept in the journal (never in the prompt or
    the workspace until this run), so a resumed run replays the same verification step.
    """
    token = journal.get_meta("canary_token")
    if token is None:
        token = secrets.token_hex(12)
        journal.set_meta(canary_token=token)
    tests = request.task.tests
    planted, canaries = plant_canaries(tests, token=token)
    workspace = {**(request.task.context_files or {}), **outcome.files, **planted}

    def run() -> tuple[dict[str, Any], dict[str, Any]]:
        sandbox = verifier()
        try:
            result = sandbox.run_tests(workspace)
        finally:
            sandbox.close()
        return result.to_dict(), {"summary": result.summary(), "files": len(workspace)}

    step = journal.step("verify", {"workspace": workspace}, run)
    result = TestResult.from_dict(step.output)
    verdict = judge(
        result.outcomes,
        canaries=canaries,
        minimum=static_test_counts(tests),
        exit_code=result.exit_code,
        collected=result.collected,
    )
    hashes = test_hashes(tests)
    # What ran is what the task holds: the planted files differ only by the appended canaries.
    unchanged = all(planted[p].startswith(tests[p]) for p in tests)
    proof = Proof(verdict=verdict, result=result, hashes=hashes, unchanged=unchanged)
    if verdict.passed and unchanged:
        return replace(outcome, proof=proof)
    reason = verdict.reason if not verdict.passed else "the test files changed during the run"
    if verdict.trusted and not verdict.passed:
        reason = f"the verification run did not pass: {reason}"
    return replace(outcome, kind=OutcomeKind.UNTRUSTED, reason=reason, proof=proof)


@dataclass
class Executor:
    """Runs requests under their journal: this process's model, a fresh sandbox per run."""

    redis: redis.Redis
    model: ModelClient
    new_sandbox: Callable[[PytestConfig | None], Sandbox]
    config: RunConfig
    # A fresh, cold sandbox per verification: nothing of the loop's runs carries over.
    new_verifier: Callable[[PytestConfig | None], Sandbox] | None = None

    @property
    def budget(self) -> Budget:
        return self.config.budget

    @property
    def installed(self) -> frozenset[str]:
        """Import names of the test environment's packages: never a target to write."""
        return self.config.shadowed

    def run(
        self,
        request: RunRequest,
        *,
        reporter: Reporter | None = None,
        on_wait: Callable[[float], None] | None = None,
        on_resume: Callable[[int], None] | None = None,
    ) -> Outcome:
        sandbox = self.new_sandbox(request.pytest_config)
        new_verifier = self.new_verifier
        verifier = (
            (lambda: new_verifier(request.pytest_config)) if new_verifier is not None else None
        )
        try:
            return execute(
                request,
                client=self.redis,
                model=self.model,
                sandbox=sandbox,
                config=self.config,
                verifier=verifier,
                reporter=reporter,
                on_wait=on_wait,
                on_resume=on_resume,
            )
        finally:
            sandbox.close()
