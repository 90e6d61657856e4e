"""Any OpenAI-compatible server: the real `openai` client over loopback HTTP to a fake server,
in every way such servers deliver a tool call; errors and settings of both providers."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import groq
import openai
import pytest

from bot import wiring
from bot.agent.context import ContextPolicy, Task
from bot.agent.loop import TOOLS, Budget, OutcomeKind, solve
from bot.agent.model import GroqModel, ModelRequest
from bot.agent.openai_model import (
    PLACEHOLDER_API_KEY,
    Mode,
    OpenAICompatibleModel,
    request_body,
)
from bot.agent.steps import DirectSteps
from bot.agent.tools import ToolCall
from bot.config import DEFAULT_MODEL, load_settings
from bot.errors import (
    ConfigError,
    ModelAuthError,
    ModelContextTooLong,
    ModelError,
    ModelRateLimited,
    ModelServerError,
)
from bot.sandbox.local import LocalSandbox
from tests.fakes import groq as g
from tests.fakes import openai_compat as o

ROOT = Path(__file__).resolve().parents[1]
MODEL = "qwen2.5-coder:1.5b"
ROMAN = Task(
    text=(ROOT / "examples/roman/task.md").read_text(encoding="utf-8"),
    tests={"test_roman.py": (ROOT / "examples/roman/test_roman.py").read_text(encoding="utf-8")},
    target="roman.py",
)
GOOD = """\
_PAIRS = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
          (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]


def to_roman(n):
    if not isinstance(n, int) or not 1 <= n <= 3999:
        raise ValueError(f"out of range: {n!r}")
    out = []
    for value, numeral in _PAIRS:
        while n >= value:
            out.append(numeral)
            n -= value
    return "".join(out)


_ALL = {to_roman(i): i for i in range(1, 4000)}


def from_roman(s):
    if s not in _ALL:
        raise ValueError(f"not a roman numeral: {s!r}")
    return _ALL[s]
