"""E2B backend: run pytest in one remote E2B sandbox through the official SDK.

One sandbox serves every run of an agent run; its id is exposed so the caller can journal
it and a restarted worker can reattach with `E2BSandbox(sandbox_id=...)`. Each run goes
into a fresh directory, under `timeout -s KILL` because the SDK's own timeout only stops
streaming while the process keeps running in the sandbox.
"""

from __future__ import annotations

import logging
import posixpath
import random
import secrets
import shlex
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import httpx
from connectrpc.errors import ConnectError
from e2b import Sandbox as E2BClient
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import CommandExitException

from bot.errors import ConfigError, SandboxError
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.pytest_run import (
    DEFAULT_OUTPUT_CAP,
    PLUGIN_MODULE,
    PLUGIN_SOURCE,
    REPORT_ENV,
    pytest_args,
    result_from_report,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class _StreamLost(Exception):
    """A command's output stream ended without its end event."""


# Failures of the SDK, its transport or the sandbox, as opposed to the code under test.
# ConnectError escapes the SDK unmapped when a stream drops while the sandbox stays healthy.
_SDK_ERRORS: tuple[type[BaseException], ...] = (
    _StreamLost,
    SandboxException,
    ServiceBusyException,
    ConnectError,
    httpx.HTTPError,
    OSError,
)
# `timeout` exits 124 after its signal, but with `-s KILL` it usually dies with its process
# group: bash reports 137, and envd reports a signal death as -1 ("signal: killed").
_TIMEOUT_EXIT_CODES = (124, 137)
# The client-side stream deadline only backs up `timeout -s KILL`; it must never fire first.
_STREAM_GRACE = 15.0
_SUPPORT_DIR = ".tdd"  # per-run plugin and report; pytest does not recurse into dot-dirs


class E2BSandbox:
    """The Sandbox protocol on E2B: one sandbox, created lazily, reused across runs."""

    def __init__(
        self,
        *,
        api_key: str,
        template: str = "base",
        sandbox_timeout: int = 900,
        test_timeout: float = 60.0,
        sandbox_id: str | None = None,
        create_attempts: int = 4,
        backoff: float = 1.0,
        backoff_max: float = 8.0,
        create_timeout: float = 60.0,
        request_timeout: float = 30.0,
        python: str = "python3",
        workdir: str = "/tmp/tdd",
        output_cap: int = DEFAULT_OUTPUT_CAP,
        metadata: Mapping[str, str] | None = None,
        domain: str = "e2b.app",
        debug: bool = False,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`sandbox_timeout` is the sandbox's lifetime in seconds (keep it within the run's
        wall budget); `test_timeout` bounds one pytest run. `api_url`/`sandbox_url` and
        `debug` point the SDK elsewhere than E2B's cloud (tests, self-hosting)."""
        if not api_key and not debug:
            raise ConfigError("The E2B API key is empty: set E2B_API_KEY to a key from e2b.dev.")
        if test_timeout <= 0 or sandbox_timeout <= 0:
            raise ConfigError("E2B sandbox_timeout and test_timeout must be positive.")
        if create_attempts < 1:
            raise ConfigError("E2B create_attempts must be at least 1.")
        self._api_key = api_key
        self._template = template
        self._sandbox_timeout = int(sandbox_timeout)
        self._test_timeout = float(test_timeout)
        self._sandbox_id = sandbox_id
        self._create_attempts = create_attempts
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._create_timeout = create_timeout
        self._request_timeout = request_timeout
        self._python = python
        self._workdir = workdir.rstrip("/") or "/"
        self._output_cap = output_cap
        self._metadata = dict(metadata or {})
        self._domain = domain
        self._debug = debug
        self._api_url = api_url
        self._sandbox_url = sandbox_url
        self._sleep = sleep
        self._sbx: E2BClient | None = None
        self._runs = 0
        self._closed = False

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox in use (None before the first run); journal it to reattach later."""
        return self._sandbox_id

    def attach(self, sandbox_id: str) -> None:
        """Reattach to `sandbox_id` (from a resumed run's journal) on first use, if alive."""
        if self._sbx is None:
            self._sandbox_id = sandbox_id

    def start(self) -> str:
        """Create or reattach the sandbox now rather than on the first run; returns its id."""
        return self._ensure().sandbox_id

    def run_tests(self, workspace: Workspace) -> TestResult:
        """Run pytest over `workspace` in a fresh directory of the shared sandbox."""
        files = _workspace_files(workspace)
        sbx = self._ensure()
        try:
            return self._run(sbx, files)
        except _SDK_ERRORS as first:
            log.warning("E2B sandbox %s failed mid-run (%s); reconnecting", sbx.sandbox_id, first)
        self._sbx = None
        sbx = self._ensure()  # same sandbox if it is still alive, else a new one
        try:
            return self._run(sbx, files)
        except _SDK_ERRORS as err:
            self._sbx = None
            raise SandboxError(
                f"E2B sandbox {sbx.sandbox_id} failed twice while running tests: {err}"
            ) from err

    def close(self) -> None:
        """Kill the sandbox; safe to call twice or when none was ever created."""
        if self._closed:
            return
        self._closed = True
        self._sbx = None
        if self._sandbox_id is not None:
            self._kill_quietly(self._sandbox_id)

    def __enter__(self) -> E2BSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sandbox lifecycle -----------------------------------------------------------

    def _params(self, request_timeout: float) -> dict[str, Any]:
        # Explicit values keep the SDK from falling back to E2B_* environment variables,
        # and retries=0 leaves retrying to our own bounded loop.
        params: dict[str, Any] = {
            "api_key": self._api_key or None,
            "domain": self._domain,
            "debug": self._debug,
            "request_timeout": request_timeout,
            "retries": 0,
            "api_url": self._api_url or f"https://api.{self._domain}",
        }
        if self._sandbox_url:
            params["sandbox_url"] = self._sandbox_url
        return params

    def _ensure(self) -> E2BClient:
        if self._closed:
            raise SandboxError("This E2B sandbox was closed; create a new E2BSandbox.")
        if self._sbx is None:
            sbx = self._reconnect(self._sandbox_id) if self._sandbox_id else None
            self._sbx = sbx or self._create()
            self._sandbox_id = self._sbx.sandbox_id
        return self._sbx

    def _reconnect(self, sandbox_id: str) -> E2BClient | None:
        """Reattach to a sandbox by id; None when it is gone (a new one must be made)."""
        try:
            return E2BClient.connect(
                sandbox_id, timeout=self._sandbox_timeout, **self._params(self._create_timeout)
            )
        except AuthenticationException as err:
            raise _auth_error(err) from err
        except NotFoundException:
            log.info("E2B sandbox %s is gone; creating a new one", sandbox_id)
        except _SDK_ERRORS as err:
            log.warning("cannot reconnect to E2B sandbox %s (%s); replacing it", sandbox_id, err)
            # It may still be alive and billing until its timeout.
            self._kill_quietly(sandbox_id)
        return None

    def _create(self) -> E2BClient:
        # One idempotency key for all attempts: a 5xx after the sandbox was made must not
        # leave a second, orphaned sandbox behind.
        key = str(uuid.uuid4())

        def create() -> E2BClient:
            return E2BClient.create(
                template=self._template,
                timeout=self._sandbox_timeout,
                metadata=self._metadata,
                idempotency_key=key,
                **self._params(self._create_timeout),
            )

        sbx = self._retrying(create, "create an E2B sandbox")
        log.info("created E2B sandbox %s from template %s", sbx.sandbox_id, self._template)
        return sbx

    def _retrying(self, op: Callable[[], T], what: str) -> T:
        """Run `op`, retrying 5xx, 429 and timeouts with capped, jittered backoff."""
        last: BaseException | None = None
        for attempt in range(1, self._create_attempts + 1):
            try:
                return op()
            except AuthenticationException as err:
                raise _auth_error(err) from err
            except _SDK_ERRORS as err:
                if not _retryable(err):
                    raise SandboxError(f"Could not {what}: {err}") from err
                last = err
                if attempt == self._create_attempts:
                    break
                delay = min(self._backoff * 2 ** (attempt - 1), self._backoff_max)
                # Jitter spreads workers that hit the concurrency cap at the same moment.
                delay *= 0.5 + random.random() / 2
                log.warning("could not %s (%s); retrying in %.1fs", what, err, delay)
                self._sleep(delay)
        raise SandboxError(
            f"Could not {what} after {self._create_attempts} attempts "
            f"(E2B overloaded, down or at the concurrency limit); last error: {last}"
        ) from last

    def _kill_quietly(self, sandbox_id: str) -> None:
        try:
            E2BClient.kill(sandbox_id, **self._params(self._request_timeout))
        except (*_SDK_ERRORS, AuthenticationException) as err:
            # Not fatal: the sandbox dies by itself when its timeout runs out.
            log.warning("could not kill E2B sandbox %s: %s", sandbox_id, err)

    # -- one test run ----------------------------------------------------------------

    def _run(self, sbx: E2BClient, files: Mapping[str, str]) -> TestResult:
        self._runs += 1
        # A random suffix keeps a reattached worker from reusing a dead worker's directory.
        run_dir = f"{self._workdir}/run-{self._runs}-{secrets.token_hex(4)}"
        support = f"{run_dir}/{_SUPPORT_DIR}"
        report_path = f"{support}/report.json"
        entries: list[Any] = [
            {"path": f"{run_dir}/{rel}", "data": text} for rel, text in files.items()
        ]
        entries.append({"path": f"{support}/{PLUGIN_MODULE}.py", "data": PLUGIN_SOURCE})
        sbx.files.write_files(entries, request_timeout=self._request_timeout)

        # The env names only run paths: the API key never enters the sandbox.
        envs = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": support, REPORT_ENV: report_path}
        cmd = shlex.join(
            ["timeout", "-s", "KILL", f"{self._test_timeout:g}", *pytest_args(self._python)]
        )
        stream_timeout = self._test_timeout + _STREAM_GRACE
        output = _CappedOutput(self._output_cap)
        started = time.monotonic()
        handle = sbx.commands.run(
            cmd,
            background=True,
            envs=envs,
            cwd=run_dir,
            timeout=stream_timeout,
            retain_output=False,
        )
        try:
            exit_code = handle.wait(on_stdout=output.add, on_stderr=output.add).exit_code
        except CommandExitException as err:
            # A failing suite exits non-zero: an ordinary result, not an error.
            exit_code = _exit_code(err.exit_code, err.error, output)
        except TimeoutException as err:
            if isinstance(err, (SandboxNotRunningException, SandboxUnreachableException)):
                raise
            if time.monotonic() - started < stream_timeout - 1:
                raise  # cancelled by the sandbox or its proxy, not our deadline
            self._kill_process_quietly(sbx, handle.pid)
            output.add(f"\n[no result {stream_timeout:g}s after start: killed]\n")
            exit_code = 124
        except _SDK_ERRORS:
            raise
        except Exception as err:
            # The SDK raises a bare Exception when a stream ends cleanly but early.
            raise _StreamLost(f"output stream of pid {handle.pid} broke off: {err}") from err
        duration = time.monotonic() - started
        timed_out = exit_code in _TIMEOUT_EXIT_CODES and duration >= self._test_timeout
        try:
            report = sbx.files.read(report_path, request_timeout=self._request_timeout)
        except FileNotFoundException:
            report = None  # pytest never finished; result_from_report makes it an error
        result = result_from_report(
            exit_code=exit_code,
            report_json=report,
            output="",
            duration=duration,
            timed_out=timed_out,
            output_cap=self._output_cap,
        )
        # The output was capped while streaming, so its clip marker carries the true count.
        return replace(result, output=output.text(), output_truncated=output.truncated)

    def _kill_process_quietly(self, sbx: E2BClient, pid: int) -> None:
        try:
            sbx.commands.kill(pid, request_timeout=self._request_timeout)
        except _SDK_ERRORS as err:
            log.warning("could not kill pid %s in E2B sandbox %s: %s", pid, sbx.sandbox_id, err)


class _CappedOutput:
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
            return f"{head}\n... [{self._dropped} characters clipped] ...\n{self._tail}"
        return head + self._tail


def _exit_code(code: int, error: str | None, output: _CappedOutput) -> int:
    """Map envd's -1 for a signal death to the shell's 128+9 convention."""
    if code >= 0:
        return code
    output.add(f"\n[process ended: {error or 'unknown signal'}]\n")
    return 137 if error and "killed" in error else 1


def _retryable(err: BaseException) -> bool:
    if isinstance(err, (RateLimitException, ServiceBusyException, TimeoutException)):
        return True
    if isinstance(err, (httpx.TransportError, OSError)):
        return True
    status = getattr(err, "status_code", None)
    return isinstance(status, int) and status >= 500


def _auth_error(err: BaseException) -> ConfigError:
    return ConfigError(f"E2B rejected the API key ({err}): check E2B_API_KEY.")


def _workspace_files(workspace: Workspace) -> dict[str, str]:
    """Validate relative paths: nothing may land outside the run directory."""
    files: dict[str, str] = {}
    for rel, text in workspace.items():
        norm = posixpath.normpath(rel)
        if posixpath.isabs(norm) or norm == "." or norm.split("/")[0] in ("..", _SUPPORT_DIR):
            raise ValueError(f"workspace path {rel!r} must stay inside the run directory")
        files[norm] = text
    return files
