"""The model's tools: the registry, parsing a reply into a call, and applying edits (pure)."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Generic, TypeVar

from bot.agent.calls_in_text import calls_from_text, decode_arguments
from bot.agent.model import ModelReply
from bot.policy import escape_hatches, write_refusal

MAX_FILE_CHARS = 200_000

H = TypeVar("H")


@dataclass(frozen=True)
class Tool(Generic[H]):
    """One tool: what the model is told (schema, prompt line), how a call reads in logs,
    and the handler that carries it out (the loop's)."""

    name: str
    signature: str  # as the prompt lists it, e.g. `write_file(path, content)`
    description: str
    parameters: dict[str, Any]
    handler: H
    required: tuple[str, ...] = ()
    describe: Callable[[dict[str, Any]], str] | None = None

    def schema(self, target: str = "the module the task names") -> dict[str, Any]:
        """The JSON schema the model sees; `{target}` in descriptions becomes the real target
        (a sample name in a schema gets copied into calls for other tasks)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description.replace("{target}", target),
                "parameters": {
                    "type": "object",
                    "properties": json.loads(
                        json.dumps(self.parameters).replace("{target}", target)
                    ),
                    **({"required": list(self.required)} if self.required else {}),
                },
            },
        }


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InvalidCall:
    """A reply that is not one valid tool call; `message` goes back to the model."""

    message: str
    call_id: str | None = None


class Toolbox(Generic[H]):
    """The registry: schemas, the prompt's tool list and the invalid-reply text all come
    from the same `Tool` objects, so a tool is added in one place."""

    def __init__(self, tools: Sequence[Tool[H]]) -> None:
        self.tools = {t.name: t for t in tools}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tools)

    def schemas(self, target: str = "the module the task names") -> tuple[dict[str, Any], ...]:
        return tuple(t.schema(target) for t in self.tools.values())

    def prompt_list(self, target: str = "the module the task names") -> str:
        return "\n".join(
            f"  - {t.signature}: {t.description.replace('{target}', target)}"
            for t in self.tools.values()
        )

    def handler(self, call: ToolCall) -> H:
        return self.tools[call.name].handler

    def describe(self, call: ToolCall) -> str:
        """A short human line, e.g. `write_file roman.py (42 lines)`."""
        tool = self.tools[call.name]
        return tool.describe(call.arguments) if tool.describe else call.name

    def parse(
        self, reply: ModelReply, *, fallback_path: str | None = None
    ) -> ToolCall | InvalidCall:
        """Turn a model reply into exactly one tool call, or say what is wrong; a call written
        in the text counts, and with `fallback_path` so does a reply that is one Python block."""
        names = ", ".join(self.names)
        if reply.error:
            return InvalidCall(
                "Your last reply was not a valid tool call "
                f"({reply.error}). Call exactly one of the tools with JSON arguments."
            )
        # Servers that ignore tool_choice write the call into the text instead.
        calls = reply.tool_calls or tuple(
            calls_from_text(reply.content, self.names, fallback_path=fallback_path)
        )
        if not calls:
            return InvalidCall(
                "You replied with text instead of a tool call. Respond only by calling one "
                f"tool: {names}."
            )
        first = calls[0]
        call_id = first.id or "call_0"
        tool = self.tools.get(first.name)
        if tool is None:
            return InvalidCall(f"Unknown tool {first.name!r}. Use one of: {names}.", call_id)
        raw = first.arguments
        try:
            # Lenient: raw newlines in strings, and arguments a chat template encoded twice.
            args = decode_arguments(raw)
        except json.JSONDecodeError as exc:
            return InvalidCall(f"The arguments of {tool.name} are not valid JSON ({exc}).", call_id)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return InvalidCall(f"The arguments of {tool.name} must be a JSON object.", call_id)
        missing = [k for k in tool.required if not isinstance(args.get(k), str)]
        if missing:
            return InvalidCall(
                f"{tool.name} needs string argument(s): {', '.join(missing)}.", call_id
            )
        return ToolCall(id=call_id, name=tool.name, arguments=args)


@dataclass(frozen=True)
class EditRules:
    """What the model may write: never the tests, configuration or shadowing modules
    (bot.policy.write_refusal), never process-level escape hatches (escape_hatches)."""

    tests: frozenset[str]
    shadowed: frozenset[str] = frozenset()  # import names installed in the test environment
    allowed_apis: frozenset[str] = frozenset()  # escape hatches the repository allows
    writable: tuple[str, ...] = ()
    protected: tuple[str, ...] = (".github/**",)

    def refusal(self, path: str) -> str | None:
        return write_refusal(
            path,
            tests=self.tests,
            shadowed=self.shadowed,
            writable=self.writable,
            protected=self.protected,
        )

    def hatches(self, path: str, content: str) -> list[str]:
        if not path.endswith(".py"):
            return []
        return escape_hatches(content, path=path, allowed=self.allowed_apis)


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


def module_name(path: str) -> str:
    """The import name of a module file: `pkg/mod.py` → `pkg.mod`, `pkg/__init__.py` → `pkg`."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_itself(path: str, content: str) -> str | None:
    """`from roman import f` inside roman.py: Python imports the half-run module again."""
    if not path.endswith(".py"):
        return None
    own = module_name(path)
    try:
        tree = ast.parse(content)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        if own in names and isinstance(node, ast.Import | ast.ImportFrom):
            return (
                f"{path} line {node.lineno} imports {own} itself: that is a circular import. "
                "Define the functions in this module instead of importing them. "
                "The edit was not applied."
            )
    return None


@dataclass(frozen=True)
class EditOutcome:
    files: dict[str, str]
    message: str
    applied: bool


def apply_edit(files: dict[str, str], call: ToolCall, *, rules: EditRules) -> EditOutcome:
    """Apply a write_file or replace_in_file call to the candidate files, or refuse it."""
    path = str(PurePosixPath(call.arguments["path"]))
    refused = rules.refusal(path)
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
    broken = _syntax_error(path, content) or _imports_itself(path, content)
    if broken:
        return EditOutcome(files, broken, False)
    hatches = rules.hatches(path, content)
    if hatches:
        return EditOutcome(
            files,
            "The edit was not applied: the code under test may not reach outside the test "
            "run.\n" + "\n".join(f"- {h}" for h in hatches),
            False,
        )
    if files.get(path) == content:
        return EditOutcome(files, f"{path} is unchanged.", False)
    updated = {**files, path: content}
    return EditOutcome(updated, f"Wrote {path} ({content.count(chr(10)) + 1} lines).", True)
