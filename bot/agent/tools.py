"""The model's tools: their schemas, parsing a reply into a call, and applying edits (pure)."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

MAX_FILE_CHARS = 200_000

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Create or overwrite a whole file with new content. The tests run "
            "automatically afterwards.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Relative path, e.g. roman.py"},
                    "content": {"type": "string", "description": "The complete file content"},
                },
                "required": ["path", "content"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "replace_in_file",
            "description": "Replace one exact, unique snippet of an existing file. The tests "
            "run automatically afterwards.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "old": {"type": "string", "description": "Exact text, appearing once"},
                    "new": {"type": "string", "description": "Replacement text"},
                },
                "required": ["path", "old", "new"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the workspace (candidate code or tests).",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_tests",
            "description": "Run the test suite on the current files.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "Say you are done. Accepted only if the tests pass when re-run. Set "
            "give_up to true if you cannot make them pass.",
            "parameters": {
                "type": "object",
                "properties": {
                    "summary": {"type": "string"},
                    "give_up": {"type": "boolean"},
                },
                "required": ["summary"],
            },
        },
    },
]

TOOL_NAMES = frozenset(t["function"]["name"] for t in TOOL_SCHEMAS)
_REQUIRED = {
    t["function"]["name"]: tuple(t["function"]["parameters"].get("required", ()))
    for t in TOOL_SCHEMAS
}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def describe(self) -> str:
        """A short human line, e.g. `write_file roman.py (42 lines)`."""
        args = self.arguments
        if self.name == "write_file":
            return f"write_file {args['path']} ({str(args['content']).count(chr(10)) + 1} lines)"
        if self.name in {"replace_in_file", "read_file"}:
            return f"{self.name} {args['path']}"
        if self.name == "finish":
            return "finish (give up)" if args.get("give_up") else "finish"
        return self.name


@dataclass(frozen=True)
class InvalidCall:
    """A reply that is not one valid tool call; `message` goes back to the model."""

    message: str
    call_id: str | None = None


def parse_reply(reply: dict[str, Any]) -> ToolCall | InvalidCall:
    """Turn a normalized model reply into exactly one tool call, or say what is wrong."""
    if reply.get("error"):
        return InvalidCall(
            "Your last reply was not a valid tool call "
            f"({reply['error']}). Call exactly one of the tools with JSON arguments."
        )
    calls = reply.get("tool_calls") or []
    if not calls:
        return InvalidCall(
            "You replied with text instead of a tool call. Respond only by calling one tool: "
            "write_file, replace_in_file, read_file, run_tests or finish."
        )
    first = calls[0]
    call_id = first.get("id") or "call_0"
    name = first.get("name")
    if name not in TOOL_NAMES:
        return InvalidCall(
            f"Unknown tool {name!r}. Use one of: {', '.join(sorted(TOOL_NAMES))}.", call_id
        )
    raw = first.get("arguments")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        return InvalidCall(f"The arguments of {name} are not valid JSON ({exc}).", call_id)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return InvalidCall(f"The arguments of {name} must be a JSON object.", call_id)
    missing = [k for k in _REQUIRED[name] if not isinstance(args.get(k), str)]
    if missing:
        return InvalidCall(f"{name} needs string argument(s): {', '.join(missing)}.", call_id)
    return ToolCall(id=call_id, name=name, arguments=args)


def check_path(path: str, *, protected: frozenset[str]) -> str | None:
    """Why the model may not write `path`, or None when it may."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts:
        return f"{path!r} is not a relative path inside the workspace."
    if str(p) in protected:
        return (
            f"{path} is a test file and is read-only: the tests are correct and must not be "
            "changed. Change the code under test instead."
        )
    if p.name == "conftest.py" or p.name.startswith("test_") or p.name.endswith("_test.py"):
        return f"{path} would be collected as a test file; only the tests given may exist."
    return None


def _syntax_error(path: str, content: str) -> str | None:
    if not path.endswith(".py"):
        return None
    try:
        ast.parse(content, filename=path)
    except SyntaxError as exc:
        return (
            f"{path} has a syntax error at line {exc.lineno}: {exc.msg}. The edit was not applied."
        )
    return None


@dataclass(frozen=True)
class EditOutcome:
    files: dict[str, str]
    message: str
    applied: bool


def apply_edit(files: dict[str, str], call: ToolCall, *, protected: frozenset[str]) -> EditOutcome:
    """Apply a write_file or replace_in_file call to the candidate files, or refuse it."""
    path = str(PurePosixPath(call.arguments["path"]))
    refused = check_path(path, protected=protected)
    if refused:
        return EditOutcome(files, refused, False)
    if call.name == "write_file":
        content = call.arguments["content"]
    else:
        old, new = call.arguments["old"], call.arguments["new"]
        if path not in files:
            return EditOutcome(files, f"{path} does not exist; use write_file to create it.", False)
        count = files[path].count(old) if old else 0
        if count != 1:
            where = "does not appear" if count == 0 else f"appears {count} times"
            return EditOutcome(
                files,
                f"The snippet to replace {where} in {path}; give an exact snippet that appears "
                "once (read_file shows the current content), or use write_file.",
                False,
            )
        content = files[path].replace(old, new, 1)
    if len(content) > MAX_FILE_CHARS:
        return EditOutcome(files, f"{path} would exceed {MAX_FILE_CHARS} characters.", False)
    broken = _syntax_error(path, content)
    if broken:
        return EditOutcome(files, broken, False)
    if files.get(path) == content:
        return EditOutcome(files, f"{path} is unchanged.", False)
    updated = {**files, path: content}
    return EditOutcome(updated, f"Wrote {path} ({content.count(chr(10)) + 1} lines).", True)
