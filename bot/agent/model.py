"""The model client: one chat completion through the groq SDK, normalized to plain data."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any, Protocol

import groq

from bot.errors import ConfigError, ModelError

# What a reply looks like once normalized (and journaled):
# {"content": str | None, "tool_calls": [{"id", "name", "arguments"}], "finish_reason": str,
#  "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "latency": float,
#  "error": str | None, "too_large": bool}
Reply = dict[str, Any]
Request = dict[str, Any]


class ModelClient(Protocol):
    def complete(self, request: Request) -> Reply: ...


def _usage(usage: Any) -> dict[str, int]:
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": int(usage.prompt_tokens or 0),
        "completion_tokens": int(usage.completion_tokens or 0),
        "total_tokens": int(usage.total_tokens or 0),
    }


def _empty_reply(**fields: Any) -> Reply:
    reply: Reply = {
        "content": None,
        "tool_calls": [],
        "finish_reason": None,
        "usage": _usage(None),
        "latency": 0.0,
        "error": None,
        "too_large": False,
    }
    reply.update(fields)
    return reply


def _error_body(exc: groq.APIStatusError) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error", body)
    return inner if isinstance(inner, dict) else {}


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

    def complete(self, request: Request) -> Reply:
        t0 = time.monotonic()
        try:
            completion = self.client.chat.completions.create(**request)
        except groq.AuthenticationError as exc:
            raise ConfigError(
                "Groq rejected GROQ_API_KEY (401). Check the key at https://console.groq.com/keys."
            ) from exc
        except groq.APIStatusError as exc:
            err = _error_body(exc)
            latency = time.monotonic() - t0
            if exc.status_code == 400 and err.get("code") == "tool_use_failed":
                # The model produced a malformed call: feed that back, it counts as a turn.
                failed = str(err.get("failed_generation") or "")[:500]
                return _empty_reply(
                    error=f"tool_use_failed: {failed}" if failed else "tool_use_failed",
                    latency=latency,
                )
            if exc.status_code == 413:
                return _empty_reply(too_large=True, error="request too large", latency=latency)
            message = err.get("message") or str(exc)
            raise ModelError(f"Groq answered {exc.status_code}: {message}") from exc
        except (groq.APIConnectionError, groq.APITimeoutError) as exc:
            raise ModelError(
                f"could not reach Groq at {self.client.base_url} after retries: {exc}"
            ) from exc
        latency = time.monotonic() - t0
        choice = completion.choices[0]
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in (choice.message.tool_calls or [])
        ]
        return _empty_reply(
            content=choice.message.content,
            tool_calls=calls,
            finish_reason=choice.finish_reason,
            usage=_usage(completion.usage),
            latency=latency,
        )


def reply_summary(reply: Reply) -> str:
    """A short line for logs: the tool called or what went wrong."""
    if reply.get("error"):
        return f"invalid: {reply['error'][:80]}"
    calls = reply.get("tool_calls") or []
    if not calls:
        return "text reply"
    call = calls[0]
    try:
        args = json.loads(call["arguments"] or "{}")
    except (json.JSONDecodeError, TypeError):
        return f"{call['name']} (bad arguments)"
    path = args.get("path") if isinstance(args, dict) else None
    return f"{call['name']} {path}" if path else str(call["name"])
