"""Money: the price table, its overrides and the arithmetic, as plain values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.agent.loop import Budget
from bot.errors import ConfigError
from bot.pricing import GROQ_PRICES, Price, cost_words, price_table, usd, worst_case_cost


def test_a_price_is_dollars_per_million_tokens_with_cached_input_where_billed() -> None:
    price = Price(input=1.0, output=2.0, cached_input=0.5)
    assert price.cost(1_000_000, 500_000) == pytest.approx(2.0)
    assert price.cost(1_000_000, 0, cached_tokens=400_000) == pytest.approx(0.6 + 0.2)
    assert Price(1.0, 2.0).cost(1_000_000, 0, cached_tokens=400_000) == pytest.approx(1.0)


def test_the_shipped_table_covers_groqs_production_models() -> None:
    for model in ("openai/gpt-oss-120b", "openai/gpt-oss-20b", "llama-3.3-70b-versatile"):
        assert GROQ_PRICES[model].input > 0 and GROQ_PRICES[model].output > 0


def test_model_prices_override_from_json_or_a_file(tmp_path: Path) -> None:
    override = {
        "openai/gpt-oss-120b": {"input": 9, "output": 10},
        "local": {"input": 0, "output": 0},
    }
    table = price_table(json.dumps(override))
    assert table["openai/gpt-oss-120b"] == Price(9.0, 10.0)
    assert table["local"] == Price(0.0, 0.0) and "llama-3.1-8b-instant" in table
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"mine": {"input": 1, "output": 2, "cached_input": 0.1}}))
    assert price_table(str(path))["mine"] == Price(1.0, 2.0, 0.1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "JSON object"),
        ('{"m": 3}', "must be"),
        ('{"m": {"input": "x", "output": 1}}', "needs numbers"),
        ('{"m": {"input": -1, "output": 1}}', "negative"),
        ("/no/such/prices.json", "cannot read"),
    ],
)
def test_bad_model_prices_are_clear_configuration_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        price_table(value)


def test_the_cost_cap_counts_the_next_calls_worst_case() -> None:
    price = Price(input=10.0, output=30.0)
    worst = worst_case_cost(price, prompt_tokens=10_000, max_tokens=4096)
    assert worst == pytest.approx(0.1 + 0.12288)
    budget = Budget(max_cost_usd=0.5)
    assert budget.exceeded(iterations=0, tokens=0, elapsed=0, cost=0.2, next_cost=worst) is None
    limit = budget.exceeded(iterations=1, tokens=1, elapsed=0, cost=0.3, next_cost=worst)
    assert limit is not None and limit.startswith("cost") and "$0.5000" in limit
    assert worst_case_cost(None, prompt_tokens=10**9, max_tokens=10**6) == 0


def test_cost_words_say_when_the_price_is_unknown() -> None:
    assert usd(0.0123) == "$0.0123" and usd(12.5) == "$12.50"
    assert cost_words(0.0, tokens=1200) == "price unknown"
    assert cost_words(0.0, tokens=0) == "$0"
