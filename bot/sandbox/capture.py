"""What a sandboxed run leaves: its output (head and tail), its status, its report."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bot.sandbox.base import TestResult
from bot.sandbox.jail import KiB, MiB
from bot.sandbox.memory import MEMORY_POLL_SECONDS
from bot.sandbox.pytest_run import (
    result_from_report,
)
from bot.text import joined

REPORT_MAX_BYTES = 1 * MiB

# After a kill, how long to wait for the pipe to drain and bwrap to be reaped.
KILL_GRACE = 5.0


class HeadTail:
    """Keeps the first and the last bytes of a stream in bounded memory."""

    def __init__(self, cap: int) -> None:
        self.head_cap = cap - cap // 2
        self.tail_cap = cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        if not self.dropped:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        return joined(head, self.dropped, tail, "bytes of output")


def read_report(path: Path, *, owner: int | None) -> str | None:
    """The plugin's report, read without following links the sandbox may have planted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        # A hard link to someone else's file shows up as a foreign owner.
        if not stat.S_ISREG(st.st_mode) or st.st_size > REPORT_MAX_BYTES:
            return None
        if owner is not None and st.st_uid != owner:
            return None
        # Empty: the file we made for the report, never written (pytest did not finish).
        return fh.read(REPORT_MAX_BYTES).decode("utf-8", "replace") or None


def build_result(
    *,
    exit_code: int,
    report_json: str | None,
    capture: HeadTail,
    duration: float,
    timed_out: bool,
    cap: int,
    extra: dict[str, object] | None = None,
    command: str = "",
) -> TestResult:
    """TestResult from a finished run; the report counts only if pytest's exit code agrees.

    The plugin runs inside the same process as the code under test, so that code can
    overwrite the report (e.g. from an atexit hook). The exit code is the second witness:
    a report whose `exitstatus` is missing or differs from the real exit code is discarded,
    and the run counts as an error.
    """
    output = capture.text()
    notes: dict[str, object] = dict(extra or {})
    if report_json is not None and not timed_out:
        try:
            claimed = json.loads(report_json).get("exitstatus")
        except (json.JSONDecodeError, AttributeError):
            claimed = None
        if claimed != exit_code:
            notes["report_discarded"] = f"report says exit {claimed}, pytest exited {exit_code}"
            output += f"\n[sandbox: report discarded: {notes['report_discarded']}]"
            report_json = None
    result = result_from_report(
        exit_code=exit_code,
        report_json=report_json,
        output=output,
        duration=duration,
        timed_out=timed_out,
        output_cap=max(cap, len(output)),
        command=command,
    )
    if capture.dropped:
        notes["output_bytes"] = capture.total
    return replace(
        result,
        output_truncated=result.output_truncated or capture.dropped > 0,
        extra=notes,
    )


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def pump_output(
    proc: subprocess.Popen[bytes],
    capture: HeadTail,
    deadline: float,
    over_limit: Callable[[], bool] | None = None,
) -> tuple[int, bool]:
    """Read the process's output until it exits or the deadline passes; (exit, timed_out).

    Reading continuously keeps a chatty test from blocking on a full pipe; `capture` keeps
    memory bounded. On timeout the whole process group is SIGKILLed; bwrap's
    --die-with-parent and pid namespace take every process inside down with it.
    `over_limit` is asked every MEMORY_POLL_SECONDS; when it says so, the run is killed the
    same way (it is not a timeout: the caller knows why).
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    timed_out = killed = False
    next_poll = time.monotonic()

    def wait_for() -> float:
        """Seconds to wait until the deadline or the next poll (polling when it is due)."""
        nonlocal next_poll, killed
        now = time.monotonic()
        if over_limit is not None and now >= next_poll:
            if over_limit():
                killed = True
                return 0.0
            next_poll = now + MEMORY_POLL_SECONDS
        wait = deadline - now
        return min(wait, next_poll - now) if over_limit is not None else wait

    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            wait = wait_for()
            if killed:
                break
            if wait <= 0:
                timed_out = True
                break
            if sel.select(wait):
                data = os.read(fd, 256 * KiB)
                if not data:
                    break
                capture.feed(data)
        if timed_out or killed:
            kill_group(proc.pid)
            # Drain what is left so nothing blocks, bounded in case a writer survived.
            grace_end = time.monotonic() + KILL_GRACE
            while (left := grace_end - time.monotonic()) > 0 and sel.select(left):
                data = os.read(fd, 256 * KiB)
                if not data:
                    break
                capture.feed(data)
    # The pipe can close early (the test closed fds 1 and 2): keep the deadline and the
    # memory limit while waiting for the exit.
    while not (timed_out or killed):
        wait = wait_for()
        if killed:
            break
        if wait <= 0:
            timed_out = True
            break
        try:
            return proc.wait(timeout=wait), False
        except subprocess.TimeoutExpired:
            continue
    kill_group(proc.pid)
    try:
        return proc.wait(timeout=KILL_GRACE), timed_out
    except subprocess.TimeoutExpired:
        proc.kill()  # bwrap itself, should its group have changed
        return proc.wait(), timed_out


def parse_status(data: bytes) -> list[dict[str, object]]:
    """bwrap's --json-status-fd stream: concatenated JSON objects."""
    text = data.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    out: list[dict[str, object]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return out
        if isinstance(obj, dict):
            out.append(obj)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 64 * KiB):
        chunks.append(chunk)
    return b"".join(chunks)
