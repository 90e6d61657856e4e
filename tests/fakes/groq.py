"""A fake of Groq's chat completions API: a real local HTTP server answering from a script.

In-process use::

    with FakeGroq([tool_call("write_file", {"path": "a.py"}), text("done")]) as fake:
        client = groq.Groq(api_key="test", base_url=fake.url, max_retries=0)
        ...
        assert fake.requests[0].tools

Out-of-process use (one JSON line per request in the log)::

    python -m tests.fakes.groq --script script.json --port-file PORT --log requests.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

JSON = dict[str, Any]

CHAT_PATH = "/openai/v1/chat/completions"
EXHAUSTED_MESSAGE = "fake groq: script exhausted"
_BILLING_HINT = (
    "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
)
_VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True)
class Reply:
    """One scripted answer; build it with the helpers below rather than by hand."""

    status: int = 200
    # Assistant message of a 200 completion; the body around it is built per request
    # because `model` and the default token counts depend on the request.
    message: JSON | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Error object, sent as {"error": ...}; "{model}" in its message becomes the request's model.
    error: JSON | None = None
    # Sent verbatim instead of JSON (e.g. an HTML page from a proxy).
    body: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False

    @property
    def kind(self) -> str:
        """What the request was answered with: completion, error, raw or disconnect."""
        if self.disconnect:
            return "disconnect"
        if self.body is not None:
            return "raw"
        if self.error is not None:
            return "error"
        return "completion"


ScriptItem = Reply | Callable[[JSON], Reply]


# --- Script helpers -------------------------------------------------------------------------


def completion(
    message: JSON,
    *,
    finish_reason: str = "stop",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A 200 completion carrying an arbitrary assistant message."""
    return Reply(
        message=message,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        headers=dict(headers or {}),
    )


