"""The loop's two kinds of step, run directly or through the run journal."""

from __future__ import annotations

import time
from typing import Any

from bot.agent.model import ModelClient, Reply, reply_summary
from bot.journal import RunJournal
from bot.sandbox.base import Sandbox, TestResult, Workspace


class DirectSteps:
    """Steps without a journal: for tests of the loop and one-off runs."""

    def __init__(self, model: ModelClient, sandbox: Sandbox) -> None:
        self._model = model
        self._sandbox = sandbox

    def model(self, request: dict[str, Any]) -> tuple[Reply, float, bool]:
        t0 = time.monotonic()
        reply = self._model.complete(request)
        return reply, time.monotonic() - t0, False

    def tests(self, workspace: Workspace) -> tuple[TestResult, float, bool]:
        t0 = time.monotonic()
        result = self._sandbox.run_tests(workspace)
        return result, time.monotonic() - t0, False


class JournaledSteps:
    """Every model call and sandbox run recorded; a resumed run replays finished ones."""

    def __init__(self, journal: RunJournal, model: ModelClient, sandbox: Sandbox) -> None:
        self.journal = journal
        self._model = model
        self._sandbox = sandbox

    def model(self, request: dict[str, Any]) -> tuple[Reply, float, bool]:
        def call() -> tuple[Reply, dict[str, Any]]:
            reply = self._model.complete(request)
            return reply, {
                "tokens": reply["usage"]["total_tokens"],
                "prompt_tokens": reply["usage"]["prompt_tokens"],
                "latency": reply.get("latency", 0.0),
                "summary": reply_summary(reply),
                "messages": len(request["messages"]),
            }

        step = self.journal.step("model", request, call)
        return step.output, step.duration, step.replayed

    def tests(self, workspace: Workspace) -> tuple[TestResult, float, bool]:
        def call() -> tuple[dict[str, Any], dict[str, Any]]:
            result = self._sandbox.run_tests(workspace)
            return result.to_dict(), {"summary": result.summary(), "files": len(workspace)}

        step = self.journal.step("sandbox", workspace, call)
        return TestResult.from_dict(step.output), step.duration, step.replayed
