"""Building the model's context: a stable prefix, then compacted history (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from bot.agent.model import Message, ModelRequest
from bot.agent.tools import Toolbox
from bot.sandbox.base import TestResult
from bot.text import clip

# Package data, so an installed wheel finds it; `{tools}` is filled from the tool registry.
SYSTEM_TEMPLATE = (files("bot.agent") / "prompts" / "system.md").read_text(encoding="utf-8")


def system_prompt(tools: Toolbox[Any], target: str = "the module the task names") -> str:
    return SYSTEM_TEMPLATE.replace("{tools}", tools.prompt_list(target))


@dataclass(frozen=True)
class Task:
    """What to solve: the task text, the read-only tests, and where the code goes."""

    text: str
    tests: dict[str, str]
    target: str
    # Files of the repository the tests may import (GitHub runs); read-only context.
    context_files: dict[str, str] | None = None
    title: str = ""
    new_tests: tuple[str, ...] = ()  # tests that come with the task, committed with the code

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tests": self.tests,
            "target": self.target,
            "context_files": sorted(self.context_files or {}),
            "title": self.title,
            "new_tests": list(self.new_tests),
        }


@dataclass(frozen=True)
class Turn:
    """One iteration as the model will see it again: its reply and what came back."""

    assistant: dict[str, Any] | None  # the assistant message, or None (no usable reply)
    observation: str  # full text sent back
    summary: str  # one line that replaces it once it is old
    call_id: str | None = None


@dataclass(frozen=True)
class ContextPolicy:
    keep_full: int = 2
    observation_chars: int = 4000


def render_test_output(result: TestResult, *, limit: int) -> str:
    """Test output for the model: a header (counts, failing ids), then clipped output."""
    lines = [f"Tests: {result.summary()}"]
    if result.timed_out:
        lines.append("The run was killed at the time limit: look for an endless loop.")
    if result.failing:
        shown = list(result.failing[:20])
        more = len(result.failing) - len(shown)
        lines.append("Failing: " + ", ".join(shown) + (f" (+{more} more)" if more else ""))
    if result.ok:
        lines.append("All tests pass.")
    return "\n".join(lines) + "\n\n" + clip(result.output.strip(), limit)


def first_message(task: Task) -> str:
    parts = [f"# Task\n\n{task.text.strip()}\n", f"Write the code in `{task.target}`."]
    if task.context_files:
        listing = "\n".join(f"- {p}" for p in sorted(task.context_files)[:200])
        parts.append(f"The repository has these files (read_file shows one):\n{listing}")
    for path, text in sorted(task.tests.items()):
        parts.append(f"# Tests: {path} (read-only)\n\n```python\n{text.rstrip()}\n```")
    return "\n\n".join(parts)


def shrunk(policy: ContextPolicy, level: int) -> ContextPolicy:
    """A smaller policy after a 413: fewer full observations, shorter ones."""
    if level <= 0:
        return policy
    return ContextPolicy(
        keep_full=max(policy.keep_full - level, 1),
        observation_chars=max(policy.observation_chars // (2 * level), 500),
    )


def build_messages(
    task: Task, turns: list[Turn], policy: ContextPolicy, *, tools: Toolbox[Any]
) -> list[Message]:
    """The full message list: stable prefix first so Groq's prefix cache hits."""
    messages: list[Message] = [
        {"role": "system", "content": system_prompt(tools, task.target)},
        {"role": "user", "content": first_message(task)},
    ]
    cutoff = len(turns) - policy.keep_full
    for i, turn in enumerate(turns):
        text = clip(turn.observation, policy.observation_chars) if i >= cutoff else turn.summary
        if turn.assistant is not None:
            messages.append(turn.assistant)
        if turn.call_id is not None:
            messages.append({"role": "tool", "tool_call_id": turn.call_id, "content": text})
        else:
            messages.append({"role": "user", "content": text})
    return messages


def build_request(
    task: Task,
    turns: list[Turn],
    policy: ContextPolicy,
    *,
    tools: Toolbox[Any],
    model: str,
    max_tokens: int,
    temperature: float = 0.2,
) -> ModelRequest:
    return ModelRequest(
        model=model,
        messages=tuple(build_messages(task, turns, policy, tools=tools)),
        tools=tools.schemas(task.target),
        max_tokens=max_tokens,
        temperature=temperature,
    )
