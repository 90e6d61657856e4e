"""The loop's two kinds of step, run directly or through the run journal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bot.agent.model import ModelClient, ModelReply, ModelRequest
from bot.journal import RunJournal
from bot.pricing import Price
from bot.sandbox.base import Sandbox, TestResult, Workspace

T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A step's value, the seconds it took (as recorded, when replayed), and whether the
    journal replayed it instead of running it."""

    value: T
    seconds: float
    replayed: bool = False


class DirectSteps:
    """Steps without a journal: for tests of the loop and one-off runs."""

    def __init__(self, model: ModelClient, sandbox: Sandbox) -> None:
        self._model = model
        self._sandbox = sandbox

    def model(self, request: ModelRequest) -> Timed[ModelReply]:
        t0 = time.monotonic()
        reply = self._model.complete(request)
        return Timed(reply, time.monotonic() - t0)

    def tests(self, workspace: Workspace) -> Timed[TestResult]:
        t0 = time.monotonic()
        result = self._sandbox.run_tests(workspace)
        return Timed(result, time.monotonic() - t0)


class JournaledSteps:
    """Every model call and sandbox run recorded; a resumed run replays finished ones."""

    def __init__(
        self,
        journal: RunJournal,
        model: ModelClient,
        sandbox: Sandbox,
        *,
        price: Price | None = None,
        sandbox_usd_per_second: float = 0.0,
    ) -> None:
        self.journal = journal
        self._sandbox_rate = sandbox_usd_per_second
        self._model = model
        self._sandbox = sandbox
        self._price = price

    def model(self, request: ModelRequest) -> Timed[ModelReply]:
        def call() -> tuple[dict[str, Any], dict[str, Any]]:
            reply = self._model.complete(request)
            usage = reply.usage
            cost = (
                self._price.cost(usage.prompt_tokens, usage.completion_tokens) if self._price else 0
            )
            return reply.to_dict(), {
                "cost_usd": round(cost, 8),
                "tokens": reply.usage.total_tokens,
                "prompt_tokens": reply.usage.prompt_tokens,
                "latency": reply.latency,
                "summary": reply.summary(),
                "messages": len(request.messages),
            }

        step = self.journal.step("model", request.to_dict(), call)
        return Timed(ModelReply.from_dict(step.output), step.duration, step.replayed)

    def tests(self, workspace: Workspace) -> Timed[TestResult]:
        def call() -> tuple[dict[str, Any], dict[str, Any]]:
            result = self._sandbox.run_tests(workspace)
            return result.to_dict(), {
                "summary": result.summary(),
                "files": len(workspace),
                "cost_usd": round(result.duration * self._sandbox_rate, 8),
            }

        step = self.journal.step("sandbox", workspace, call)
        return Timed(TestResult.from_dict(step.output), step.duration, step.replayed)
