"""Slow and vanishing request bodies against the real app under a real uvicorn on loopback:
raw sockets send headers and only part of the body."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from rq import Queue

from bot.config import load_settings
from bot.github.webhooks import sign
from bot.web import create_app
from tests.support import free_port
from tests.test_webhooks import SECRET, labeled

PATH = "/api/github/webhooks"


@dataclass
class Server:
    app: FastAPI
    port: int
    queue: Queue

    def deliver(self) -> httpx.Response:
        body = json.dumps(labeled()).encode()
        headers = {
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, SECRET),
            "Content-Type": "application/json",
        }
        return httpx.post(
            f"http://127.0.0.1:{self.port}{PATH}", content=body, headers=headers, timeout=10
        )

    def stall(self, *, declared: int = 5000, sent: bytes = b'{"action": "lab') -> socket.socket:
        """A connection that sends its headers and the first bytes of the body, then waits."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: issues\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
            f"X-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        return sock

    @property
    def slots_in_use(self) -> int:
        return int(self.app.state.body_slots.in_use)


@contextlib.contextmanager
def serving(redis_client: redis.Redis, **limits: float) -> Iterator[Server]:
    queue = Queue("tdd-agent", connection=redis_client)
    app = create_app(
        load_settings({"WEBHOOK_SECRET": SECRET}), redis_client=redis_client, queue=queue, **limits
    )
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,  # records reach pytest's caplog as they are
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield Server(app, port, queue)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Answer:
    status: int | None  # None: closed without a response
    head: str
    closed: bool  # the server closed the connection (EOF)


def read_answer(sock: socket.socket, *, within: float) -> Answer:
    """Everything the server sends until it closes the connection or `within` seconds pass."""
    data = b""
    closed = False
    end = time.monotonic() + within
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    status = int(head[9:12]) if head.startswith("http/1.1 ") else None
    return Answer(status, head, closed)


def wait_for(condition: Callable[[], object], within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_stalled_body_gets_408_and_its_connection_closed(redis_client) -> None:
    with serving(redis_client, body_timeout=0.5) as server:
        sock = server.stall()
        started = time.monotonic()
        answer = read_answer(sock, within=10)
        waited = time.monotonic() - started
        sock.close()
        assert answer.status == 408 and "connection: close" in answer.head
        assert answer.closed
        assert waited >= 0.45, "answered before the deadline"
        assert server.slots_in_use == 0
        assert server.queue.job_ids == []


def test_past_the_cap_a_body_is_refused_at_once_and_deliveries_still_get_through(
    redis_client,
) -> None:
    with serving(redis_client, body_timeout=5.0, max_pending_bodies=2) as server:
        holders = [server.stall(), server.stall()]
        assert wait_for(lambda: server.slots_in_use == 2, within=4)
        extra = server.stall()
        answer = read_answer(extra, within=3)  # well before the 5 s deadline
        extra.close()
        assert answer.status == 503 and answer.closed
        assert "retry-after: 5" in answer.head and "connection: close" in answer.head
        # A delivery whose body comes with its headers needs no slot.
        response = server.deliver()
        assert response.status_code == 202 and "queued" in response.json()
        assert len(server.queue.job_ids) == 1
        for sock in holders:
            sock.close()
        assert wait_for(lambda: server.slots_in_use == 0, within=4)


@pytest.mark.slow
def test_a_delivery_answers_within_a_second_while_200_bodies_stall(redis_client) -> None:
    timeout = 3.0
    with serving(redis_client, body_timeout=timeout) as server:
        stalled = [server.stall() for _ in range(200)]
        try:
            # The default cap of 100 is full: every slot is held by a stalled body.
            assert wait_for(lambda: server.slots_in_use == 100, within=timeout)
            started = time.monotonic()
            response = server.deliver()
            assert time.monotonic() - started < 1.0
            assert response.status_code == 202 and "queued" in response.json()
            assert len(server.queue.job_ids) == 1
            # Every stalled connection is answered (503 past the cap, 408 at the deadline)
            # and closed, none held open.
            answers = [read_answer(sock, within=timeout + 15) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
        statuses = sorted(a.status or 0 for a in answers)
        assert all(a.closed for a in answers)
        assert set(statuses) == {408, 503}, statuses
        assert statuses.count(408) >= 100
        assert server.slots_in_use == 0


def test_a_client_that_disconnects_mid_body_logs_one_info_line(
    redis_client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with serving(redis_client) as server:
        sock = server.stall(declared=4096, sent=b'{"action": "labeled", "issue": {')
        time.sleep(0.1)  # past the slotless wait: the reader now holds a slot
        sock.close()

        def web_lines() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "tdd_agent.web"]

        assert wait_for(lambda: web_lines(), within=5)
        assert wait_for(lambda: server.slots_in_use == 0, within=5)
    (line,) = web_lines()
    assert line.levelno == logging.INFO
    assert "disconnected after 32 body bytes" in line.getMessage()
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