"""
# Round trips pass, nothing is validated: red on the "rejects" tests.
HALF = GOOD.replace('        raise ValueError(f"out of range: {n!r}")\n', "        pass\n").replace(
    "    if s not in _ALL:\n        raise", "    if False:\n        raise"
)
TEXT_PRESETS = ["json_block", "tool_call_tags", "bare", "doubled_braces"]
EXPECTED_MODE = {
    "native": Mode.NATIVE,
    **dict.fromkeys(TEXT_PRESETS, Mode.TEXT),
    "json_schema": Mode.JSON_SCHEMA,
    "no_tools_schema": Mode.JSON_SCHEMA,
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LocalSandbox]:
    box = LocalSandbox()
    yield box
    box.close()


def provider(
    fake: o.FakeOpenAICompat,
    *,
    mode: Mode | None = None,
    api_key: str = PLACEHOLDER_API_KEY,
    timeout: float = 10.0,
    max_retries: int = 2,
) -> OpenAICompatibleModel:
    client = openai.OpenAI(api_key=api_key, base_url=fake.url, timeout=timeout, max_retries=0)
    return OpenAICompatibleModel(client, mode=mode, max_retries=max_retries, backoff=0.01)


def request(*messages: dict[str, Any], temperature: float = 0.2) -> ModelRequest:
    base = [
        {"role": "system", "content": "You write code until the tests pass."},
        {"role": "user", "content": "Make the tests in test_roman.py pass."},
    ]
    return ModelRequest(
        model=MODEL,
        messages=(*base, *messages),
        tools=TOOLS.schemas(),
        max_tokens=1024,
        temperature=temperature,
    )


def write(content: str, path: str = "roman.py") -> o.Reply:
    return o.tool_call("write_file", {"path": path, "content": content})


def assistant_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An earlier call as the loop keeps it: `arguments` a JSON string."""
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {
        "role": "assistant",
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


HISTORY = (
    assistant_call("call_1", "write_file", {"path": "roman.py", "content": 'x = "I"\nprint(x)\n'}),
    {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "Wrote roman.py (2 lines).\n\nTests: 3 failed",
    },
)


# -- the probe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(EXPECTED_MODE))
def test_the_probe_finds_the_mode_once_per_server_and_model(preset, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bot.agent.openai_model")
    with o.FakeOpenAICompat.preset(preset) as fake:
        fake.script(write(GOOD), write(GOOD), write(GOOD))
        model = provider(fake)
        model.complete(request())
        probes = len(fake.probes)
        model.complete(request())
        other = replace(request(), model="another-model")
        model.complete(other)

    assert model.mode_for(MODEL) is EXPECTED_MODE[preset]
    # Best mode first, one tiny request each, stopping at the first that works.
    assert probes == {"native": 1, "json_schema": 2, "no_tools_schema": 1}.get(preset, 2)
    assert len(fake.probes) == 2 * probes, "cached per (base_url, model): only the new model"
    assert all(p.json and p.json["max_tokens"] <= 128 for p in fake.probes)
    assert all(len(p.messages) == 1 for p in fake.probes)
    logged = [r.getMessage() for r in caplog.records if "mode" in r.getMessage()]
    assert len(logged) == 2 and f"model {MODEL}: tool calls in {EXPECTED_MODE[preset]}" in logged[0]


def test_a_fixed_mode_skips_the_probe() -> None:
    with o.FakeOpenAICompat.preset("tool_call_tags", [write(GOOD)]) as fake:
        reply = provider(fake, mode=Mode.TEXT).complete(request())
    assert fake.probes == [] and reply.tool_calls[0].name == "write_file"


# -- one turn in each mode -------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(EXPECTED_MODE))
def test_the_call_comes_back_as_a_tool_call_in_every_mode(preset) -> None:
    with o.FakeOpenAICompat.preset(preset, [write(GOOD)]) as fake:
        reply = provider(fake).complete(request(temperature=0.7))
    [call] = reply.tool_calls
    assert call.name == "write_file"
    parsed = TOOLS.parse(reply)
    assert isinstance(parsed, ToolCall)
    assert parsed.arguments == {"path": "roman.py", "content": GOOD}
    assert reply.usage.total_tokens > 0

    [turn] = fake.turns
    body = turn.json or {}
    assert body["max_tokens"] == 1024 and body["temperature"] == 0.7
    assert "max_completion_tokens" not in body and "parallel_tool_calls" not in body
    mode = EXPECTED_MODE[preset]
    if mode is Mode.NATIVE:
        assert body["tool_choice"] == "required"
        assert [t["function"]["name"] for t in body["tools"]] == list(TOOLS.names)
    elif mode is Mode.JSON_SCHEMA:
        assert "tools" not in body and "tool_choice" not in body
        schema = body["response_format"]["json_schema"]["schema"]
        consts = [opt["properties"]["name"]["const"] for opt in schema["anyOf"]]
        assert consts == list(TOOLS.names)
    else:
        assert "tools" not in body and "response_format" not in body
        assert "<tool_call>" in body["messages"][0]["content"]


def test_the_request_the_provider_builds_passes_a_strict_server() -> None:
    """The fake refuses what Groq's request carries, so the provider must not send it."""
    req = request(*HISTORY)
    with o.FakeOpenAICompat(strict=True) as fake:
        client = openai.OpenAI(api_key="x", base_url=fake.url, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
            client.chat.completions.create(**GroqModel.arguments(req))
        for mode in Mode:
            body = request_body(req, mode)
            assert "max_completion_tokens" not in body and "parallel_tool_calls" not in body
            assert body["max_tokens"] == req.max_tokens


def test_a_plain_python_block_becomes_write_file_of_the_target() -> None:
    with o.FakeOpenAICompat.preset("tool_call_tags") as fake:
        fake.script(o.python_block(GOOD, before="Here is roman.py:\n\n"))
        reply = provider(fake).complete(request())
    assert reply.tool_calls == () and reply.content is not None
    parsed = TOOLS.parse(reply, fallback_path=ROMAN.target)
    assert isinstance(parsed, ToolCall)
    assert parsed.arguments == {"path": "roman.py", "content": GOOD}
    assert not isinstance(TOOLS.parse(reply), ToolCall), "only with a known target"


def test_native_replies_that_still_write_the_call_as_text_are_read() -> None:
    content = o.render_call("run_tests", {}, "json_block")
    with o.FakeOpenAICompat.preset("native", [o.text(content)]) as fake:
        reply = provider(fake, mode=Mode.NATIVE).complete(request())
    assert [c.name for c in reply.tool_calls] == ["run_tests"]


# -- the history sent back -------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["native", "tool_call_tags", "json_schema"])
def test_earlier_calls_are_sent_back_decoded(preset) -> None:
    with o.FakeOpenAICompat.preset(preset, [write(GOOD)]) as fake:
        provider(fake).complete(request(*HISTORY))
    sent = fake.turns[0].messages[2:]
    code = 'x = "I"\nprint(x)\n'
    if EXPECTED_MODE[preset] is Mode.NATIVE:
        call, result = sent
        arguments = call["tool_calls"][0]["function"]["arguments"]
        assert arguments == {"path": "roman.py", "content": code}, "an object, not a string"
        assert result == HISTORY[1], "native mode keeps tool messages"
    else:
        call, result = sent
        assert call["role"] == "assistant" and "tool_calls" not in call
        assert call["content"].startswith("<tool_call>\n") and call["content"].endswith(
            "</tool_call>"
        )
        inner = json.loads(call["content"].removeprefix("<tool_call>").removesuffix("</tool_call>"))
        assert inner == {"name": "write_file", "arguments": {"path": "roman.py", "content": code}}
        assert '\\\\"' not in call["content"], "no doubly escaped quotes for the model to copy"
        assert result["role"] == "user" and "Tests: 3 failed" in result["content"]
        assert all(m["role"] != "tool" for m in fake.turns[0].messages)


def test_a_server_that_wants_string_arguments_gets_them() -> None:
    with o.FakeOpenAICompat(object_arguments=False) as fake:
        fake.script(write(HALF), write(GOOD))
        model = provider(fake, mode=Mode.NATIVE)
        first = model.complete(request(*HISTORY))
        second = model.complete(request(*HISTORY))
    assert first.tool_calls and second.tool_calls
    assert [r.status for r in fake.requests] == [400, 200, 200], "learned once, then remembered"
    sent = fake.requests[1].messages[2]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(sent, str)


# -- the loop, end to end ----------------------------------------------------------------------


def solve_roman(model: OpenAICompatibleModel, sandbox: LocalSandbox):
    return solve(
        ROMAN,
        DirectSteps(model, sandbox),
        budget=Budget(max_iterations=4),
        policy=ContextPolicy(),
        model=MODEL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["native", *TEXT_PRESETS, "json_schema"])
def test_the_loop_solves_roman_numerals_in_every_mode(preset, sandbox) -> None:
    with o.FakeOpenAICompat.preset(preset, [write(HALF), write(GOOD)]) as fake:
        outcome = solve_roman(provider(fake), sandbox)

    assert outcome.kind is OutcomeKind.PASSED, outcome.reason
    assert outcome.files == {"roman.py": GOOD}
    assert outcome.base is not None and not outcome.base.ok, "red before the first turn"
    first, second = fake.turns
    assert len(outcome.iterations) == 2
    fed_back = second.messages[-1]
    assert "failed" in fed_back["content"] and "test_to_roman_rejects_out_of_range" in str(
        fed_back["content"]
    )
    if EXPECTED_MODE[preset] is Mode.NATIVE:
        assert fed_back["role"] == "tool"
        assert isinstance(second.messages[-2]["tool_calls"][0]["function"]["arguments"], dict)
    else:
        assert fed_back["role"] == "user"
        assert second.messages[-2]["content"].startswith("<tool_call>")
    assert second.messages[:2] == first.messages[:2], "a stable prefix for the server's cache"


@pytest.mark.slow
def test_the_loop_solves_roman_numerals_from_plain_python_blocks(sandbox) -> None:
    # A model that cannot call tools answers with the module in one ```python block: the
    # loop takes that as write_file of the target.
    replies = [o.python_block(HALF, before="Here it is:\n"), o.python_block(GOOD)]
    with o.FakeOpenAICompat.preset("json_block", replies) as fake:
        outcome = solve_roman(provider(fake), sandbox)
    assert outcome.kind is OutcomeKind.PASSED, outcome.reason
    assert outcome.files == {"roman.py": GOOD}
    assert [it.action.split(" (")[0] for it in outcome.iterations] == ["write_file roman.py"] * 2


# -- errors ------------------------------------------------------------------------------------


def test_no_key_sends_a_placeholder_and_a_wrong_key_is_an_auth_error() -> None:
    with o.FakeOpenAICompat(api_key="sk-right") as fake:
        model = OpenAICompatibleModel.build(base_url=fake.url, api_key=None, timeout=5)
        with pytest.raises(ModelAuthError, match="OPENAI_API_KEY") as caught:
            model.complete(request())
    assert isinstance(caught.value, ConfigError)
    assert fake.requests[0].headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"
    assert len(fake.requests) == 1, "an auth error is not retried"


def test_rate_limits_are_retried_a_bounded_number_of_times() -> None:
    with o.FakeOpenAICompat() as fake:
        fake.script(o.rate_limited(0.05), write(GOOD))
        assert provider(fake, mode=Mode.NATIVE).complete(request()).tool_calls
        fake.script(*[o.rate_limited(0.05)] * 3)
        with pytest.raises(ModelRateLimited, match="429 after 2 retries") as caught:
            provider(fake, mode=Mode.NATIVE).complete(request())
    assert caught.value.retry_after == pytest.approx(0.05)
    assert [r.status for r in fake.requests] == [429, 200, 429, 429, 429]


def test_server_errors_are_retried_then_raised() -> None:
    fake = o.FakeOpenAICompat([o.server_error(500)] * 3)
    expected = pytest.raises(ModelServerError, match="failed with 500 after 2 retries")
    with fake, expected as caught:
        provider(fake, mode=Mode.NATIVE).complete(request())
    assert caught.value.status == 500
    assert len(fake.requests) == 3


def test_a_timeout_names_model_timeout_and_is_not_retried() -> None:
    with o.FakeOpenAICompat([o.delay(3, write(GOOD))]) as fake:
        model = provider(fake, mode=Mode.NATIVE, timeout=0.3)
        with pytest.raises(ModelError, match="MODEL_TIMEOUT") as caught:
            model.complete(request())
        requests, url = fake.requests, fake.url
    message = str(caught.value)
    assert "timed out after 0.3s" in message and f"model server at {url}" in message
    assert "is it running?" in message
    assert len(requests) == 1, "a single-slot server is still generating the abandoned answer"


def test_an_unreachable_server_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAICompatibleModel.build(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=None, timeout=2, mode=Mode.TEXT
    )
    with pytest.raises(ModelError, match=r"could not reach the model server at .*is it running"):
        model.complete(request())


def test_context_too_long_shrinks_unless_the_answer_alone_cannot_fit() -> None:
    too_long = o.error(
        400,
        "the request exceeds the available context size, try increasing it",
        type="exceed_context_size_error",
        n_ctx=4096,
        n_prompt_tokens=5000,
    )
    with o.FakeOpenAICompat([too_long, too_long]) as fake:
        model = provider(fake, mode=Mode.NATIVE)
        reply = model.complete(request())
        assert reply.too_large and reply.error and "context" in reply.error
        huge = replace(request(), max_tokens=8192)
        with pytest.raises(ModelContextTooLong, match="MODEL_MAX_TOKENS"):
            model.complete(huge)


def test_not_found_points_at_the_model_name_and_the_v1_suffix() -> None:
    with o.FakeOpenAICompat() as fake:
        client = openai.OpenAI(api_key="x", base_url=fake.url.removesuffix("/v1"), max_retries=0)
        with pytest.raises(ModelError, match=r"MODEL .*ends in /v1"):
            OpenAICompatibleModel(client, mode=Mode.NATIVE).complete(request())


def test_groq_errors_map_to_the_same_types() -> None:
    def groq_model(fake: g.FakeGroq, retries: int) -> GroqModel:
        return GroqModel(groq.Groq(api_key="gsk_x", base_url=fake.url, max_retries=retries))

    with g.FakeGroq(api_key="gsk_right") as fake, pytest.raises(ModelAuthError, match="GROQ"):
        groq_model(fake, 0).complete(request())
    with g.FakeGroq([g.rate_limited(0.05), g.rate_limited(0.05)]) as fake:
        with pytest.raises(ModelRateLimited) as limited:
            groq_model(fake, 1).complete(request())
        assert limited.value.retry_after == pytest.approx(0.05) and len(fake.requests) == 2
    failing = pytest.raises(ModelServerError, match="Groq answered 503")
    with g.FakeGroq([g.server_error(503)]) as fake, failing:
        groq_model(fake, 0).complete(request())
    context = g.error(
        400, "Please reduce the length of the messages.", code="context_length_exceeded"
    )
    with g.FakeGroq([g.too_large(), context, g.tool_use_failed("<bad>")]) as fake:
        model = groq_model(fake, 0)
        assert model.complete(request()).too_large
        assert model.complete(request()).too_large
        assert model.complete(request()).error == "tool_use_failed: <bad>"


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, DEFAULT_MODEL),
        ({"GROQ_MODEL": "llama-3.3-70b-versatile"}, "llama-3.3-70b-versatile"),
        (
            {"MODEL": "openai/gpt-oss-20b", "GROQ_MODEL": "llama-3.3-70b-versatile"},
            "openai/gpt-oss-20b",
        ),
        ({"MODEL": "", "GROQ_MODEL": "llama-3.1-8b-instant"}, "llama-3.1-8b-instant"),
        (
            {"MODEL_PROVIDER": "openai", "MODEL": "qwen2.5-coder:7b", "GROQ_MODEL": "x"},
            "qwen2.5-coder:7b",
        ),
    ],
)
def test_model_name_precedence(environ, expected) -> None:
    assert wiring.model_name(load_settings(environ)) == expected


