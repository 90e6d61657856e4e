"""Any OpenAI-compatible chat server: Ollama, vLLM, llama.cpp's server, LM Studio, gateways.

Such servers differ in what they honour. Some return native tool calls when asked with
`tool_choice`; some ignore it but honour a JSON schema for the output (`response_format`);
some only write the call into the text. The client probes once per (base_url, model) which
of these works, then speaks that mode: the request, the history it sends back and the reading
of the reply follow it. The loop's `ModelRequest` stays provider-agnostic.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from bot.agent.calls_in_text import calls_from_text, decode_arguments
from bot.agent.model import (
    Message,
    ModelReply,
    ModelRequest,
    RawCall,
    Usage,
    error_detail,
    is_context_too_long,
    retry_after,
)
from bot.errors import (
    ModelAuthError,
    ModelContextTooLong,
    ModelError,
    ModelRateLimited,
    ModelServerError,
)

log = logging.getLogger(__name__)

# Local servers need no key, but the client refuses to start without one.
PLACEHOLDER_API_KEY = "not-needed"
PROBE_NAME = "tdd_agent_probe"
PROBE_ANSWER = "tdd-agent-probe"
# Enough for a short answer or one tiny call; the probe must stay cheap on a slow server.
PROBE_MAX_TOKENS = 128
# A server's retry-after beyond this is not worth sitting through inside one turn.
MAX_RETRY_WAIT = 30.0


class Mode(StrEnum):
    """How the server is made to produce one tool call."""

    NATIVE = "native"  # tools + tool_choice="required", answered with tool_calls
    JSON_SCHEMA = "json_schema"  # response_format forces {"name", "arguments"} as the content
    TEXT = "text"  # asked for a <tool_call> in the text, read back leniently


TEXT_INSTRUCTION = (
    "Answer with exactly one tool call and nothing else, written as\n"
    "<tool_call>\n"
    '{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}\n'
    "</tool_call>"
)
SCHEMA_INSTRUCTION = (
    'Answer with exactly one tool call as a JSON object: {"name": "<tool name>", '
    '"arguments": {<the arguments as a JSON object>}}.'
)

_PROBE_MESSAGES: tuple[Message, ...] = (
    {"role": "user", "content": "Reply with the single word: hello"},
)
_PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": PROBE_NAME,
        "description": "Say hello.",
        "parameters": {"type": "object", "properties": {}},
    },
}
_PROBE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": PROBE_NAME,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "const": PROBE_ANSWER}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


def tool_names(tools: Iterable[dict[str, Any]]) -> list[str]:
    return [str(t["function"]["name"]) for t in tools if isinstance(t.get("function"), dict)]


def call_schema(tools: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A JSON schema whose instances are exactly one call of one of `tools`."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
        if isinstance(t.get("function"), dict)
    ]
    return {"anyOf": options}


def _call_text(name: str, arguments: Any) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _decoded(raw: Any) -> Any:
    try:
        return decode_arguments(raw)
    except json.JSONDecodeError:
        return raw  # sent as it came: the model sees its own mistake


def history(messages: Sequence[Message], mode: Mode, *, object_arguments: bool) -> list[Message]:
    """The conversation for this server: earlier calls' arguments decoded (native mode), or
    each call as <tool_call> text and its result as a user message (text and schema modes)."""
    # The loop keeps `arguments` as a JSON string; a chat template that encodes it again
    # (`tojson`) shows a small model its own code escaped, and it copies the escaping.
    out: list[Message] = []
    for message in messages:
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if calls and mode is Mode.NATIVE:
            if not object_arguments:
                out.append(message)
                continue
            rewritten = [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": _decoded(call["function"].get("arguments")),
                    },
                }
                for call in calls
            ]
            out.append({**message, "tool_calls": rewritten})
        elif calls:
            parts = [message["content"]] if message.get("content") else []
            parts += [
                _call_text(c["function"]["name"], _decoded(c["function"].get("arguments")))
                for c in calls
            ]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif message.get("role") == "tool" and mode is not Mode.NATIVE:
            text = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            out.append({"role": "user", "content": text})
        else:
            out.append(message)
    return out


def _with_instruction(messages: list[Message], instruction: str) -> list[Message]:
    # Appended to the system prompt so the prefix the server may cache stays the same.
    if messages and messages[0].get("role") == "system":
        first = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{instruction}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def request_body(
    request: ModelRequest, mode: Mode, *, object_arguments: bool = True
) -> dict[str, Any]:
    """The chat-completions call for `mode`: `max_tokens`, never `max_completion_tokens` or
    `parallel_tool_calls` (strict servers reject both)."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    messages = history(request.messages, mode, object_arguments=object_arguments)
    if mode is Mode.NATIVE:
        body["tools"] = list(request.tools)
        body["tool_choice"] = "required"
    elif mode is Mode.JSON_SCHEMA:
        messages = _with_instruction(messages, SCHEMA_INSTRUCTION)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": call_schema(request.tools)},
        }
    else:
        # No `tools`: some servers refuse them outright, and the system prompt lists them.
        messages = _with_instruction(messages, TEXT_INSTRUCTION)
    body["messages"] = messages
    return body