def _tool_call_entry(name: str, arguments: JSON | str, call_id: str | None) -> JSON:
    # A str is sent untouched so a test can script bad JSON or Groq's occasional "null".
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": call_id or f"call_{secrets.token_hex(4)}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def tool_calls(
    calls: Iterable[tuple[str, JSON | str] | JSON],
    *,
    reasoning: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> Reply:
    """Several (parallel) tool calls, each (name, arguments) or {"name", "arguments", "id"?}."""
    entries = []
    for call in calls:
        if isinstance(call, Mapping):
            entries.append(_tool_call_entry(call["name"], call["arguments"], call.get("id")))
        else:
            name, arguments = call
            entries.append(_tool_call_entry(name, arguments, None))
    # Groq leaves `content` out entirely on tool-call replies; clients must not rely on it.
    message: JSON = {"role": "assistant", "tool_calls": entries}
    if reasoning is not None:
        message["reasoning"] = reasoning
    return completion(
        message,
        finish_reason="tool_calls",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def tool_call(
    name: str,
    arguments: JSON | str,
    *,
    id: str | None = None,
    reasoning: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> Reply:
    """One tool call; `arguments` as a dict (sent as JSON) or a raw string."""
    return tool_calls(
        [{"name": name, "arguments": arguments, "id": id}],
        reasoning=reasoning,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def text(
    content: str,
    *,
    finish_reason: str = "stop",
    reasoning: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> Reply:
    """A plain assistant message (finish_reason "stop", or "length" for a truncated one)."""
    message: JSON = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning"] = reasoning
    return completion(
        message,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Reply:
    """Any error in Groq's shape: {"error": {"message", "type", "code"?, **extra}}."""
    err: JSON = {"message": message, "type": type}
    if code is not None:
        err["code"] = code
    err.update(extra)
    return Reply(status=status, error=err, headers=dict(headers or {}))


def rate_limited(
    retry_after: float | None = 1,
    *,
    limit: int = 6000,
    used: int = 5800,
    requested: int = 900,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """429 tokens-per-minute limit; the SDK retries it and sleeps `retry-after` if 0 < it <= 60."""
    wait = f"{retry_after:g}s" if retry_after is not None else "a moment"
    all_headers = {
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(max(limit - used, 0)),
        "x-ratelimit-reset-tokens": wait,
    }
    if retry_after is not None:
        # Floats are nonstandard but the SDK accepts them, which keeps tests fast.
        all_headers["retry-after"] = f"{retry_after:g}"
    all_headers.update(headers or {})
    return error(
        429,
        "Rate limit reached for model `{model}` in organization `org_fake` service tier "
        f"`on_demand` on tokens per minute (TPM): Limit {limit}, Used {used}, "
        f"Requested {requested}. Please try again in {wait}. {_BILLING_HINT}",
        type="tokens",
        code="rate_limit_exceeded",
        headers=all_headers,
    )


def server_error(status: int = 500, *, headers: Mapping[str, str] | None = None) -> Reply:
    """5xx; the SDK retries it with exponential backoff (about 0.4-0.5 s for the first retry)."""
    return error(status, "Internal Server Error", type="internal_server_error", headers=headers)


def tool_use_failed(
    failed_generation: str = "",
    *,
    message: str = (
        "Failed to call a function. Please adjust your prompt. "
        "See 'failed_generation' for more details."
    ),
) -> Reply:
    """400 the model produced a malformed tool call; the SDK does not retry it."""
    return error(
        400,
        message,
        type="invalid_request_error",
        code="tool_use_failed",
        failed_generation=failed_generation,
    )


def too_large(*, limit: int = 6000, requested: int = 9000) -> Reply:
    """413 request larger than the tokens-per-minute limit; the SDK does not retry it."""
    return error(
        413,
        "Request too large for model `{model}` in organization `org_fake` service tier "
        f"`on_demand` on tokens per minute (TPM): Limit {limit}, Requested {requested}, "
        f"please reduce your message size and try again. {_BILLING_HINT}",
        type="tokens",
        code="rate_limit_exceeded",
    )


def raw(
    status: int,
    body: str | bytes,
    *,
    content_type: str = "text/plain",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A verbatim body, e.g. a proxy's HTML error page or truncated JSON."""
    data = body.encode() if isinstance(body, str) else body
    return Reply(status=status, body=data, content_type=content_type, headers=dict(headers or {}))


def disconnect() -> Reply:
    """Close the connection without answering (the SDK sees a connection error and retries)."""
    return Reply(status=0, disconnect=True)


def delay(seconds: float, then: ScriptItem | None = None) -> ScriptItem:
    """Answer `then` (default: text "delayed") only after `seconds`, to trip client timeouts."""
    item = then if then is not None else text("delayed")
    if isinstance(item, Reply):
        return replace(item, delay=seconds)
    return lambda request_json: replace(item(request_json), delay=seconds)


# --- Token accounting -----------------------------------------------------------------------


def estimate_prompt_tokens(request_json: JSON) -> int:
    """Default prompt_tokens: compact JSON characters of messages (+ tools) / 4, rounded up."""
    size = len(json.dumps(request_json.get("messages") or [], separators=(",", ":")))
    if request_json.get("tools"):
        # Tool schemas are part of the prompt on Groq too; counting them keeps budgets honest.
        size += len(json.dumps(request_json["tools"], separators=(",", ":")))
    return max(1, math.ceil(size / 4))


def estimate_completion_tokens(message: JSON) -> int:
    """Default completion_tokens: characters of content, reasoning and tool calls / 4."""
    size = len(message.get("content") or "") + len(message.get("reasoning") or "")
    for call in message.get("tool_calls") or []:
        size += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return max(1, math.ceil(size / 4))


# --- Recording ------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request the fake received, in arrival order."""

    index: int
    method: str
    path: str
    headers: dict[str, str]  # all headers, lower-cased names
    json: JSON | None  # parsed body; None when it was not a JSON object
    # Status the fake answered (the scripted one even if the client gave up; 0 = disconnect).
    status: int
    # completion | error | raw | disconnect | invalid (failed validation, script untouched)
    # | exhausted | script_error (a callable item raised) | not_found
    kind: str
    received_at: float  # time.time()

    @property
    def model(self) -> str | None:
        return (self.json or {}).get("model")

    @property
    def messages(self) -> list[JSON]:
        return (self.json or {}).get("messages") or []

    @property
    def tools(self) -> list[JSON] | None:
        return (self.json or {}).get("tools")

    @property
    def tool_choice(self) -> Any:
        return (self.json or {}).get("tool_choice")

    @property
    def parallel_tool_calls(self) -> bool | None:
        return (self.json or {}).get("parallel_tool_calls")

    @property
    def retry_count(self) -> int:
        """The SDK's own retry counter for this request (0 on the first attempt)."""
        return int(self.headers.get("x-stainless-retry-count", "0"))

    def to_dict(self) -> JSON:
        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "json": self.json,
            "status": self.status,
            "kind": self.kind,
            "received_at": self.received_at,
        }


# --- Server ---------------------------------------------------------------------------------


def _random_id(n: int) -> str:
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _validate(request_json: JSON) -> str | None:
    """The cheap part of Groq's request validation; returns Groq-style message or None."""
    if not request_json.get("model"):
        return "'model' : property 'model' is missing"
    messages = request_json.get("messages")
    if not isinstance(messages, list):
        return "'messages' : property 'messages' is missing"
    if not messages:
        return "'messages' : minimum number of items is 1"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _VALID_ROLES:
            return f"'messages.{i}' : discriminator property 'role' has invalid value"
        if msg["role"] == "tool" and not msg.get("tool_call_id"):
            return (
                f"'messages.{i}' : for 'role:tool' the following must be satisfied"
                f"[('messages.{i}.tool_call_id' : property 'tool_call_id' is missing)]"
            )
    for i, tool in enumerate(request_json.get("tools") or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            return f"'tools.{i}.function.name' : property 'name' is missing"
    if request_json.get("stream"):
        return "fake groq: stream=true is not supported by the fake"
    return None


def _error_body(err: JSON, model: str) -> JSON:
    err = dict(err)
    err["message"] = str(err.get("message", "")).replace("{model}", model)
    return {"error": err}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive, like the real API, so connection reuse paths get exercised.
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads so server_close() joins them: stop() leaves nothing behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], fake: FakeGroq) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        # Idle keep-alive handlers block in readline(); shutting the socket wakes them up.
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up is expected here, not a failure of the fake.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FakeGroq:
    """Local fake of POST /openai/v1/chat/completions answering from a script, in order."""

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | Path | None = None,
        validate_tool_names: bool = True,
    ) -> None:
        """`api_key=None` accepts any non-empty bearer token; `validate_tool_names` makes a
        scripted call to a tool missing from request.tools a 400 tool_use_failed, as Groq does
        (a request with `disable_tool_validation: true` skips that check)."""
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._script: deque[ScriptItem] = deque(script)
        self._requests: list[RecordedRequest] = []
        self._exhausted = 0
        self._errors: list[str] = []
        self._api_key = api_key
        self._host = host
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._log_file: Any = None
        self._validate_tool_names = validate_tool_names
        self._fingerprint = f"fp_{secrets.token_hex(5)}"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # Lifecycle

    def start(self) -> Self:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("fake groq already started")
        self._stopping.clear()
        if self._log_path is not None:
            self._log_file = self._log_path.open("a", encoding="utf-8")
        self._server = _Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fake-groq:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, abort pending delays, close the port and join every thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None
        with self._lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("fake groq is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for groq.Groq(base_url=...); the SDK appends /openai/v1 itself."""
        return f"http://{self._host}:{self.port}"

    # Script

    def script(self, *items: ScriptItem) -> None:
        """Append replies to the end of the script."""
        self.extend(items)

    def extend(self, items: Iterable[ScriptItem]) -> None:
        """Append replies to the end of the script."""
        with self._lock:
            self._script.extend(items)

    @property
    def remaining(self) -> int:
        """Script items not consumed yet."""
        with self._lock:
            return len(self._script)

    # Recording

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def exhausted(self) -> int:
        """How many requests found the script empty (truthy means a test under-scripted)."""
        with self._lock:
            return self._exhausted

    @property
    def errors(self) -> list[str]:
        """Exceptions raised by callable script items, as text."""
        with self._lock:
            return list(self._errors)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least `count` requests were recorded; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"fake groq got {len(self._requests)} requests, wanted {count}")
            return list(self._requests)

    # Serving

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw_body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            parsed = json.loads(raw_body) if raw_body else None
        except ValueError:
            parsed = None
        request_json = parsed if isinstance(parsed, dict) else None
        path = handler.path.split("?", 1)[0]

        with self._lock:
            kind, reply = self._decide(handler.command, path, headers, raw_body, request_json)
            record = RecordedRequest(
                index=len(self._requests),
                method=handler.command,
                path=path,
                headers=headers,
                json=request_json,
                status=reply.status,
                kind=kind,
                received_at=time.time(),
            )
            self._requests.append(record)
            if self._log_file is not None:
                self._log_file.write(json.dumps(record.to_dict()) + "\n")
                self._log_file.flush()
            self._changed.notify_all()

        if reply.delay and self._stopping.wait(reply.delay):
            handler.close_connection = True
            return
        self._respond(handler, reply, request_json)

    def _decide(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw_body: bytes,
        request_json: JSON | None,
    ) -> tuple[str, Reply]:
        """Pick the reply; only requests that pass validation consume a script item."""
        if method != "POST" or path != CHAT_PATH:
            return "not_found", error(
                404,
                f"Unknown request URL: {method} {path}. Please check the URL for typos, "
                "or see the docs at https://console.groq.com/docs/",
                code="unknown_url",
            )
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if (
            scheme.lower() != "bearer"
            or not token.strip()
            or (self._api_key is not None and token.strip() != self._api_key)
        ):
            return "invalid", error(401, "Invalid API Key", code="invalid_api_key")
        if request_json is None:
            return "invalid", error(
                400,
                "We could not parse the JSON body of your request. The body must be a JSON "
                f"object (got {len(raw_body)} bytes).",
            )
        problem = _validate(request_json)
        if problem is not None:
            return "invalid", error(400, problem)

        if not self._script:
            self._exhausted += 1
            # x-should-retry stops the SDK from retrying, so one call fails once and loudly.
            return "exhausted", error(
                500,
                f"{EXHAUSTED_MESSAGE} (request #{len(self._requests)}, "
                f"{len(self._requests)} recorded so far)",
                type="internal_server_error",
                headers={"x-should-retry": "false"},
            )
        item = self._script.popleft()
        if not isinstance(item, Reply):
            try:
                item = item(request_json)
                if not isinstance(item, Reply):
                    raise TypeError(f"script callable returned {type(item).__name__}, not Reply")
            except Exception as exc:
                self._errors.append(f"{type(exc).__name__}: {exc}")
                return "script_error", error(
                    500,
                    f"fake groq: script callable raised {type(exc).__name__}: {exc}",
                    type="internal_server_error",
                    headers={"x-should-retry": "false"},
                )
        unknown = self._unknown_tool(item, request_json)
        if unknown is not None:
            return "error", replace(
                tool_use_failed(
                    json.dumps({"name": unknown[0], "arguments": unknown[1]}),
                    message=(
                        f"tool call validation failed: attempted to call tool '{unknown[0]}' "
                        "which was not in request.tools"
                    ),
                ),
                delay=item.delay,
            )
        return item.kind, item

    def _unknown_tool(self, item: Reply, request_json: JSON) -> tuple[str, str] | None:
        if not self._validate_tool_names or request_json.get("disable_tool_validation"):
            return None
        calls = (item.message or {}).get("tool_calls") or []
        offered = {
            t["function"]["name"] for t in request_json.get("tools") or [] if t.get("function")
        }
        for call in calls:
            if call["function"]["name"] not in offered:
                return call["function"]["name"], call["function"]["arguments"]
        return None

    def _respond(self, handler: _Handler, reply: Reply, request_json: JSON | None) -> None:
        if reply.disconnect:
            handler.close_connection = True
            return
        model = str((request_json or {}).get("model") or "unknown")
        request_id = f"req_01{_random_id(24)}"
        if reply.body is not None:
            data = reply.body
        elif reply.error is not None:
            data = json.dumps(_error_body(reply.error, model)).encode()
        else:
            data = json.dumps(self._completion_body(reply, request_json or {}, request_id)).encode()
        try:
            handler.send_response(reply.status)
            handler.send_header("content-type", reply.content_type)
            handler.send_header("content-length", str(len(data)))
            handler.send_header("x-request-id", request_id)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError:
            # The client gave up (timeout) before we answered; nothing left to do.
            handler.close_connection = True

    def _completion_body(self, reply: Reply, request_json: JSON, request_id: str) -> JSON:
        message = dict(reply.message or {"role": "assistant", "content": ""})
        prompt = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else estimate_prompt_tokens(request_json)
        )
        completion_ = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else estimate_completion_tokens(message)
        )
        # Plausible fixed rates so the timing fields are deterministic.
        prompt_time = round(prompt * 0.00002, 6)
        completion_time = round(completion_ * 0.002, 6)
        return {
            "id": f"chatcmpl-{uuid.uuid4()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request_json.get("model", "unknown"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "queue_time": 0.0123,
                "prompt_tokens": prompt,
                "prompt_time": prompt_time,
                "completion_tokens": completion_,
                "completion_time": completion_time,
                "total_tokens": prompt + completion_,
                "total_time": round(prompt_time + completion_time, 6),
            },
            "usage_breakdown": None,
            "system_fingerprint": self._fingerprint,
            "x_groq": {"id": request_id},
            "service_tier": "on_demand",
        }


# --- Script files and CLI -------------------------------------------------------------------

_HELPERS: dict[str, Callable[..., Reply]] = {
    "completion": completion,
    "tool_call": tool_call,
    "tool_calls": tool_calls,
    "text": text,
    "error": error,
    "rate_limited": rate_limited,
    "server_error": server_error,
    "tool_use_failed": tool_use_failed,
    "too_large": too_large,
    "raw": raw,
    "disconnect": disconnect,
}


def reply_from_json(obj: JSON) -> ScriptItem:
    """One script-file item: {"<helper>": kwargs | single arg | null}, or
    {"delay": seconds, "then": item}. E.g. {"tool_call": {"name": "f", "arguments": {}}},
    {"text": "done"}, {"rate_limited": {"retry_after": 0.1}}, {"server_error": null}."""
    if "delay" in obj:
        then = obj.get("then")
        return delay(float(obj["delay"]), reply_from_json(then) if then is not None else None)
    if len(obj) != 1 or next(iter(obj)) not in _HELPERS:
        raise ValueError(f"unknown script item {obj!r}; expected one of {sorted(_HELPERS)}")
    name, arg = next(iter(obj.items()))
    helper = _HELPERS[name]
    if arg is None:
        return helper()
    if isinstance(arg, dict):
        return helper(**arg)
    return helper(arg)


def load_script(path: str | Path) -> list[ScriptItem]:
    """Read a JSON list of script items (see reply_from_json)."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(items, list):
        raise ValueError(f"{path}: a script file holds a JSON list")
    return [reply_from_json(item) for item in items]


def main(argv: list[str] | None = None) -> int:
    """Serve a scripted fake until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.groq", description=__doc__)
    parser.add_argument("--script", type=Path, help="JSON list of script items")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument("--log", type=Path, help="append each request as one JSON line")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="accept only this bearer token")
    args = parser.parse_args(argv)

    script = load_script(args.script) if args.script else []
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    fake = FakeGroq(
        script, api_key=args.api_key, host=args.host, port=args.port, log_path=args.log
    ).start()
    try:
        if args.port_file:
            # Write-then-rename so a poller never reads a half-written port.
            tmp = args.port_file.with_name(args.port_file.name + ".tmp")
            tmp.write_text(str(fake.port), encoding="utf-8")
            os.replace(tmp, args.port_file)
        print(f"fake groq listening on {fake.url}", file=sys.stderr, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
