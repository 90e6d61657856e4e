"""Prompt tokens of a 10-iteration run: the project's context policy vs the full history.

The loop (`solve`) runs against the fake Groq, scripted with ten `write_file` calls whose
candidates all still fail some tests, so the run takes every iteration. Each candidate is
tested in the real local sandbox (once: both policies see the same outputs, several KB of
real pytest failures each). Prompt tokens are counted as the fake Groq reports them
(characters of the request's messages and tool schemas / 4), summed over the run.

Baseline: the full history every turn (`keep_full` and `observation_chars` unbounded).
Measured: `ContextPolicy(keep_full=2, observation_chars=4000)`, the project's defaults.

    uv run python -m bench.tokens [--iterations 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import groq

from bench.common import Report, Target, median, parser, ratio, run_main
from bot.agent.context import ContextPolicy, Task
from bot.agent.loop import Budget, solve
from bot.agent.model import GroqModel
from bot.agent.steps import DirectSteps
from bot.config import Settings
from bot.journal import digest
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.local import LocalSandbox
from tests.fakes import groq as g
from tests.fakes.groq import estimate_prompt_tokens

TARGET = 0.5
FULL_HISTORY = ContextPolicy(keep_full=10**6, observation_chars=10**9)

CASES = [
    (1, "I"),
    (3, "III"),
    (4, "IV"),
    (9, "IX"),
    (14, "XIV"),
    (40, "XL"),
    (44, "XLIV"),
    (90, "XC"),
    (400, "CD"),
    (944, "CMXLIV"),
    (1994, "MCMXCIV"),
    (2024, "MMXXIV"),
    (3999, "MMMCMXCIX"),
]
TESTS = f"""\
import pytest

from roman import from_roman, to_roman

CASES = {CASES!r}


@pytest.mark.parametrize("number, numeral", CASES)
def test_to_roman(number, numeral):
    assert to_roman(number) == numeral


@pytest.mark.parametrize("number, numeral", CASES)
def test_from_roman(number, numeral):
    assert from_roman(numeral) == number


@pytest.mark.parametrize("bad", [0, -1, 4000])
def test_out_of_range(bad):
    with pytest.raises(ValueError):
        to_roman(bad)


def test_first_twenty():
    expected = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X",
                "XI", "XII", "XIII", "XIV", "XV", "XVI", "XVII", "XVIII", "XIX", "XX"]
    assert [to_roman(n) for n in range(1, 21)] == expected


def test_round_trip():
    assert all(from_roman(to_roman(n)) == n for n in range(1, 4000))
