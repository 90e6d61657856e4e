"""The model seam: a typed request in, a typed reply out; provider specifics stay in a client.

`ModelClient.complete(ModelRequest) -> ModelReply` is all the loop knows. A provider is one
class that turns the request into its API's call and its answer (or its errors) back into a
`ModelReply`: Groq is `GroqModel`, any OpenAI-compatible server `OpenAICompatibleModel`
(bot/agent/openai_model.py); both raise the same typed errors.
"""

from __future__ import annotations

import email.utils
import json
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import groq

from bot.errors import ModelAuthError, ModelError, ModelRateLimited, ModelServerError

Message = dict[str, Any]  # one chat message, in the OpenAI chat shape every provider speaks


@dataclass(frozen=True)
class ModelRequest:
    """One turn: the conversation so far and the tools the model may call."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...]
    max_tokens: int = 4096
    temperature: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        """Plain data: what the journal digests to recognize the same turn on replay."""
        return {
            "model": self.model,
            "messages": list(self.messages),
            "tools": list(self.tools),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }


@dataclass(frozen=True)
class RawCall:
    """A tool call as the provider returned it; `arguments` is usually a JSON string."""

    id: str
    name: str
    arguments: Any


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class ModelReply:
    """What came back. `error` is a reply the model botched (it costs a turn, not the run);
    `too_large` asks the loop to shrink the request."""

    content: str | None = None
    tool_calls: tuple[RawCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency: float = 0.0
    error: str | None = None
    too_large: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tool_calls"] = [asdict(c) for c in self.tool_calls]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelReply:
        return cls(
            content=data.get("content"),
            tool_calls=tuple(RawCall(**c) for c in data.get("tool_calls") or ()),
            finish_reason=data.get("finish_reason"),
            usage=Usage(**(data.get("usage") or {})),
            latency=float(data.get("latency") or 0.0),
            error=data.get("error"),
            too_large=bool(data.get("too_large")),
        )

    def summary(self) -> str:
        """A short line for logs: the tool called or what went wrong."""
        if self.error:
            return f"invalid: {self.error[:80]}"
        if not self.tool_calls:
            return "text reply"
        call = self.tool_calls[0]
        try:
            args = (
                json.loads(call.arguments or "{}")
                if isinstance(call.arguments, str)
                else call.arguments
            )
        except json.JSONDecodeError:
            return f"{call.name} (bad arguments)"
        path = args.get("path") if isinstance(args, dict) else None
        return f"{call.name} {path}" if path else str(call.name)


class ModelClient(Protocol):
    def complete(self, request: ModelRequest) -> ModelReply: ...


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(
        prompt_tokens=int(usage.prompt_tokens or 0),
        completion_tokens=int(usage.completion_tokens or 0),
        total_tokens=int(usage.total_tokens or 0),
    )


def error_detail(body: object) -> dict[str, Any]:
    """The error object of an error body, whichever of the usual shapes the server used."""
    if isinstance(body, str):
        return {"message": body[:500]}
    if not isinstance(body, dict):
        return {}
    inner = body.get("error", body)
    if isinstance(inner, str):
        return {"message": inner}  # Ollama's {"error": "model not found"}
    return inner if isinstance(inner, dict) else {}


_CONTEXT_WORDS = re.compile(
    r"context (length|size|window)|maximum context|exceeds? the available context|"
    r"prompt is too long|too many tokens",
    re.IGNORECASE,
)


def is_context_too_long(status: int, error: Mapping[str, Any]) -> bool:
    """Whether an error says the request does not fit the model's context (413 included)."""
    if status == 413:
        return True
    kind = f"{error.get('code') or ''} {error.get('type') or ''}"
    if "context_length_exceeded" in kind or "exceed_context_size" in kind:
        return True
    return status in (400, 422) and bool(_CONTEXT_WORDS.search(str(error.get("message") or "")))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's wait hint in seconds (`retry-after-ms`, `retry-after` seconds or date)."""
    try:
        return float(headers["retry-after-ms"]) / 1000
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class GroqModel:
    """Calls Groq's chat completions; the SDK retries 429 (retry-after), 5xx and timeouts."""

    def __init__(self, client: groq.Groq) -> None:
        self.client = client

    @classmethod
    def build(
        cls,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        tls: ssl.SSLContext | bool = True,
    ) -> GroqModel:
        return cls(
            groq.Groq(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout,
                max_retries=max_retries,
                http_client=groq.DefaultHttpxClient(verify=tls),
            )
        )

    @staticmethod
    def arguments(request: ModelRequest) -> dict[str, Any]:
        """Groq's call: one tool call per turn, always a tool call."""
        return {
            "model": request.model,
            "messages": list(request.messages),
            "tools": list(request.tools),
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "max_completion_tokens": request.max_tokens,
            "temperature": request.temperature,
        }

    def complete(self, request: ModelRequest) -> ModelReply:
        t0 = time.monotonic()
        try:
            completion = self.client.chat.completions.create(**self.arguments(request))
        except groq.AuthenticationError as exc:
            raise ModelAuthError(
                "Groq rejected GROQ_API_KEY (401). Check the key at https://console.groq.com/keys."
            ) from exc
        except groq.APIStatusError as exc:
            err = error_detail(exc.body)
            latency = time.monotonic() - t0
            status = exc.status_code
            if status == 400 and err.get("code") == "tool_use_failed":
                # The model produced a malformed call: feed that back, it counts as a turn.
                failed = str(err.get("failed_generation") or "")[:500]
                error = f"tool_use_failed: {failed}" if failed else "tool_use_failed"
                return ModelReply(error=error, latency=latency)
            if is_context_too_long(status, err):
                return ModelReply(too_large=True, error="request too large", latency=latency)
            message = err.get("message") or str(exc)
            if status == 429:
                raise ModelRateLimited(
                    f"Groq answered 429 after {self.client.max_retries} retries: {message} "
                    "Wait and run again; on the free tier a lower MODEL_MAX_TOKENS counts less "
                    "against the tokens-per-minute limit.",
                    retry_after=retry_after(exc.response.headers),
                ) from exc
            if status >= 500:
                raise ModelServerError(
                    f"Groq answered {status}: {message} (after {self.client.max_retries} "
                    "retries; see https://groqstatus.com and run again later)",
                    status=status,
                ) from exc
            raise ModelError(f"Groq answered {status}: {message}") from exc
        except (groq.APIConnectionError, groq.APITimeoutError) as exc:
            raise ModelError(
                f"could not reach Groq at {self.client.base_url} after retries: {exc}. Check "
                "the network; if requests time out, raise MODEL_TIMEOUT."
            ) from exc
        choice = completion.choices[0]
        calls = tuple(
            RawCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in (choice.message.tool_calls or [])
        )
        return ModelReply(
            content=choice.message.content,
            tool_calls=calls,
            finish_reason=choice.finish_reason,
            usage=_usage(completion.usage),
            latency=time.monotonic() - t0,
        )
