"""A fake OpenAI-compatible chat server (llama.cpp, Ollama, vLLM, LM Studio) on loopback HTTP.

The script says what the *model* answers, turn by turn (the helpers of tests.fakes.groq);
the server's capabilities decide how that reaches the client, as a real local server would
render it: native `tool_calls` when it honours `tool_choice`, the call written into the text
when it ignores it (``call_format``), a JSON object when it honours a `response_format` JSON
schema. In-process use::

    with FakeOpenAICompat([tool_call("write_file", {"path": "a.py", "content": ""})],
                          tool_choice="ignored", call_format="tool_call_tags") as fake:
        client = openai.OpenAI(api_key="x", base_url=fake.url, max_retries=0)  # url ends in /v1
        ...
        assert fake.requests[-1].json["max_tokens"] == 4096

The provider's one-word probes (tool or schema named PROBE_NAME) are answered from the
capabilities alone and never consume the script; they are recorded with kind "probe".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from bot.agent.openai_model import PROBE_NAME
from tests.fakes.groq import (
    JSON,
    FakeGroq,
    RecordedRequest,
    Reply,
    ScriptItem,
    completion,
    delay,
    disconnect,
    error,
    load_script,
    raw,
    server_error,
    text,
    tool_call,
    tool_calls,
)

__all__ = [
    "CHAT_PATH",
    "PRESETS",
    "FakeOpenAICompat",
    "RecordedRequest",
    "Reply",
    "completion",
    "delay",
    "disconnect",
    "error",
    "python_block",
    "rate_limited",
    "raw",
    "render_call",
    "server_error",
    "text",
    "tool_call",
    "tool_calls",
]

CHAT_PATH = "/v1/chat/completions"
CallFormat = Literal["json_block", "tool_call_tags", "bare", "doubled_braces"]
_VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# Server kinds seen in the wild, for table-driven tests.
PRESETS: dict[str, dict[str, Any]] = {
    "native": {"tool_choice": "honoured"},
    "json_block": {"tool_choice": "ignored", "call_format": "json_block"},
    "tool_call_tags": {"tool_choice": "ignored", "call_format": "tool_call_tags"},
    "bare": {"tool_choice": "ignored", "call_format": "bare"},
    "doubled_braces": {"tool_choice": "ignored", "call_format": "doubled_braces"},
    "json_schema": {"tool_choice": "ignored", "json_schema": True},
    # llama.cpp without --jinja: `tools` is a 400, but a JSON schema is grammar-forced.
    "no_tools_schema": {"reject_tools": True, "json_schema": True},
}


# --- Script helpers -------------------------------------------------------------------------


def python_block(code: str, *, before: str = "", after: str = "") -> Reply:
    """The model answering with one fenced Python block instead of a call."""
    return text(f"{before}```python\n{code.rstrip()}\n```{after}")


def rate_limited(retry_after: float | None = 0.05) -> Reply:
    """429, as a gateway in front of a model server sends it."""
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    return error(429, "Rate limit exceeded", type="rate_limit_error", headers=headers)


def render_call(name: str, arguments: JSON, call_format: CallFormat) -> str:
    """The call as a model writes it into its text when the server does not parse it."""
    call = json.dumps({"name": name, "arguments": arguments}, indent=1)
    if call_format == "json_block":
        return f"I'll call {name}.\n\n```json\n{call}\n```"
    if call_format == "tool_call_tags":
        return f"<tool_call>\n{call}\n</tool_call>"
    if call_format == "bare":
        return call
    # Copied from a prompt written as a format string: every brace doubled.
    return call.replace("{", "{{").replace("}", "}}")


def _example(schema: Mapping[str, Any]) -> Any:
    """What a grammar-forced model writes for a small schema: consts, first enum, minimal."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "anyOf" in schema:
        return _example(schema["anyOf"][0])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _example(props.get(k) or {}) for k in schema.get("required") or []}
    return {"string": "x", "integer": 0, "number": 0, "boolean": False, "array": []}.get(str(kind))


def _schema_of(request_json: JSON) -> tuple[str, JSON] | None:
    fmt = request_json.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema") or {}
    return str(spec.get("name") or ""), spec.get("schema") or {}


# --- Server ---------------------------------------------------------------------------------