"""
TASK_TEXT = (
    "Write `to_roman(number)` and `from_roman(numeral)` in roman.py for numbers 1..3999; "
    "anything else raises ValueError."
)
FULL_TABLE = [
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]
# What each scripted attempt gets wrong: subtractive pairs missing from its table, whether
# from_roman handles subtraction, whether the range is checked. Every attempt still fails.
ATTEMPTS = [
    ({"CM", "CD", "XC", "XL", "IX", "IV"}, False, False),
    ({"CM", "CD", "XC", "XL", "IX"}, False, False),
    ({"CM", "CD", "XC", "XL"}, False, False),
    ({"CM", "CD", "XC"}, False, False),
    ({"CM", "CD"}, False, False),
    ({"CM"}, False, False),
    ({"CM"}, True, False),
    (set(), False, True),
    (set(), True, False),
    ({"IV"}, True, True),
]


def candidate(attempt: int) -> str:
    """The source of scripted attempt `attempt` (a plausible, still wrong roman.py)."""
    missing, subtractive, checks_range = ATTEMPTS[attempt % len(ATTEMPTS)]
    table = [(v, s) for v, s in FULL_TABLE if s not in missing]
    guard = (
        "    if not 0 < number < 4000:\n        raise ValueError(f'out of range: {number}')\n"
        if checks_range
        else ""
    )
    parse = (
        "    total, prev = 0, 0\n"
        "    for ch in reversed(numeral):\n"
        "        value = VALUES[ch]\n"
        "        total += -value if value < prev else value\n"
        "        prev = max(prev, value)\n"
        "    return total\n"
        if subtractive
        else "    return sum(VALUES[ch] for ch in numeral)\n"
    )
    return (
        f'"""Roman numerals (attempt {attempt + 1})."""\n\n'
        f"TABLE = {table!r}\n"
        "VALUES = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n\n\n"
        "def to_roman(number):\n"
        f"{guard}"
        "    out = []\n"
        "    for value, symbol in TABLE:\n"
        "        while number >= value:\n"
        "            out.append(symbol)\n"
        "            number -= value\n"
        "    return ''.join(out)\n\n\n"
        "def from_roman(numeral):\n"
        f"{parse}"
    )


class MemoSandbox:
    """The real sandbox, run once per distinct workspace (both policies see the same files)."""

    def __init__(self) -> None:
        self.inner = LocalSandbox()
        self.results: dict[str, TestResult] = {}

    def run_tests(self, workspace: Workspace) -> TestResult:
        key = digest(workspace)
        if key not in self.results:
            self.results[key] = self.inner.run_tests(workspace)
        return self.results[key]

    def close(self) -> None:
        self.inner.close()


def run_policy(
    policy: ContextPolicy, iterations: int, sandbox: MemoSandbox
) -> tuple[list[int], Any]:
    """Prompt tokens of each model request of a scripted run under `policy`; the outcome."""
    task = Task(text=TASK_TEXT, tests={"test_roman.py": TESTS}, target="roman.py")
    script = [
        g.tool_call("write_file", {"path": "roman.py", "content": candidate(i)})
        for i in range(iterations)
    ]
    with g.FakeGroq(script) as fake:
        model = GroqModel(groq.Groq(api_key="gsk_bench", base_url=fake.url, max_retries=0))
        outcome = solve(
            task,
            DirectSteps(model, sandbox),
            budget=Budget(max_iterations=iterations, max_total_tokens=10**9),
            policy=policy,
            model=Settings.model_fields["groq_model"].default,
        )
        tokens = [estimate_prompt_tokens(r.json or {}) for r in fake.requests]
    if len(tokens) != iterations or outcome.passed:
        raise RuntimeError(
            f"expected {iterations} failing iterations, got {len(tokens)} ({outcome.reason})"
        )
    return tokens, outcome


def measure(args: argparse.Namespace) -> Report:
    defaults = Settings.model_fields
    policy = ContextPolicy(
        keep_full=defaults["keep_full_observations"].default,
        observation_chars=defaults["observation_chars"].default,
    )
    sandbox = MemoSandbox()
    totals: dict[str, list[int]] = {"policy": [], "full": []}
    per_turn: dict[str, list[int]] = {}
    outputs: list[int] = []
    try:
        for _ in range(args.repeat):  # deterministic: repeats only confirm it
            for key, pol in (("full", FULL_HISTORY), ("policy", policy)):
                tokens, outcome = run_policy(pol, args.iterations, sandbox)
                totals[key].append(sum(tokens))
                per_turn[key] = tokens
                outputs = [len(it.tests.output) for it in outcome.iterations if it.tests]
    finally:
        sandbox.close()

    full, ours = median(totals["full"]), median(totals["policy"])
    report = Report(
        benchmark="tokens",
        baseline="full history every turn (keep_full and observation_chars unbounded)",
        repeat=args.repeat,
        columns=["context", "prompt_tokens", "last_turn_tokens", "ratio_vs_full"],
    )
    report.rows += [
        {
            "context": "full history (baseline)",
            "prompt_tokens": full,
            "last_turn_tokens": per_turn["full"][-1],
            "ratio_vs_full": 1.0,
            "per_turn": per_turn["full"],
        },
        {
            "context": f"ContextPolicy(keep_full={policy.keep_full}, "
            f"observation_chars={policy.observation_chars})",
            "prompt_tokens": ours,
            "last_turn_tokens": per_turn["policy"][-1],
            "ratio_vs_full": ratio(ours, full),
            "per_turn": per_turn["policy"],
        },
    ]
    report.targets.append(
        Target("policy / full history prompt tokens", ratio(ours, full), "<=", TARGET)
    )
    report.notes += [
        f"{args.iterations} iterations, all failing; pytest output per run: "
        f"{min(outputs)}..{max(outputs)} chars (median {median(outputs):.0f})",
        "tokens = fake Groq's estimate: chars of messages + tool schemas / 4, per request",
    ]
    report.extra.update({"iterations": args.iterations, "output_chars": outputs})
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("tokens", __doc__.splitlines()[0], repeat=1)
    p.add_argument("--iterations", type=int, default=10, help="model turns in the scripted run")
    return run_main(measure, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