def test_the_openai_provider_needs_a_base_url_and_a_model() -> None:
    with pytest.raises(
        ConfigError, match=r"needs OPENAI_BASE_URL, e\.g\. http://localhost:11434/v1"
    ):
        wiring.model_client(load_settings({"MODEL_PROVIDER": "openai", "MODEL": "qwen"}))
    settings = load_settings({"MODEL_PROVIDER": "openai", "OPENAI_BASE_URL": "http://h:1/v1"})
    with pytest.raises(ConfigError, match="MODEL_PROVIDER=openai needs MODEL"):
        wiring.model_client(settings)
    with pytest.raises(ConfigError, match="MODEL_PROVIDER=openai needs MODEL"):
        wiring.model_name(settings)
    with pytest.raises(ConfigError, match="not an http"):
        wiring.model_client(
            load_settings(
                {"MODEL_PROVIDER": "openai", "MODEL": "q", "OPENAI_BASE_URL": "localhost:8080"}
            )
        )
    with pytest.raises(ConfigError, match="MODEL_PROVIDER"):
        load_settings({"MODEL_PROVIDER": "anthropic"})


def test_groq_stays_the_default_provider() -> None:
    assert isinstance(wiring.model_client(load_settings({"GROQ_API_KEY": "gsk_x"})), GroqModel)
    with pytest.raises(ConfigError, match="GROQ_API_KEY is not set"):
        wiring.model_client(load_settings({}))


