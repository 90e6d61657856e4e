"""Pure pieces of the agent: parsing replies, applying edits, building context, targets."""

from __future__ import annotations

import json

from bot.agent.context import ContextPolicy, Task, Turn, build_messages, render_test_output
from bot.agent.loop import TOOLS
from bot.agent.model import ModelReply, RawCall
from bot.agent.targets import infer_target
from bot.agent.tools import EditRules, InvalidCall, ToolCall, apply_edit
from bot.sandbox.base import TestResult
from bot.text import clip

RULES = EditRules(tests=frozenset({"test_roman.py"}))


def reply_with(name: str, arguments: object) -> ModelReply:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ModelReply(tool_calls=(RawCall(id="c1", name=name, arguments=raw),))


def call(name: str, **arguments: str) -> ToolCall:
    return ToolCall(id="c1", name=name, arguments=arguments)


def test_parse_reply_accepts_one_valid_call() -> None:
    parsed = TOOLS.parse(reply_with("write_file", {"path": "roman.py", "content": "x = 1\n"}))
    assert isinstance(parsed, ToolCall)
    assert parsed.arguments == {"path": "roman.py", "content": "x = 1\n"}
    assert isinstance(TOOLS.parse(reply_with("run_tests", "null")), ToolCall)


def test_parse_reply_explains_what_is_wrong() -> None:
    cases = {
        "text instead of a tool call": ModelReply(content="Here is the code"),
        "not valid JSON": reply_with("write_file", '{"path": "a.py", '),
        "Unknown tool": reply_with("delete_tests", {}),
        "needs string argument": reply_with("write_file", {"path": "a.py"}),
        "tool_use_failed": ModelReply(error="tool_use_failed: <function=write_file>"),
    }
    for expected, reply in cases.items():
        parsed = TOOLS.parse(reply)
        assert isinstance(parsed, InvalidCall), expected
        assert expected in parsed.message


def test_tests_are_read_only() -> None:
    files = {"roman.py": "x = 1\n"}
    for attempt in [
        call("write_file", path="test_roman.py", content="def test_x(): pass\n"),
        call("write_file", path="./test_roman.py", content="def test_x(): pass\n"),
        call("write_file", path="conftest.py", content="collect_ignore = ['test_roman.py']\n"),
        call("write_file", path="../escape.py", content="x = 1\n"),
        call("write_file", path="/etc/passwd", content="x\n"),
        call("replace_in_file", path="test_roman.py", old="x", new="y"),
    ]:
        outcome = apply_edit(files, attempt, rules=RULES)
        assert not outcome.applied, attempt
        assert outcome.files == files


def test_replace_requires_exact_unique_snippet_and_valid_syntax() -> None:
    files = {"m.py": "a = 1\nb = 1\n"}
    twice = apply_edit(
        files, call("replace_in_file", path="m.py", old="= 1", new="= 2"), rules=RULES
    )
    assert not twice.applied and "appears 2 times" in twice.message
    missing = apply_edit(
        files, call("replace_in_file", path="m.py", old="zzz", new="y"), rules=RULES
    )
    assert not missing.applied and "does not appear" in missing.message
    broken = apply_edit(
        files, call("replace_in_file", path="m.py", old="a = 1", new="a = ("), rules=RULES
    )
    assert not broken.applied and "syntax error at line 1" in broken.message
    good = apply_edit(
        files, call("replace_in_file", path="m.py", old="a = 1", new="a = 3"), rules=RULES
    )
    assert good.applied and good.files["m.py"] == "a = 3\nb = 1\n"
    assert files == {"m.py": "a = 1\nb = 1\n"}, "edits never mutate their input"


def test_test_output_goes_back_as_header_then_clipped_output() -> None:
    result = TestResult(
        exit_code=1,
        passed=3,
        failed=2,
        failing=("test_r.py::test_a", "test_r.py::test_b"),
        output="HEAD\n" + "x" * 10_000 + "\nTAIL",
        duration=0.5,
    )
    text = render_test_output(result, limit=1000)
    first, second = text.splitlines()[:2]
    assert first == "Tests: 3 passed, 2 failed (0.50s)"
    assert second == "Failing: test_r.py::test_a, test_r.py::test_b"
    assert "HEAD" in text and "TAIL" in text and "characters clipped" in text
    assert len(text) < 1300
    assert clip("short", 100) == "short"


def test_old_observations_shrink_to_one_line_and_prefix_is_stable() -> None:
    task = Task(
        text="Write roman", tests={"test_roman.py": "from roman import r\n"}, target="roman.py"
    )
    turns = [
        Turn({"role": "assistant", "content": f"a{i}"}, f"FULL OUTPUT {i}", f"summary {i}", None)
        for i in range(4)
    ]
    messages = build_messages(
        task, turns, ContextPolicy(keep_full=2, observation_chars=4000), tools=TOOLS
    )
    observations = [m["content"] for m in messages if m["role"] == "user"][1:]
    assert observations == ["summary 0", "summary 1", "FULL OUTPUT 2", "FULL OUTPUT 3"]
    shorter = build_messages(task, turns[:1], ContextPolicy(), tools=TOOLS)
    assert messages[:2] == shorter[:2], "system prompt and task stay first and identical"
    assert "from roman import r" in messages[1]["content"]


def test_target_is_inferred_from_the_tests_imports() -> None:
    assert (
        infer_target({"test_roman.py": "import pytest\nfrom roman import to_roman\n"}) == "roman.py"
    )
    assert infer_target({"t.py": "import os, json\nfrom pkg.util import f\n"}) == "pkg/util.py"
    assert infer_target({"t.py": "import os\n"}) is None
    existing = frozenset({"helpers.py"})
    assert infer_target({"t.py": "import helpers\nimport fizz\n"}, existing) == "fizz.py"


def test_one_registry_drives_schemas_prompt_and_invalid_reply_text() -> None:
    names = {schema["function"]["name"] for schema in TOOLS.schemas()}
    assert (
        names
        == set(TOOLS.names)
        == {
            "write_file",
            "replace_in_file",
            "read_file",
            "run_tests",
            "finish",
        }
    )
    task = Task(text="t", tests={"test_a.py": "import a\n"}, target="a.py")
    system = build_messages(task, [], ContextPolicy(), tools=TOOLS)[0]["content"]
    assert "{tools}" not in system
    for name in TOOLS.names:
        assert f"  - {name}(" in system
        invalid = TOOLS.parse(ModelReply(content="plain text"))
        assert isinstance(invalid, InvalidCall) and name in invalid.message
    write = ToolCall("c", "write_file", {"path": "a.py", "content": "x = 1\ny = 2\n"})
    assert TOOLS.describe(write) == "write_file a.py (3 lines)"


def test_edits_with_escape_hatches_or_forbidden_paths_are_refused_with_a_reason() -> None:
    files = {"roman.py": "x = 1\n"}
    forge = "import atexit, os\natexit.register(lambda: os._exit(0))\n"
    refused = apply_edit(files, call("write_file", path="roman.py", content=forge), rules=RULES)
    assert not refused.applied and refused.files == files
    assert "atexit" in refused.message and "not applied" in refused.message
    for path in ("pytest.ini", "pytest.py", "tdd_report_plugin.py", "sitecustomize.py"):
        attempt = apply_edit(files, call("write_file", path=path, content="x = 1\n"), rules=RULES)
        assert not attempt.applied, path
    shadowing = EditRules(tests=frozenset(), shadowed=frozenset({"requests"}))
    attempt = apply_edit(
        files, call("write_file", path="requests.py", content="x = 1\n"), rules=shadowing
    )
    assert not attempt.applied and "requests" in attempt.message