def _timeout_seconds(timeout: object) -> float | None:
    if isinstance(timeout, int | float):
        return float(timeout)
    read = getattr(timeout, "read", None)
    return float(read) if isinstance(read, int | float) else None


class OpenAICompatibleModel:
    """Calls `POST {base_url}/chat/completions` of an OpenAI-compatible server; retries 429
    and 5xx `max_retries` times (honouring `retry-after`), never a timeout."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        mode: Mode | None = None,
        max_retries: int = 2,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`mode=None` probes the server; `client` must have `max_retries=0` (see build)."""
        self.client = client
        self.fixed_mode = mode
        self.max_retries = max_retries
        self.backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._modes: dict[tuple[str, str], Mode] = {}
        self._string_arguments: set[tuple[str, str]] = set()

    @classmethod
    def build(
        cls,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int = 2,
        mode: Mode | None = None,
        tls: ssl.SSLContext | bool = True,
    ) -> OpenAICompatibleModel:
        client = openai.OpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=base_url,
            # Connecting is quick or the server is not there; only the answer may be slow.
            timeout=openai.Timeout(timeout, connect=min(timeout, 10.0)),
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=tls),
        )
        return cls(client, mode=mode, max_retries=max_retries)

    @property
    def base_url(self) -> str:
        return str(self.client.base_url).rstrip("/")

    # -- the turn ------------------------------------------------------------------------------

    def complete(self, request: ModelRequest) -> ModelReply:
        t0 = time.monotonic()
        key = (self.base_url, request.model)
        try:
            mode = self.mode_for(request.model)
            completion = self._send(request, mode, key)
        except openai.APIStatusError as exc:
            return self._status_error(exc, request, t0)
        except openai.APIConnectionError as exc:
            raise self._unreachable(exc) from exc
        return self._reply(completion, request, time.monotonic() - t0)

    def _send(self, request: ModelRequest, mode: Mode, key: tuple[str, str]) -> ChatCompletion:
        objects = key not in self._string_arguments
        try:
            return self._create(request_body(request, mode, object_arguments=objects))
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            has_calls = any(m.get("tool_calls") for m in request.messages)
            if not (mode is Mode.NATIVE and objects and has_calls):
                raise
            if is_context_too_long(exc.status_code, error_detail(exc.body)):
                raise
            # The server wants `arguments` as the OpenAI spec's string (vLLM validates it).
            completion = self._create(request_body(request, mode, object_arguments=False))
            self._string_arguments.add(key)
            log.info("%s wants tool-call arguments as JSON strings; sending them so", key[0])
            return completion

    def _create(self, body: dict[str, Any]) -> ChatCompletion:
        """One call, retrying 429 and 5xx a bounded number of times."""
        # Not a timeout: a single-slot local server keeps generating the abandoned answer,
        # so a retry would only queue behind it and time out too.
        attempt = 0
        while True:
            try:
                # The body is built per mode; the SDK's overloads cannot follow a dict.
                completion: ChatCompletion = self.client.chat.completions.create(**body)
                return completion
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                if attempt >= self.max_retries:
                    raise
                if exc.response.headers.get("x-should-retry") == "false":
                    raise  # the server says a retry cannot help
                hint = retry_after(exc.response.headers)
                wait = hint if hint is not None else self.backoff * 2**attempt
                self._sleep(min(max(wait, 0.0), MAX_RETRY_WAIT))
                attempt += 1

    def _reply(
        self, completion: ChatCompletion, request: ModelRequest, latency: float
    ) -> ModelReply:
        if not completion.choices:
            raise ModelError(f"the model server at {self.base_url} answered without a choice")
        choice = completion.choices[0]
        message = choice.message
        calls = tuple(
            RawCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in (message.tool_calls or [])
            if c.type == "function"
        )
        if not calls:
            # Tools ignored, or the schema mode's JSON content: the call is in the text.
            names = tool_names(request.tools)
            calls = tuple(calls_from_text(message.content, names))
        return ModelReply(
            content=message.content,
            tool_calls=calls,
            finish_reason=choice.finish_reason,
            usage=_usage(completion, request),
            latency=latency,
        )

    # -- the probe -----------------------------------------------------------------------------

    def mode_for(self, model: str) -> Mode:
        """The mode for `model` on this server: fixed, cached, or probed now (and logged)."""
        if self.fixed_mode is not None:
            return self.fixed_mode
        key = (self.base_url, model)
        with self._lock:
            mode = self._modes.get(key)
            if mode is None:
                mode = self._modes[key] = self._probe(model)
                log.info("model server %s, model %s: tool calls in %s mode", key[0], model, mode)
            return mode

    def _probe(self, model: str) -> Mode:
        """One tiny request per mode, best first; a 400 means the server refuses that mode."""
        base = {
            "model": model,
            "messages": list(_PROBE_MESSAGES),
            "max_tokens": PROBE_MAX_TOKENS,
            "temperature": 0.0,
        }
        refused = (openai.BadRequestError, openai.UnprocessableEntityError)
        try:
            # Asked for one word, the model calls the tool only if the server forces it.
            answer = self._create({**base, "tools": [_PROBE_TOOL], "tool_choice": "required"})
            if answer.choices and answer.choices[0].message.tool_calls:
                return Mode.NATIVE
        except refused as exc:
            log.debug("%s refuses tool_choice: %s", self.base_url, exc)
        try:
            answer = self._create({**base, "response_format": _PROBE_FORMAT})
            content = answer.choices[0].message.content if answer.choices else None
            if _json_object(content).get("answer") == PROBE_ANSWER:
                return Mode.JSON_SCHEMA
        except refused as exc:
            log.debug("%s refuses response_format json_schema: %s", self.base_url, exc)
        return Mode.TEXT

    # -- errors --------------------------------------------------------------------------------

    def _status_error(
        self, exc: openai.APIStatusError, request: ModelRequest, t0: float
    ) -> ModelReply:
        """A reply the loop can act on (too large), or the typed error naming the fix."""
        err = error_detail(exc.body)
        status = exc.status_code
        message = str(err.get("message") or exc.message)
        where = f"the model server at {self.base_url}"
        if status in (401, 403):
            raise ModelAuthError(
                f"{where} rejected the API key ({status}: {message}). Set OPENAI_API_KEY to a "
                "key it accepts; local servers usually need none (leave it unset)."
            ) from exc
        if is_context_too_long(status, err):
            window = _context_window(err, message)
            if window is not None and request.max_tokens >= window:
                raise ModelContextTooLong(
                    f"{where} has a context window of {window} tokens and MODEL_MAX_TOKENS="
                    f"{request.max_tokens} leaves no room for the prompt. Lower "
                    f"MODEL_MAX_TOKENS (e.g. to {max(window // 4, 256)}) or give the server a "
                    "larger context (llama.cpp: -c; Ollama: num_ctx; vLLM: --max-model-len)."
                ) from exc
            # The loop shrinks the history and asks again.
            return ModelReply(
                too_large=True,
                error=f"context too long: {message[:200]}",
                latency=time.monotonic() - t0,
            )
        if status == 429:
            raise ModelRateLimited(
                f"{where} still answered 429 after {self.max_retries} retries: {message}. "
                "Wait and run again, or lower the request rate at the server or gateway.",
                retry_after=retry_after(exc.response.headers),
            ) from exc
        if status >= 500:
            raise ModelServerError(
                f"{where} failed with {status} after {self.max_retries} retries: {message}. "
                "Check the server's log (out of memory? model not loaded?).",
                status=status,
            ) from exc
        if status == 404:
            raise ModelError(
                f"{where} answered 404: {message}. Check MODEL (a name the server serves, "
                "e.g. from GET /v1/models) and that OPENAI_BASE_URL ends in /v1, "
                "e.g. http://localhost:11434/v1 for Ollama."
            ) from exc
        raise ModelError(f"{where} answered {status}: {message}") from exc

    def _unreachable(self, exc: openai.APIConnectionError) -> ModelError:
        if isinstance(exc, openai.APITimeoutError):
            seconds = _timeout_seconds(self.client.timeout)
            detail = f"Request timed out after {seconds:g}s" if seconds else "Request timed out"
        else:
            cause = exc.__cause__
            detail = f"{exc.message} {cause}" if cause else exc.message
        return ModelError(
            f"could not reach the model server at {self.base_url} ({detail}); is it running? "
            "For a slow local model raise MODEL_TIMEOUT."
        )


def _json_object(content: str | None) -> dict[str, Any]:
    try:
        value = json.loads(content or "")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _context_window(err: dict[str, Any], message: str) -> int | None:
    """The context size an error states: llama.cpp's `n_ctx`, or vLLM/OpenAI's wording."""
    n_ctx = err.get("n_ctx")
    if isinstance(n_ctx, int):
        return n_ctx
    match = re.search(r"maximum context length is (\d+)", message)
    return int(match.group(1)) if match else None


def _usage(completion: ChatCompletion, request: ModelRequest) -> Usage:
    usage = completion.usage
    if usage is not None:
        return Usage(
            prompt_tokens=int(usage.prompt_tokens or 0),
            completion_tokens=int(usage.completion_tokens or 0),
            total_tokens=int(usage.total_tokens or 0),
        )
    # A server that reports no usage would never use up the token budget: estimate it.
    prompt = len(json.dumps(request.messages)) // 4
    message = completion.choices[0].message if completion.choices else None
    done = len(message.content or "") // 4 if message else 0
    return Usage(prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done)
