"""The Groq fake speaks the real SDK's language: replies parse, errors map, retries happen."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import groq
import httpx
import pytest

from tests.fakes.groq import (
    CHAT_PATH,
    EXHAUSTED_MESSAGE,
    FakeGroq,
    delay,
    disconnect,
    estimate_prompt_tokens,
    rate_limited,
    raw,
    server_error,
    text,
    too_large,
    tool_call,
    tool_calls,
    tool_use_failed,
)

MODEL = "openai/gpt-oss-120b"
ROOT = Path(__file__).resolve().parents[1]
WRITE_FILE_TOOL = {
    "type": "function",
    "function": {
        "name": "write_file",
        "description": "Write a whole file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
}
RUN_TESTS_TOOL = {
    "type": "function",
    "function": {"name": "run_tests", "parameters": {"type": "object", "properties": {}}},
}
TOOLS = [WRITE_FILE_TOOL, RUN_TESTS_TOOL]
MESSAGES = [
    {"role": "system", "content": "You write code until the tests pass."},
    {"role": "user", "content": "Make test_add pass."},
]


@pytest.fixture
def fake() -> Iterator[FakeGroq]:
    with FakeGroq() as f:
        yield f


def client(fake: FakeGroq, *, max_retries: int = 0, timeout: float = 5.0) -> groq.Groq:
    return groq.Groq(api_key="test", base_url=fake.url, max_retries=max_retries, timeout=timeout)


def ask(c: groq.Groq, **kwargs: object) -> groq.types.chat.ChatCompletion:
    params: dict[str, object] = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS}
    params.update(kwargs)
    return c.chat.completions.create(**params)  # type: ignore[call-overload]


def test_tool_call_reply_parses_with_real_sdk(fake: FakeGroq) -> None:
    fake.script(
        tool_call(
            "write_file",
            {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"},
            prompt_tokens=123,
            completion_tokens=17,
        )
    )
    result = ask(client(fake))

    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_") and len(call.id) <= 16
    assert call.function.name == "write_file"
    assert json.loads(call.function.arguments) == {
        "path": "calc.py",
        "content": "def add(a, b):\n    return a + b\n",
    }
    assert result.usage.prompt_tokens == 123
    assert result.usage.completion_tokens == 17
    assert result.usage.total_tokens == 140
    assert result.usage.queue_time is not None and result.usage.total_time is not None
    assert result.model == MODEL
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert result.x_groq is not None and result.x_groq.id.startswith("req_")
    assert result.system_fingerprint and result.system_fingerprint.startswith("fp_")


def test_tool_call_wire_shape_matches_groq(fake: FakeGroq) -> None:
    fake.script(tool_call("run_tests", {}))
    response = (
        client(fake)
        .chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
        .http_response
    )
    body = response.json()

    message = body["choices"][0]["message"]
    assert "content" not in message, "Groq omits content on tool-call replies"
    assert message["tool_calls"][0]["function"] == {"name": "run_tests", "arguments": "{}"}
    assert body["choices"][0]["logprobs"] is None
    assert set(body["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "queue_time",
        "prompt_time",
        "completion_time",
        "total_time",
    }
    assert body["usage_breakdown"] is None
    assert response.headers["x-request-id"] == body["x_groq"]["id"]


def test_raw_string_arguments_are_passed_through(fake: FakeGroq) -> None:
    fake.script(tool_call("write_file", '{"path": "a.py", '), tool_call("run_tests", "null"))
    c = client(fake)

    truncated = ask(c).choices[0].message.tool_calls[0].function.arguments
    null = ask(c).choices[0].message.tool_calls[0].function.arguments

    assert truncated == '{"path": "a.py", '
    assert null == "null"


def test_parallel_tool_calls(fake: FakeGroq) -> None:
    fake.script(tool_calls([("write_file", {"path": "a", "content": ""}), ("run_tests", {})]))
    calls = ask(client(fake)).choices[0].message.tool_calls

    assert [c.function.name for c in calls] == ["write_file", "run_tests"]
    assert calls[0].id != calls[1].id


def test_text_reply(fake: FakeGroq) -> None:
    fake.script(text("All tests pass.", completion_tokens=4))
    result = ask(client(fake))

    assert result.choices[0].message.content == "All tests pass."
    assert result.choices[0].message.tool_calls is None
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == 4


def test_default_usage_grows_with_request_and_is_deterministic(fake: FakeGroq) -> None:
    fake.script(text("ok"), text("ok"), text("ok"))
    c = client(fake)
    big = [*MESSAGES, {"role": "user", "content": "x" * 4000}]

    small_a = ask(c).usage.prompt_tokens
    small_b = ask(c).usage.prompt_tokens
    large = ask(c, messages=big).usage.prompt_tokens

    assert small_a == small_b == estimate_prompt_tokens(fake.requests[0].json or {})
    assert large >= small_a + 1000
    assert large == estimate_prompt_tokens(fake.requests[2].json or {})


def test_rate_limit_is_retried_after_retry_after(fake: FakeGroq) -> None:
    fake.script(rate_limited(retry_after=1), text("after the wait"))
    started = time.monotonic()
    result = ask(client(fake, max_retries=2))
    elapsed = time.monotonic() - started

    assert result.choices[0].message.content == "after the wait"
    # The SDK's own backoff would be <= 0.5 s; >= 1 s proves retry-after was honoured.
    assert 0.95 <= elapsed < 3
    assert [r.status for r in fake.requests] == [429, 200]
    assert [r.retry_count for r in fake.requests] == [0, 1]


def test_rate_limit_error_body_and_headers(fake: FakeGroq) -> None:
    fake.script(rate_limited(retry_after=7))
    with pytest.raises(groq.RateLimitError) as info:
        ask(client(fake, max_retries=0))

    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "7"
    assert err.body["error"]["code"] == "rate_limit_exceeded"
    assert err.body["error"]["type"] == "tokens"
    assert f"Rate limit reached for model `{MODEL}`" in err.body["error"]["message"]
    assert "Please try again in 7s" in err.body["error"]["message"]


def test_server_error_then_success(fake: FakeGroq) -> None:
    fake.script(server_error(), tool_call("run_tests", {}))
    result = ask(client(fake, max_retries=2))

    assert result.choices[0].message.tool_calls[0].function.name == "run_tests"
    assert [(r.status, r.kind) for r in fake.requests] == [(500, "error"), (200, "completion")]
    assert fake.remaining == 0


def test_server_error_exhausts_retries(fake: FakeGroq) -> None:
    fake.script(server_error(503, headers={"retry-after": "0.01"}), server_error(503))
    with pytest.raises(groq.InternalServerError) as info:
        ask(client(fake, max_retries=1))

    assert info.value.status_code == 503
    assert info.value.body == {
        "error": {"message": "Internal Server Error", "type": "internal_server_error"}
    }
    assert len(fake.requests) == 2


def test_tool_use_failed_is_bad_request_and_not_retried(fake: FakeGroq) -> None:
    generation = '<function=write_file>{"path": "a.py"</function>'
    fake.script(tool_use_failed(failed_generation=generation), text("unused"))
    with pytest.raises(groq.BadRequestError) as info:
        ask(client(fake, max_retries=2))

    error = info.value.body["error"]
    assert error["code"] == "tool_use_failed"
    assert error["type"] == "invalid_request_error"
    assert error["failed_generation"] == generation
    assert "Failed to call a function" in error["message"]
    assert len(fake.requests) == 1
    assert fake.remaining == 1


def test_too_large_is_413_and_not_retried(fake: FakeGroq) -> None:
    fake.script(too_large(limit=6000, requested=9000))
    with pytest.raises(groq.APIStatusError) as info:
        ask(client(fake, max_retries=2))

    assert info.value.status_code == 413
    message = info.value.body["error"]["message"]
    assert message.startswith(f"Request too large for model `{MODEL}`")
    assert "Limit 6000, Requested 9000" in message
    assert info.value.body["error"]["code"] == "rate_limit_exceeded"
    assert len(fake.requests) == 1


def test_missing_auth_is_401_and_keeps_script(fake: FakeGroq) -> None:
    fake.script(text("kept"))
    no_header = httpx.post(fake.url + CHAT_PATH, json={"model": MODEL, "messages": MESSAGES})
    # Omit() drops the SDK's Authorization header, the way a missing key would reach Groq.
    no_auth = groq.Groq(
        api_key="unused",
        base_url=fake.url,
        max_retries=2,
        default_headers={"Authorization": groq.Omit()},
    )
    with pytest.raises(groq.AuthenticationError) as info:
        no_auth.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert no_header.status_code == 401
    assert no_header.json()["error"]["code"] == "invalid_api_key"
    assert info.value.status_code == 401
    assert info.value.body["error"]["message"] == "Invalid API Key"
    assert [r.kind for r in fake.requests] == ["invalid", "invalid"]
    assert "authorization" not in fake.requests[1].headers
    assert fake.remaining == 1
    assert ask(client(fake)).choices[0].message.content == "kept"


def test_configured_api_key_is_enforced() -> None:
    with FakeGroq([text("hi")], api_key="gsk_right") as fake:
        with pytest.raises(groq.AuthenticationError):
            groq.Groq(
                api_key="gsk_wrong", base_url=fake.url, max_retries=0
            ).chat.completions.create(model=MODEL, messages=MESSAGES)
        ok = groq.Groq(api_key="gsk_right", base_url=fake.url, max_retries=0)
        assert (
            ok.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
            == "hi"
        )
        assert fake.requests[1].headers["authorization"] == "Bearer gsk_right"


def test_invalid_requests_are_400_without_consuming_script(fake: FakeGroq) -> None:
    fake.script(text("kept"))
    headers = {"Authorization": "Bearer test"}
    no_model = httpx.post(fake.url + CHAT_PATH, headers=headers, json={"messages": MESSAGES})
    empty = httpx.post(fake.url + CHAT_PATH, headers=headers, json={"model": MODEL, "messages": []})
    with pytest.raises(groq.BadRequestError) as info:
        client(fake).chat.completions.create(
            model=MODEL, messages=[*MESSAGES, {"role": "tool", "content": "passed"}]
        )

    assert no_model.status_code == 400 and "'model'" in no_model.json()["error"]["message"]
    assert empty.status_code == 400 and "minimum number of items is 1" in empty.text
    assert "tool_call_id" in info.value.body["error"]["message"]
    assert fake.remaining == 1


def test_unknown_path_is_404(fake: FakeGroq) -> None:
    response = httpx.post(fake.url + "/v1/chat/completions", json={})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert fake.requests[0].kind == "not_found"


def test_script_exhausted_fails_loudly_once(fake: FakeGroq) -> None:
    with pytest.raises(groq.InternalServerError) as info:
        ask(client(fake, max_retries=2))

    assert EXHAUSTED_MESSAGE in str(info.value)
    assert fake.exhausted == 1
    # x-should-retry: false keeps the SDK from hammering an empty script.
    assert [(r.status, r.kind) for r in fake.requests] == [(500, "exhausted")]


def test_request_fields_are_recorded(fake: FakeGroq) -> None:
    fake.script(tool_call("write_file", {"path": "a", "content": "b"}))
    ask(
        client(fake),
        tool_choice="required",
        parallel_tool_calls=False,
        max_completion_tokens=512,
        temperature=0.2,
    )

    (request,) = fake.requests
    assert request.method == "POST" and request.path == CHAT_PATH
    assert request.model == MODEL
    assert request.messages == MESSAGES
    assert request.tools == TOOLS
    assert request.tool_choice == "required"
    assert request.parallel_tool_calls is False
    assert request.json is not None and request.json["max_completion_tokens"] == 512
    assert request.headers["authorization"] == "Bearer test"
    assert request.status == 200 and request.kind == "completion"


def test_tool_not_offered_is_rejected_like_groq(fake: FakeGroq) -> None:
    fake.script(tool_call("delete_repo", {}), tool_call("delete_repo", {}))
    c = client(fake)
    with pytest.raises(groq.BadRequestError) as info:
        ask(c)
    allowed = ask(c, disable_tool_validation=True)

    assert info.value.body["error"]["code"] == "tool_use_failed"
    assert "'delete_repo' which was not in request.tools" in info.value.body["error"]["message"]
    assert allowed.choices[0].message.tool_calls[0].function.name == "delete_repo"


def test_callable_item_answers_from_request(fake: FakeGroq) -> None:
    fake.script(lambda req: text(f"{len(req['messages'])} messages for {req['model']}"))
    result = ask(client(fake))

    assert result.choices[0].message.content == f"2 messages for {MODEL}"


def test_callable_that_raises_is_reported(fake: FakeGroq) -> None:
    fake.script(lambda req: req["missing"])
    with pytest.raises(groq.InternalServerError) as info:
        ask(client(fake, max_retries=2))

    assert "script callable raised KeyError" in str(info.value)
    assert fake.errors == ["KeyError: 'missing'"]
    assert len(fake.requests) == 1


def test_delay_trips_client_timeout_and_consumes_item(fake: FakeGroq) -> None:
    fake.script(delay(3, then=text("too late")), text("on time"))
    c = client(fake, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(groq.APITimeoutError):
        ask(c)

    assert time.monotonic() - started < 1.5
    assert ask(c).choices[0].message.content == "on time"
    assert fake.remaining == 0


def test_delay_then_answers(fake: FakeGroq) -> None:
    fake.script(delay(0.2, then=lambda req: text(req["model"])))
    started = time.monotonic()

    assert ask(client(fake)).choices[0].message.content == MODEL
    assert time.monotonic() - started >= 0.2


def test_disconnect_then_retry(fake: FakeGroq) -> None:
    fake.script(disconnect(), text("reconnected"))
    result = ask(client(fake, max_retries=1))

    assert result.choices[0].message.content == "reconnected"
    assert [(r.status, r.kind) for r in fake.requests] == [(0, "disconnect"), (200, "completion")]


def test_raw_body_is_sent_verbatim(fake: FakeGroq) -> None:
    fake.script(raw(502, "<html>Bad Gateway</html>", content_type="text/html"))
    with pytest.raises(groq.InternalServerError) as info:
        ask(client(fake))

    assert info.value.status_code == 502
    assert info.value.body == "<html>Bad Gateway</html>"


def test_script_appended_from_another_thread_concurrently(fake: FakeGroq) -> None:
    c = client(fake)
    adder = threading.Thread(target=lambda: fake.extend(text(str(i)) for i in range(20)))
    adder.start()
    adder.join()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: ask(c).choices[0].message.content, range(20)))

    assert sorted(answers, key=int) == [str(i) for i in range(20)]
    assert len(fake.wait_for_requests(20)) == 20
    assert fake.exhausted == 0


def test_stop_frees_port_and_threads() -> None:
    before = threading.active_count()
    fake = FakeGroq([text("hi"), delay(30)]).start()
    port = fake.port
    c = client(fake, timeout=10)
    ask(c)  # leaves an idle keep-alive connection open
    outcome: list[BaseException] = []

    def wait_for_delayed_reply() -> None:
        try:
            ask(c)
        except groq.APIError as exc:
            outcome.append(exc)

    pending = threading.Thread(target=wait_for_delayed_reply)
    pending.start()
    fake.wait_for_requests(2)

    started = time.monotonic()
    fake.stop()
    pending.join(5)

    assert time.monotonic() - started < 2
    assert threading.active_count() == before
    assert isinstance(outcome[0], groq.APIConnectionError), "stop() aborts a pending delay"
    # Nothing listens any more, and a new fake can take over the very same port.
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    with FakeGroq([text("again")], port=port) as second:
        assert ask(client(second)).choices[0].message.content == "again"
    fake.stop()  # idempotent
    c.close()


def test_cli_serves_script_and_logs_requests(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"tool_call": {"name": "run_tests", "arguments": {}, "prompt_tokens": 50}},
                {"rate_limited": {"retry_after": 0.01}},
                {"text": "done"},
            ]
        )
    )
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.fakes.groq", "--script", str(script)),
            *("--port-file", str(port_file), "--log", str(log)),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c = groq.Groq(api_key="test", base_url=f"http://127.0.0.1:{port_file.read_text()}")

        first = ask(c)
        second = ask(c)
    finally:
        proc.terminate()
        proc.wait(5)

    assert first.usage.prompt_tokens == 50
    assert first.choices[0].message.tool_calls[0].function.name == "run_tests"
    assert second.choices[0].message.content == "done"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["status"], x["kind"]) for x in lines] == [
        (200, "completion"),
        (429, "error"),
        (200, "completion"),
    ]
    assert lines[0]["json"]["tools"] == TOOLS
    assert proc.returncode == 0