class FakeOpenAICompat(FakeGroq):
    """POST /v1/chat/completions answering from a script, rendered by the server's abilities."""

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        tool_choice: Literal["honoured", "ignored"] = "honoured",
        call_format: CallFormat = "tool_call_tags",
        json_schema: bool = False,
        reject_tools: bool = False,
        strict: bool = True,
        object_arguments: bool = True,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | Path | None = None,
    ) -> None:
        """`strict` answers 400 to `max_completion_tokens` and `parallel_tool_calls`;
        `object_arguments=False` answers 400 to history whose tool-call arguments are not
        strings (vLLM); `reject_tools` answers 400 to any `tools` (llama.cpp without --jinja)."""
        super().__init__(
            script,
            api_key=api_key,
            host=host,
            port=port,
            log_path=log_path,
            validate_tool_names=False,
        )
        self.tool_choice = tool_choice
        self.call_format = call_format
        self.json_schema = json_schema
        self.reject_tools = reject_tools
        self.strict = strict
        self.object_arguments = object_arguments

    @classmethod
    def preset(cls, name: str, script: Iterable[ScriptItem] = (), **kw: Any) -> FakeOpenAICompat:
        return cls(script, **{**PRESETS[name], **kw})

    @property
    def url(self) -> str:
        """Base URL for openai.OpenAI(base_url=...): these servers' URLs include /v1."""
        return f"http://{self._host}:{self.port}/v1"

    @property
    def turns(self) -> list[RecordedRequest]:
        """The requests that were model turns (not probes, not refused)."""
        return [r for r in self.requests if r.kind not in ("probe", "invalid", "not_found")]

    @property
    def probes(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "probe"]

    # Serving

    def _decide(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw_body: bytes,
        request_json: JSON | None,
    ) -> tuple[str, Reply]:
        if method != "POST" or path != CHAT_PATH:
            return "not_found", error(404, f"File Not Found: {method} {path}", type="not_found")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if self._api_key is not None and (scheme.lower(), token) != ("bearer", self._api_key):
            return "invalid", error(401, "Invalid API Key", type="authentication_error")
        if request_json is None:
            return "invalid", error(400, "Invalid JSON body")
        problem = self._validate(request_json)
        if problem is not None:
            return "invalid", error(400, problem)
        probe = self._probe_answer(request_json)
        if probe is not None:
            return "probe", probe
        if not self._script:
            self._exhausted += 1
            return "exhausted", error(
                500,
                f"fake openai-compatible server: script exhausted (request #{len(self._requests)})",
                type="server_error",
                headers={"x-should-retry": "false"},
            )
        item = self._script.popleft()
        if not isinstance(item, Reply):
            try:
                item = item(request_json)
            except Exception as exc:
                self._errors.append(f"{type(exc).__name__}: {exc}")
                return "script_error", error(500, f"script callable raised {exc}", type="x")
        return item.kind, self._render(item, request_json)

    def _validate(self, request_json: JSON) -> str | None:
        """What a strict OpenAI-compatible server refuses, in its own words."""
        if self.strict:
            for name in ("max_completion_tokens", "parallel_tool_calls"):
                if name in request_json:
                    return f"Unsupported param: {name}"
        if self.reject_tools and request_json.get("tools"):
            return "tools param requires --jinja flag"
        if not request_json.get("model"):
            return "'model' is required"
        messages = request_json.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array"
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in _VALID_ROLES:
                return f"messages[{i}]: invalid role"
            if msg["role"] == "tool" and not msg.get("tool_call_id"):
                return f"messages[{i}]: a tool message needs tool_call_id"
            for call in msg.get("tool_calls") or []:
                arguments = (call.get("function") or {}).get("arguments")
                if not self.object_arguments and not isinstance(arguments, str):
                    return (
                        f"1 validation error for ChatCompletionRequest messages.{i}.tool_calls."
                        "0.function.arguments: Input should be a valid string"
                    )
        if request_json.get("stream"):
            return "fake: stream=true is not supported"
        return None

    def _probe_answer(self, request_json: JSON) -> Reply | None:
        names = {(t.get("function") or {}).get("name") for t in request_json.get("tools") or []}
        schema = _schema_of(request_json)
        if names == {PROBE_NAME}:
            forced = self.tool_choice == "honoured" and request_json.get("tool_choice") not in (
                None,
                "auto",
                "none",
            )
            return tool_call(PROBE_NAME, {}) if forced else text("hello")
        if schema is not None and schema[0] == PROBE_NAME:
            return text(json.dumps(_example(schema[1]))) if self.json_schema else text("Hello!")
        return None

    def _render(self, item: Reply, request_json: JSON) -> Reply:
        """The model's intended call, as this server delivers it."""
        calls = (item.message or {}).get("tool_calls")
        if item.kind != "completion" or not calls:
            return item
        function = calls[0]["function"]
        name, arguments = function["name"], json.loads(function["arguments"])
        if self.json_schema and _schema_of(request_json) is not None:
            content = json.dumps({"name": name, "arguments": arguments})
        elif self.tool_choice == "honoured" and request_json.get("tools"):
            return item
        else:
            content = render_call(name, arguments, self.call_format)
        return replace(
            item, message={"role": "assistant", "content": content}, finish_reason="stop"
        )

    def _completion_body(self, reply: Reply, request_json: JSON, request_id: str) -> JSON:
        body = super()._completion_body(reply, request_json, request_id)
        for groq_only in ("x_groq", "usage_breakdown", "service_tier"):
            body.pop(groq_only, None)
        for name in ("queue_time", "prompt_time", "completion_time", "total_time"):
            body["usage"].pop(name, None)
        return body


def main(argv: list[str] | None = None) -> int:
    """Serve a scripted fake until SIGTERM/SIGINT (script files as for tests.fakes.groq)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.openai_compat")
    parser.add_argument("--script", type=Path, help="JSON list of script items")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="native")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument("--log", type=Path, help="append each request as one JSON line")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    script = load_script(args.script) if args.script else []
    fake = FakeOpenAICompat.preset(args.preset, script, port=args.port, log_path=args.log).start()
    try:
        if args.port_file:
            tmp = args.port_file.with_name(args.port_file.name + ".tmp")
            tmp.write_text(str(fake.port), encoding="utf-8")
            os.replace(tmp, args.port_file)
        print(f"fake openai-compatible server on {fake.url}", file=sys.stderr, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
