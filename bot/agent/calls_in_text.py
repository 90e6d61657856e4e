"""Tool calls written into a reply's text, for servers that ignore `tool_choice` (pure).

Small local models often answer in plain text with the call as JSON in it: a ```json block,
`<tool_call>…</tool_call>` tags, a bare object, sometimes with doubled braces `{{…}}`, with raw
newlines inside strings or with the arguments encoded twice. This finds such calls leniently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from bot.agent.model import RawCall

# Raw control characters (newlines in code) inside strings are what small models write.
_DECODER = json.JSONDecoder(strict=False)
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.S)
_FUNCTION_TAG = re.compile(r"<function=([\w.-]+)>(.*?)</function>", re.S)
_PYTHON_FENCES = frozenset({"python", "py", "python3"})
_ARGUMENT_KEYS = ("arguments", "parameters", "args")
_CALL_KEYS = frozenset({"name", "type", "id", "function"})
# Enough for arguments that went through a chat template's `tojson` twice, and then some.
_MAX_ENCODINGS = 3


def calls_from_text(
    content: str | None, tool_names: Iterable[str], *, fallback_path: str | None = None
) -> list[RawCall]:
    """The calls to `tool_names` written in `content`, in order; with `fallback_path`, a reply
    that is one fenced Python block (and no call) becomes `write_file(fallback_path, code)`."""
    if not content:
        return []
    names = frozenset(tool_names)
    found = _calls_in(content, names)
    if not found and "{{" in content:
        found = _calls_in(_undouble(content), names)
    if not found and fallback_path and "write_file" in names:
        code = only_python_block(content)
        if code is not None:
            found = [("write_file", {"path": fallback_path, "content": code})]
    return [
        RawCall(id=_call_id(content, i), name=name, arguments=args)
        for i, (name, args) in enumerate(found)
    ]


def decode_arguments(raw: Any) -> Any:
    """Arguments as a value: JSON text decoded leniently, a double-encoded object unwrapped.

    Raises json.JSONDecodeError when `raw` is text that is not JSON even leniently."""
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        return {}
    value = _loads(raw)
    for _ in range(_MAX_ENCODINGS):
        # A JSON string whose value is itself a JSON object: a template encoded it again.
        if not (isinstance(value, str) and value.strip()[:1] in ("{", "[")):
            break
        try:
            value = _loads(value)
        except json.JSONDecodeError:
            break
    return value


def only_python_block(content: str) -> str | None:
    """The code of the reply's only fenced block when that block is Python, else None."""
    fences = list(_FENCE.finditer(content))
    if len(fences) != 1:
        return None
    lang, code = fences[0].group(1), fences[0].group(2)
    if lang.lower() not in _PYTHON_FENCES or not code.strip():
        return None
    return code if code.endswith("\n") else code + "\n"


def _calls_in(text: str, names: frozenset[str]) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for match in _FUNCTION_TAG.finditer(text):
        # Llama 3.1's own spelling: <function=write_file>{"path": ...}</function>
        if match.group(1) in names:
            try:
                found.append((match.group(1), decode_arguments(match.group(2))))
            except json.JSONDecodeError:
                continue
    if found:
        return found
    i = text.find("{")
    while i != -1:
        decoded = _decode_at(text, i)
        if decoded is None:
            i = text.find("{", i + 1)
            continue
        value, end = decoded
        found.extend(_calls_of(value, names))
        # Anything inside a decoded object was searched by _calls_of already.
        i = text.find("{", end)
    return found


def _calls_of(value: Any, names: frozenset[str]) -> Iterator[tuple[str, Any]]:
    if isinstance(value, list):
        for item in value:
            yield from _calls_of(item, names)
        return
    if not isinstance(value, dict):
        return
    call = _as_call(value, names)
    if call is not None:
        yield call
        return
    # Wrappers such as {"tool_calls": [...]} or {"tool_call": {...}}.
    for item in value.values():
        yield from _calls_of(item, names)


def _as_call(obj: dict[str, Any], names: frozenset[str]) -> tuple[str, Any] | None:
    function = obj.get("function")
    if isinstance(function, dict):
        obj = function  # {"type": "function", "function": {"name", "arguments"}}
    name = obj.get("name")
    if not isinstance(name, str) and isinstance(function, str):
        name = function
    if not isinstance(name, str) or name not in names:
        return None
    for key in _ARGUMENT_KEYS:
        if key in obj:
            try:
                args = decode_arguments(obj[key])
            except json.JSONDecodeError:
                args = obj[key]  # the tool box says what is wrong with it
            return name, {} if args is None else args
    # Arguments written next to the name: {"name": "read_file", "path": "roman.py"}.
    return name, {k: v for k, v in obj.items() if k not in _CALL_KEYS}


def _decode_at(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value starting at `start` and the index after it, repairing bad escapes."""
    doc, repairs = text, 0
    for _ in range(200):
        try:
            value, end = _DECODER.raw_decode(doc, start)
        except json.JSONDecodeError as exc:
            if not exc.msg.startswith("Invalid \\escape"):
                return None
            # A regex or Windows path in code: the backslash was meant literally.
            doc = doc[: exc.pos] + "\\" + doc[exc.pos :]
            repairs += 1
            continue
        return value, end - repairs
    return None


def _loads(text: str) -> Any:
    stripped = text.strip()
    try:
        return _DECODER.decode(stripped)
    except json.JSONDecodeError as first:
        for candidate in (stripped, _undouble(stripped)):
            decoded = _decode_at(candidate, 0)
            if decoded is not None and not candidate[decoded[1] :].strip():
                return decoded[0]
        raise first


def _undouble(text: str) -> str:
    # A model that copied a format string writes {{ and }} for every brace.
    return text.replace("{{", "{").replace("}}", "}")


def _call_id(content: str, index: int) -> str:
    # Deterministic, so a replayed turn produces the same conversation.
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    return f"call_{digest}" if index == 0 else f"call_{digest}_{index}"
