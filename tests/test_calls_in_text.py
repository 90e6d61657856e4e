"""The lenient reading of tool calls written into a reply's text (pure, table-driven)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.agent.calls_in_text import calls_from_text, decode_arguments, only_python_block
from bot.agent.loop import TOOLS
from bot.agent.model import ModelReply, RawCall
from bot.agent.tools import InvalidCall, ToolCall
from tests.fakes.openai_compat import render_call

NAMES = TOOLS.names
CODE = 'def to_roman(n):\n    return "I" * n  # {not a brace pair}\n'
WRITE = {"path": "roman.py", "content": CODE}
WRITE_JSON = json.dumps({"name": "write_file", "arguments": WRITE})

# (id, content, expected [(name, arguments)])
FOUND: list[tuple[str, str, list[tuple[str, Any]]]] = [
    ("json block", f"Here you go:\n```json\n{WRITE_JSON}\n```\n", [("write_file", WRITE)]),
    ("tool_call tags", f"<tool_call>\n{WRITE_JSON}\n</tool_call>", [("write_file", WRITE)]),
    ("unclosed tool_call tag", f"<tool_call>\n{WRITE_JSON}", [("write_file", WRITE)]),
    ("bare object", WRITE_JSON, [("write_file", WRITE)]),
    (
        "bare object after prose",
        f"I will write it now. {WRITE_JSON} Done.",
        [("write_file", WRITE)],
    ),
    (
        "doubled braces everywhere",
        WRITE_JSON.replace("{", "{{").replace("}", "}}"),
        [("write_file", {"path": "roman.py", "content": CODE.replace("{{", "{")})],
    ),
    (
        "doubled outer braces",
        "{" + WRITE_JSON + "}",
        [("write_file", WRITE)],
    ),
    (
        "raw newlines inside strings",
        '{"name": "write_file", "arguments": {"path": "roman.py", "content": "x = 1\ny = 2\n"}}',
        [("write_file", {"path": "roman.py", "content": "x = 1\ny = 2\n"})],
    ),
    (
        "double-encoded arguments",
        json.dumps({"name": "write_file", "arguments": json.dumps(WRITE)}),
        [("write_file", WRITE)],
    ),
    (
        "triple-encoded arguments",
        json.dumps({"name": "write_file", "arguments": json.dumps(json.dumps(WRITE))}),
        [("write_file", WRITE)],
    ),
    (
        "function wrapper",
        json.dumps(
            {"type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}}
        ),
        [("read_file", {"path": "a.py"})],
    ),
    (
        "parameters spelling",
        '<|python_tag|>{"name": "read_file", "parameters": {"path": "a.py"}}',
        [("read_file", {"path": "a.py"})],
    ),
    (
        "tool_calls wrapper with two calls",
        json.dumps(
            {
                "tool_calls": [
                    {"function": {"name": "read_file", "arguments": '{"path": "a.py"}'}},
                    {"function": {"name": "run_tests", "arguments": "{}"}},
                ]
            }
        ),
        [("read_file", {"path": "a.py"}), ("run_tests", {})],
    ),
    (
        "llama function tag",
        '<function=read_file>{"path": "roman.py"}</function>',
        [("read_file", {"path": "roman.py"})],
    ),
    (
        "invalid escape in code",
        r'{"name": "write_file", "arguments": {"path": "r.py", "content": "re.compile(\"\d+\")"}}',
        [("write_file", {"path": "r.py", "content": 're.compile("\\d+")'})],
    ),
    (
        "arguments next to the name",
        '{"name": "read_file", "path": "roman.py"}',
        [("read_file", {"path": "roman.py"})],
    ),
    ("no arguments", '{"name": "run_tests"}', [("run_tests", {})]),
    ("null arguments", '{"name": "run_tests", "arguments": null}', [("run_tests", {})]),
    (
        "python dicts before the call",
        'Use {"a": 1} and {"b": {"c": 2}} then:\n' + WRITE_JSON,
        [("write_file", WRITE)],
    ),
    (
        "a call wins over a python block",
        f"```python\n{CODE}```\n<tool_call>{WRITE_JSON}</tool_call>",
        [("write_file", WRITE)],
    ),
]

NOT_A_CALL = [
    ("plain text", "Sure! Here is the code: def add(a, b): return a + b"),
    ("json that is no call", '```json\n{"answer": 42, "items": [1, 2]}\n```'),
    ("unknown tool", '{"name": "delete_tests", "arguments": {}}'),
    ("truncated call", '{"name": "write_file", "arguments": {"path": "roman.py", "content": "de'),
    ("empty", ""),
    ("a python block without a target", f"```python\n{CODE}```"),
]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in FOUND], ids=[c[0] for c in FOUND])
def test_finds_calls_written_in_text(content: str, expected: list[tuple[str, Any]]) -> None:
    calls = calls_from_text(content, NAMES, fallback_path=None)
    assert [(c.name, c.arguments) for c in calls] == expected


@pytest.mark.parametrize("content", [c[1] for c in NOT_A_CALL], ids=[c[0] for c in NOT_A_CALL])
def test_text_that_is_not_a_call(content: str) -> None:
    assert calls_from_text(content, NAMES, fallback_path=None) == []
    assert calls_from_text(None, NAMES) == []


@pytest.mark.parametrize("call_format", ["json_block", "tool_call_tags", "bare", "doubled_braces"])
def test_every_format_the_fake_server_writes(call_format) -> None:
    args = {"path": "roman.py", "content": "def f():\n    return {'a': 1}\n"}
    content = render_call("write_file", args, call_format)
    [found] = calls_from_text(content, NAMES)
    assert (found.name, found.arguments) == ("write_file", args)


def test_only_the_given_tool_names_count() -> None:
    assert calls_from_text(WRITE_JSON, ["read_file"]) == []
    assert [c.name for c in calls_from_text(WRITE_JSON, ["write_file"])] == ["write_file"]


def test_ids_are_stable_and_distinct() -> None:
    content = json.dumps([{"name": "run_tests"}, {"name": "run_tests"}])
    first, second = calls_from_text(content, NAMES)
    assert first.id != second.id
    assert [c.id for c in calls_from_text(content, NAMES)] == [first.id, second.id]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("```python\nx = 1\n```", "x = 1\n"),
        ("Here is roman.py:\n\n```py\nx = 1```\nIt should pass.", "x = 1\n"),
        ("```Python3\nx = 1\n```", "x = 1\n"),
        ("```python\nx = 1\n```\n```python\ny = 2\n```", None),  # which one?
        ("```js\nlet x = 1\n```", None),
        ("```python\n\n```", None),
        ("```python\nx = 1\n", None),  # cut off by max_tokens
    ],
)
def test_only_python_block(content: str, expected: str | None) -> None:
    assert only_python_block(content) == expected


def test_a_python_block_becomes_write_file_when_a_target_is_known() -> None:
    [call] = calls_from_text(f"Here:\n```python\n{CODE}```", NAMES, fallback_path="roman.py")
    assert (call.name, call.arguments) == ("write_file", {"path": "roman.py", "content": CODE})
    # Only when the tools include write_file.
    assert calls_from_text(f"```python\n{CODE}```", ["read_file"], fallback_path="roman.py") == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"path": "a.py"}', {"path": "a.py"}),
        (json.dumps(json.dumps({"path": "a.py"})), {"path": "a.py"}),
        ('{"content": "a\nb"}', {"content": "a\nb"}),
        ('{{"path": "a.py"}}', {"path": "a.py"}),
        ("null", None),
        ("", {}),
        ({"path": "a.py"}, {"path": "a.py"}),
        ('"just a string"', "just a string"),
    ],
)
def test_decode_arguments(raw: Any, expected: Any) -> None:
    assert decode_arguments(raw) == expected


def test_decode_arguments_refuses_what_is_not_json() -> None:
    with pytest.raises(json.JSONDecodeError):
        decode_arguments('{"path": "a.py", ')


# -- Toolbox.parse uses it -------------------------------------------------------------------


def test_parse_reads_a_call_from_the_text_when_there_are_no_tool_calls() -> None:
    parsed = TOOLS.parse(ModelReply(content=f"<tool_call>{WRITE_JSON}</tool_call>"))
    assert isinstance(parsed, ToolCall)
    assert (parsed.name, parsed.arguments) == ("write_file", WRITE)


def test_parse_takes_a_python_block_as_write_file_only_with_a_fallback_path() -> None:
    reply = ModelReply(content=f"```python\n{CODE}```")
    without = TOOLS.parse(reply)
    assert isinstance(without, InvalidCall) and "instead of a tool call" in without.message
    parsed = TOOLS.parse(reply, fallback_path="roman.py")
    assert isinstance(parsed, ToolCall)
    assert (parsed.name, parsed.arguments) == ("write_file", WRITE)


def test_parse_unwraps_double_encoded_native_arguments() -> None:
    raw = json.dumps(json.dumps(WRITE))
    parsed = TOOLS.parse(ModelReply(tool_calls=(RawCall("c1", "write_file", raw),)))
    assert isinstance(parsed, ToolCall) and parsed.arguments == WRITE
    lenient = TOOLS.parse(
        ModelReply(tool_calls=(RawCall("c2", "write_file", '{"path": "a.py", "content": "x\n"}'),))
    )
    assert isinstance(lenient, ToolCall) and lenient.arguments["content"] == "x\n"


def test_native_tool_calls_win_over_the_text() -> None:
    reply = ModelReply(
        content=f"<tool_call>{WRITE_JSON}</tool_call>",
        tool_calls=(RawCall("c1", "run_tests", "{}"),),
    )
    parsed = TOOLS.parse(reply, fallback_path="roman.py")
    assert isinstance(parsed, ToolCall) and parsed.name == "run_tests"
