"""What a run costs in money: a price table per model and the arithmetic on it (pure).

Prices are US dollars per million tokens, as the provider bills them. The shipped table
holds Groq's production models at their published on-demand prices (check
https://groq.com/pricing before relying on them); an operator overrides or extends it
with MODEL_PRICES (JSON, or the path of a JSON file). A model without a price costs 0 and
is reported as "price unknown", never guessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ConfigError


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # where the provider bills cache hits differently

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens, prompt_tokens) if self.cached_input is not None else 0
        fresh = prompt_tokens - cached
        rate_cached = self.cached_input if self.cached_input is not None else self.input
        return (
            fresh * self.input + cached * rate_cached + completion_tokens * self.output
        ) / 1_000_000


GROQ_PRICES: dict[str, Price] = {
    "openai/gpt-oss-120b": Price(0.15, 0.60, cached_input=0.075),
    "openai/gpt-oss-20b": Price(0.075, 0.30, cached_input=0.0375),
    "llama-3.3-70b-versatile": Price(0.59, 0.79),
    "llama-3.1-8b-instant": Price(0.05, 0.08),
}


def _price(name: str, value: object) -> Price:
    if not isinstance(value, Mapping):
        raise ConfigError(f'MODEL_PRICES: {name} must be {{"input": ..., "output": ...}}')
    try:
        price = Price(
            input=float(value["input"]),
            output=float(value["output"]),
            cached_input=float(value["cached_input"]) if "cached_input" in value else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"MODEL_PRICES: {name} needs numbers for input and output (USD per million "
            f'tokens), e.g. {{"input": 0.15, "output": 0.6}}: {exc}'
        ) from exc
    numbers = [price.input, price.output, price.cached_input or 0.0]
    if any(n < 0 or not math.isfinite(n) for n in numbers):
        raise ConfigError(f"MODEL_PRICES: {name} has a negative or infinite price")
    return price


def price_table(model_prices: str | None) -> dict[str, Price]:
    """The shipped table with MODEL_PRICES (JSON text, or the path of a JSON file) on top."""
    table = dict(GROQ_PRICES)
    if not model_prices or not model_prices.strip():
        return table
    text = model_prices.strip()
    if not text.startswith(("{", "[")):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"MODEL_PRICES: cannot read {model_prices}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"MODEL_PRICES is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError('MODEL_PRICES must be a JSON object: {"model": {"input", "output"}}')
    table.update({str(name): _price(str(name), value) for name, value in data.items()})
    return table


def worst_case_cost(price: Price | None, *, prompt_tokens: int, max_tokens: int) -> float:
    """The most the next call can cost: the whole prompt uncached and the longest answer."""
    if price is None:
        return 0.0
    return price.cost(prompt_tokens, max_tokens)


def estimate_tokens(text: str) -> int:
    """A generous token estimate (3 characters a token: code tokenizes densely)."""
    return len(text) // 3 + 1


def usd(amount: float) -> str:
    """`$0.0123`: enough digits for runs that cost a fraction of a cent."""
    if amount == 0:
        return "$0"
    return f"${amount:.4f}" if amount < 1 else f"${amount:,.2f}"


def cost_words(amount: float, tokens: int) -> str:
    """What a run cost, for people: `$0.0123`, or `price unknown` when tokens were free to us."""
    if amount == 0 and tokens > 0:
        return "price unknown"
    return usd(amount)
