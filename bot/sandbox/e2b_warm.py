"""The host's side of a warm pytest server in an E2B sandbox: its stream, requests, output."""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
from connectrpc.errors import ConnectError
from e2b import Sandbox as E2BClient
from e2b.exceptions import (
    SandboxException,
    ServiceBusyException,
)
from e2b.sandbox.commands.command_handle import CommandExitException
from e2b.sandbox_sync.commands.command_handle import CommandHandle

from bot.errors import ServerFailed, StreamLost
from bot.text import joined

log = logging.getLogger(__name__)


# Failures of the SDK, its transport or the sandbox, as opposed to the code under test.
# ConnectError escapes the SDK unmapped when a stream drops while the sandbox stays healthy.
SDK_ERRORS: tuple[type[BaseException], ...] = (
    StreamLost,
    SandboxException,
    ServiceBusyException,
    ConnectError,
    httpx.HTTPError,
    OSError,
)


class CappedOutput:
    """Interleaved stdout and stderr, keeping only the head and the tail past `cap`."""

    def __init__(self, cap: int) -> None:
        self._half = max(cap // 2, 1)
        self._head: list[str] = []
        self._head_len = 0
        self._tail = ""
        self._dropped = 0

    def add(self, chunk: str) -> None:
        if self._head_len < self._half:
            take = chunk[: self._half - self._head_len]
            self._head.append(take)
            self._head_len += len(take)
            chunk = chunk[len(take) :]
        if chunk:
            self._tail += chunk
            if len(self._tail) > self._half:
                self._dropped += len(self._tail) - self._half
                self._tail = self._tail[-self._half :]

    @property
    def truncated(self) -> bool:
        return self._dropped > 0

    def text(self) -> str:
        head = "".join(self._head)
        if self._dropped:
            return joined(head, self._dropped, self._tail)
        return head + self._tail


class WarmServer:
    """The host's side of one warm pytest server running in the sandbox.

    A daemon thread follows the server's output stream and queues each JSON line it prints,
    then how the stream ended: "exit" when the server ended, "lost" when only the stream
    broke (envd keeps the process running, and drops output while nobody is connected).
    """

    def __init__(self, sbx: E2BClient, handle: CommandHandle[Any], cwd: str) -> None:
        self.sbx = sbx
        self.pid: int = handle.pid
        self.cwd = cwd
        self.preloaded: frozenset[str] = frozenset()
        self.executable = "python3"
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stderr = CappedOutput(4000)
        self._ended: str | None = None
        self._lost: str | None = None
        self._follow(handle)

    def _follow(self, handle: CommandHandle[Any]) -> None:
        thread = threading.Thread(
            target=self._pump, args=(handle,), name=f"e2b-warm-{self.pid}", daemon=True
        )
        thread.start()

    def _pump(self, handle: CommandHandle[Any]) -> None:
        partial = [""]

        def on_stdout(chunk: str) -> None:
            *lines, partial[0] = (partial[0] + chunk).split("\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self._events.put(("message", message))

        try:
            result = handle.wait(on_stdout=on_stdout, on_stderr=self._stderr.add)
            self._events.put(("exit", f"exit code {result.exit_code}"))
        except CommandExitException as err:
            self._events.put(("exit", err.error or f"exit code {err.exit_code}"))
        except Exception as err:  # the SDK raises a bare Exception for a stream without end
            self._events.put(("lost", f"{type(err).__name__}: {err}"))

    def _note(self, kind: str, value: Any) -> None:
        if kind == "exit":
            self._ended = str(value)
        elif kind == "lost":
            self._lost = str(value)

    def ready(self) -> bool:
        """Whether the server can take a request; reattaches a stream that broke while
        idle (nothing was due on it, so nothing was lost)."""
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            self._note(kind, value)  # answers still queued were given up on: dropped
        if self._ended is not None:
            return False
        if self._lost is not None:
            try:
                handle = self.sbx.commands.connect(self.pid, timeout=0, retain_output=False)
            except SDK_ERRORS as err:
                self._ended = f"could not reattach to its stream ({err})"
                return False
            self._lost = None
            self._follow(handle)
        return True

    def why(self) -> str:
        """Why the server cannot be used, with the tail of its stderr."""
        if self._ended is not None:
            reason = f"the warm server (pid {self.pid}) ended: {self._ended}"
        elif self._lost is not None:
            reason = f"lost the warm server's output stream (pid {self.pid}): {self._lost}"
        else:
            reason = f"the warm server (pid {self.pid}) did not answer in time"
        stderr = self._stderr.text().strip()
        return f"{reason}; stderr: {stderr[-500:]}" if stderr else reason

    def call(
        self, message: dict[str, Any], deadline: float, request_timeout: float
    ) -> dict[str, Any]:
        """Send one request line and wait for the answer with the same id."""
        try:
            self.sbx.commands.send_stdin(
                self.pid, json.dumps(message) + "\n", request_timeout=request_timeout
            )
        except SDK_ERRORS as err:
            raise ServerFailed(f"could not send the request to the warm server: {err}") from err
        return self.next_message(message["id"], deadline)

    def next_message(self, message_id: str | None, deadline: float) -> dict[str, Any]:
        """The next line from the server (with `message_id`, if given) before `deadline`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerFailed(self.why())
            try:
                kind, value = self._events.get(timeout=remaining)
            except queue.Empty:
                continue
            if kind != "message":
                self._note(kind, value)
                raise ServerFailed(self.why())
            if message_id is None or value.get("id") == message_id:
                return dict(value)

    def kill(self, request_timeout: float) -> None:
        try:
            self.sbx.commands.kill(self.pid, request_timeout=request_timeout)
        except SDK_ERRORS as err:
            log.warning("could not kill the warm server (pid %s): %s", self.pid, err)


def reply_output(reply: Mapping[str, Any]) -> tuple[str, bool]:
    """The warm server's head and tail of a run's output, like CappedOutput.text()."""
    head = base64.b64decode(reply["head"])
    tail = base64.b64decode(reply["tail"])
    # Counted in bytes here, not characters: the same for the ASCII pytest mostly prints.
    dropped = int(reply["total"]) - len(head) - len(tail)
    text_head, text_tail = head.decode("utf-8", "replace"), tail.decode("utf-8", "replace")
    if dropped > 0:
        return joined(text_head, dropped, text_tail), True
    return text_head + text_tail, False