def test_the_openai_provider_is_built_from_settings() -> None:
    environ = {
        "MODEL_PROVIDER": "OpenAI",
        "MODEL": "qwen2.5-coder:7b",
        "OPENAI_BASE_URL": "http://localhost:11434/v1",
        "OPENAI_TOOL_MODE": "json_schema",
    }
    model = wiring.model_client(load_settings(environ))
    assert isinstance(model, OpenAICompatibleModel)
    assert model.base_url == "http://localhost:11434/v1"
    assert model.mode_for("anything") is Mode.JSON_SCHEMA
    assert model.client.api_key == PLACEHOLDER_API_KEY and model.client.max_retries == 0
    assert model.client.timeout.read == 300  # type: ignore[union-attr]
    keyed = wiring.model_client(load_settings({**environ, "OPENAI_API_KEY": "sk-gw"}))
    assert isinstance(keyed, OpenAICompatibleModel) and keyed.client.api_key == "sk-gw"


@pytest.mark.parametrize(
    ("environ", "timeout", "max_tokens"),
    [
        ({}, 60, 4096),
        ({"GROQ_TIMEOUT": "30", "MAX_COMPLETION_TOKENS": "1000"}, 30, 1000),
        (
            {
                "GROQ_TIMEOUT": "30",
                "MODEL_TIMEOUT": "90",
                "MAX_COMPLETION_TOKENS": "1000",
                "MODEL_MAX_TOKENS": "2000",
            },
            90,
            2000,
        ),
        ({"MODEL_PROVIDER": "openai", "GROQ_TIMEOUT": "30"}, 300, 4096),
        ({"MODEL_PROVIDER": "openai", "MODEL_TIMEOUT": "600"}, 600, 4096),
    ],
)
def test_timeout_and_max_tokens_precedence(environ, timeout, max_tokens) -> None:
    settings = load_settings(environ)
    assert wiring.model_timeout(settings) == timeout
    assert wiring.model_max_tokens(settings) == max_tokens
    assert settings.model_temperature == 0.2
    assert load_settings({"MODEL_TEMPERATURE": "0"}).model_temperature == 0


def test_groq_uses_model_timeout() -> None:
    model = wiring.model_client(load_settings({"GROQ_API_KEY": "gsk_x", "MODEL_TIMEOUT": "7"}))
    assert isinstance(model, GroqModel) and model.client.timeout == 7
