"""E2B backend: run pytest in one remote E2B sandbox through the official SDK.

One sandbox serves every run of an agent run; its id is exposed so the caller can journal
it and a restarted worker can reattach with `E2BSandbox(sandbox_id=...)`. Each run goes
into a fresh directory, under `timeout -s KILL` because the SDK's own timeout only stops
streaming while the process keeps running in the sandbox.

Runs use the shared pytest command line (pytest_run.py) with paths relative to the run
directory: `-c .tdd/<config> --rootdir . --confcutdir .`. The sandbox is reused by every
run and all of it belongs to the user the code runs as, so what the local runner gets from
read-only mounts comes here from per-run names: each run has its own config file, its
report under a random name in `.tdd/out` (which the plugin makes unlistable; the code
could chmod it back, being its owner), and HOME in its own `.tdd`, so neither the login
shell E2B runs commands with (`bash -l` reads ~/.profile) nor Python's user site dir picks
up files an earlier run wrote to the home directory.

With `warm=True`, runs go to a warm pytest server (`warm_server.py`) started once per
sandbox in the background: the workspace is uploaded as usual, one JSON line on the
server's stdin asks for the run, and one line on its stdout answers. A server that died,
hung or lost its stream is killed and the run falls back to a cold one, so no run is lost.
"""

from __future__ import annotations

import logging
import posixpath
import random
import secrets
import shlex
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx
from e2b import Sandbox as E2BClient
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    NotFoundException,
    RateLimitException,
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import CommandExitException

from bot.errors import ConfigError, SandboxError, ServerFailed, StreamLost
from bot.paths import relative_path
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.e2b_warm import SDK_ERRORS, CappedOutput, WarmServer, reply_output
from bot.sandbox.pytest_run import (
    DEFAULT_OUTPUT_CAP,
    PLUGIN_MODULE,
    PLUGIN_SOURCE,
    REPORT_ENV,
    PytestConfig,
    as_config,
    command_line,
    pytest_args,
    pytest_options,
    result_from_report,
)
from bot.sandbox.warm_server import SERVER_MODULE, server_source, workspace_module_names

log = logging.getLogger(__name__)

T = TypeVar("T")


# `timeout` exits 124 after its signal, but with `-s KILL` it usually dies with its process
# group: bash reports 137, and envd reports a signal death as -1 ("signal: killed").
_TIMEOUT_EXIT_CODES = (124, 137)
# The client-side stream deadline only backs up `timeout -s KILL`; it must never fire first.
_STREAM_GRACE = 15.0
_SUPPORT_DIR = ".tdd"  # per-run plugin, config, report; pytest does not recurse into dot-dirs
_WARM_SOURCE = server_source(contained=False)
# Starting the server is one Python start plus an empty pytest session: seconds, not minutes.
_SERVER_START_TIMEOUT = 60.0
# After this many server failures in a row, stop trying: every run would pay for them.
_WARM_MAX_FAILURES = 3
# What killing a sandbox may raise; a named tuple, as mypy cannot check `(*a, b)` in except.
_KILL_ERRORS: tuple[type[BaseException], ...] = (*SDK_ERRORS, AuthenticationException)


@dataclass(frozen=True)
class _RunFiles:
    """Where one run's files went in the sandbox (paths relative to `run_dir`)."""

    run_dir: str
    config: str  # e.g. .tdd/pytest.ini
    report: str  # .tdd/out/<random>.json

    def command(self, python: str) -> list[str]:
        return pytest_args(python, config_file=self.config, rootdir=".")

    def options(self) -> list[str]:
        return pytest_options(config_file=self.config, rootdir=".")


class E2BSandbox:
    """The Sandbox protocol on E2B: one sandbox, created lazily, reused across runs (and,
    with `warm=True`, one warm pytest server in it, started on first use)."""

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
        warm: bool = False,
        metadata: Mapping[str, str] | None = None,
        domain: str = "e2b.app",
        debug: bool = False,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pytest_config: PytestConfig | str | None = None,
    ) -> None:
        """`sandbox_timeout` is the sandbox's lifetime in seconds (keep it within the run's
        wall budget); `test_timeout` bounds one pytest run. `api_url`/`sandbox_url` and
        `debug` point the SDK elsewhere than E2B's cloud (tests, self-hosting). `warm` runs
        tests through a warm pytest server in the sandbox (see the module docstring).
        `pytest_config` is the pytest configuration runs use unless `run_tests` names
        another (a str is pytest.ini text; default: an empty one)."""
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
        self._warm = warm
        self._pytest_config = as_config(pytest_config)
        self._sbx: E2BClient | None = None
        self._runs = 0
        self._closed = False
        self._server: WarmServer | None = None
        self._server_lock = threading.Lock()
        self._server_failures = 0  # in a row
        # Set when we reattach: a server started by an earlier connection (perhaps by a
        # dead worker) may still run in the sandbox, and nothing vouches for its state.
        self._sweep_servers = False

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

    def run_tests(
        self, workspace: Workspace, *, pytest_config: PytestConfig | str | None = None
    ) -> TestResult:
        """Run pytest over `workspace` in a fresh directory of the shared sandbox."""
        files = _workspace_files(workspace)
        config = as_config(pytest_config, self._pytest_config)
        run = self._run_warm if self._warm else self._run
        sbx = self._ensure()
        try:
            return run(sbx, files, config)
        except SDK_ERRORS as first:
            log.warning("E2B sandbox %s failed mid-run (%s); reconnecting", sbx.sandbox_id, first)
        self._sbx = None
        sbx = self._ensure()  # same sandbox if it is still alive, else a new one
        try:
            return run(sbx, files, config)
        except SDK_ERRORS as err:
            self._sbx = None
            raise SandboxError(
                f"E2B sandbox {sbx.sandbox_id} failed twice while running tests: {err}"
            ) from err

    def close(self) -> None:
        """Kill the warm server and the sandbox; safe to call twice or when none was ever
        created."""
        if self._closed:
            return
        self._closed = True
        # Not under the server lock: a run in progress must not hold up the shutdown.
        server, self._server = self._server, None
        if server is not None:
            server.kill(self._request_timeout)
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
            self._sweep_servers = sbx is not None
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
        except SDK_ERRORS as err:
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
            except SDK_ERRORS as err:
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
        except _KILL_ERRORS as err:
            # Not fatal: the sandbox dies by itself when its timeout runs out.
            log.warning("could not kill E2B sandbox %s: %s", sandbox_id, err)

    # -- one test run ----------------------------------------------------------------

    def _upload(self, sbx: E2BClient, files: Mapping[str, str], config: PytestConfig) -> _RunFiles:
        """Write the workspace, the report plugin, the pytest config and an empty report
        file (which makes its directory) into a fresh run directory."""
        self._runs += 1
        # A random suffix keeps a reattached worker from reusing a dead worker's directory.
        run = _RunFiles(
            run_dir=f"{self._workdir}/run-{self._runs}-{secrets.token_hex(4)}",
            config=f"{_SUPPORT_DIR}/{config.filename}",
            report=f"{_SUPPORT_DIR}/out/{secrets.token_hex(16)}.json",
        )
        entries: list[Any] = [
            {"path": f"{run.run_dir}/{rel}", "data": text} for rel, text in files.items()
        ]
        entries += [
            {"path": f"{run.run_dir}/{_SUPPORT_DIR}/{PLUGIN_MODULE}.py", "data": PLUGIN_SOURCE},
            {"path": f"{run.run_dir}/{run.config}", "data": config.text},
            {"path": f"{run.run_dir}/{run.report}", "data": ""},
        ]
        sbx.files.write_files(entries, request_timeout=self._request_timeout)
        return run

    def _read_report(self, sbx: E2BClient, run: _RunFiles) -> str | None:
        try:
            return sbx.files.read(
                f"{run.run_dir}/{run.report}", request_timeout=self._request_timeout
            )
        except FileNotFoundException:
            return None  # pytest never finished; result_from_report makes it an error

    def _result(
        self,
        sbx: E2BClient,
        run: _RunFiles,
        *,
        exit_code: int,
        duration: float,
        timed_out: bool,
        output: str,
        truncated: bool,
        command: list[str],
        extra: dict[str, Any] | None = None,
    ) -> TestResult:
        """The result from the run's report; `output` was already capped while it streamed,
        so its clip marker carries the true count."""
        result = result_from_report(
            exit_code=exit_code,
            report_json=self._read_report(sbx, run),
            output="",
            duration=duration,
            timed_out=timed_out,
            output_cap=self._output_cap,
            command=command_line(command),
        )
        return replace(result, output=output, output_truncated=truncated, extra=extra or {})

    def _run(self, sbx: E2BClient, files: Mapping[str, str], config: PytestConfig) -> TestResult:
        run = self._upload(sbx, files, config)
        run_dir = run.run_dir
        support = f"{run_dir}/{_SUPPORT_DIR}"

        # The env names only run paths: the API key never enters the sandbox. HOME is the
        # run's own (see the module docstring).
        envs = {
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": support,
            REPORT_ENV: f"{run_dir}/{run.report}",
            "HOME": support,
        }
        command = run.command(self._python)
        cmd = shlex.join(["timeout", "-s", "KILL", f"{self._test_timeout:g}", *command])
        stream_timeout = self._test_timeout + _STREAM_GRACE
        output = CappedOutput(self._output_cap)
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
        except SDK_ERRORS:
            raise
        except Exception as err:
            # The SDK raises a bare Exception when a stream ends cleanly but early.
            raise StreamLost(f"output stream of pid {handle.pid} broke off: {err}") from err
        duration = time.monotonic() - started
        timed_out = exit_code in _TIMEOUT_EXIT_CODES and duration >= self._test_timeout
        return self._result(
            sbx,
            run,
            exit_code=exit_code,
            duration=duration,
            timed_out=timed_out,
            output=output.text(),
            truncated=output.truncated,
            command=command,
        )

    def _kill_process_quietly(self, sbx: E2BClient, pid: int) -> None:
        try:
            sbx.commands.kill(pid, request_timeout=self._request_timeout)
        except SDK_ERRORS as err:
            log.warning("could not kill pid %s in E2B sandbox %s: %s", pid, sbx.sandbox_id, err)

    # -- warm runs -------------------------------------------------------------------

    def server_modules(self) -> list[str]:
        """Every module the warm server holds (to check it never imported user code)."""
        if not self._warm:
            raise SandboxError("server_modules() needs E2BSandbox(warm=True).")
        sbx = self._ensure()
        with self._server_lock:
            try:
                server = self._warm_server(sbx)
                request = {"cmd": "modules", "id": uuid.uuid4().hex}
                reply = server.call(request, time.monotonic() + 30, self._request_timeout)
            except ServerFailed as err:
                raise SandboxError(f"the warm pytest server did not answer: {err}") from err
        return list(reply["modules"])

    def _run_warm(
        self, sbx: E2BClient, files: Mapping[str, str], config: PytestConfig
    ) -> TestResult:
        with self._server_lock:
            if self._server_failures >= _WARM_MAX_FAILURES:
                reason = f"warm runner off after {self._server_failures} server failures in a row"
                return self._fallback(sbx, files, config, reason)
            try:
                server = self._warm_server(sbx)
            except ServerFailed as err:
                reason = f"the warm server did not start: {err}"
                return self._server_failed(sbx, files, config, reason)
            run = self._upload(sbx, files, config)
            shadowing = bool(workspace_module_names(dict(files)) & server.preloaded)
            run_id = uuid.uuid4().hex
            command = run.command(server.executable)
            request = {
                "id": run_id,
                # Relative paths, resolved by the server: they hold wherever the sandbox's
                # disk is rooted (the test fake roots it in a host directory).
                "dir": posixpath.relpath(run.run_dir, server.cwd),
                "timeout": self._test_timeout,
                "cap": self._output_cap,
                "args": run.options(),
                # A module shadowing one the server holds needs a fresh interpreter.
                "exec": command if shadowing else None,
                # As for a cold run; only the child gets them, never the server.
                "path_env": {
                    "PYTHONPATH": _SUPPORT_DIR,
                    REPORT_ENV: run.report,
                    "HOME": _SUPPORT_DIR,
                },
            }
            started = time.monotonic()
            # The server kills the run at the wall timeout itself; the grace covers the RPCs.
            deadline = started + self._test_timeout + _STREAM_GRACE
            try:
                reply = server.call(request, deadline, self._request_timeout)
            except ServerFailed as err:
                return self._server_failed(sbx, files, config, str(err))
            self._server_failures = 0
            duration = time.monotonic() - started
        exit_code = int(reply["exit_code"])
        timed_out = bool(reply["timed_out"])
        output, truncated = reply_output(reply)
        signum = reply.get("signal")
        if signum and not timed_out:
            # What a cold run reports: `timeout` re-raises its child's signal on itself, and
            # envd reports that as -1 (see _exit_code).
            error = f"signal: {(signal.strsignal(signum) or str(signum)).lower()}"
            exit_code = 137 if signum == signal.SIGKILL else 1
            output += f"\n[process ended: {error}]\n"
        return self._result(
            sbx,
            run,
            exit_code=exit_code,
            duration=duration,
            timed_out=timed_out,
            output=output,
            truncated=truncated,
            command=command,
            extra={"warm": True, "mode": "exec" if shadowing else "fork"},
        )

    def _warm_server(self, sbx: E2BClient) -> WarmServer:
        """The running server for `sbx`, started (or its stream reattached) if need be."""
        server = self._server
        if server is not None and server.sbx is not sbx:
            # We reconnected: the sandbox is new (its server died with the old one) or the
            # same one, where the sweep below kills the server we can no longer vouch for.
            server = self._server = None
        if server is not None and not server.ready():
            log.warning("warm pytest server in E2B sandbox %s: %s", sbx.sandbox_id, server.why())
            server.kill(self._request_timeout)
            server = self._server = None
        if server is None:
            if self._sweep_servers:
                self._kill_stale_servers(sbx)
                self._sweep_servers = False
            server = self._server = self._start_server(sbx)
        return server

    def _start_server(self, sbx: E2BClient) -> WarmServer:
        # Its own directory: the server's warm-up session collects from its working
        # directory, which must hold no tests.
        server_dir = f"{self._workdir}/warm-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            sbx.files.write_files(
                [
                    {"path": f"{server_dir}/{SERVER_MODULE}.py", "data": _WARM_SOURCE},
                    {"path": f"{server_dir}/{PLUGIN_MODULE}.py", "data": PLUGIN_SOURCE},
                ],
                request_timeout=self._request_timeout,
            )
            # `exec`: the pid envd reports (and kills) is the server, not a shell around it.
            # `-P -s` as in the runs themselves; the plugin comes from PYTHONPATH then.
            argv = [self._python, "-B", "-P", "-s", f"{SERVER_MODULE}.py", *pytest_options()]
            handle = sbx.commands.run(
                f"exec {shlex.join(argv)}",
                background=True,
                stdin=True,
                envs={
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONPATH": server_dir,
                    "HOME": server_dir,
                },
                cwd=server_dir,
                timeout=0,  # it lives as long as the sandbox
                retain_output=False,
            )
        except SDK_ERRORS as err:
            raise ServerFailed(str(err)) from err
        server = WarmServer(sbx, handle, server_dir)
        try:
            hello = server.next_message(None, time.monotonic() + _SERVER_START_TIMEOUT)
            if not hello.get("ready"):
                raise ServerFailed(f"unexpected greeting {hello!r}")
        except ServerFailed:
            server.kill(self._request_timeout)
            raise
        server.preloaded = frozenset(hello.get("modules", ()))
        server.executable = str(hello.get("executable") or self._python)
        log.info(
            "started warm pytest server (pid %s) in E2B sandbox %s in %.2fs",
            server.pid,
            sbx.sandbox_id,
            time.monotonic() - started,
        )
        return server

    def _kill_stale_servers(self, sbx: E2BClient) -> None:
        """Kill warm servers an earlier connection or a dead worker left in the sandbox."""
        try:
            processes = sbx.commands.list(request_timeout=self._request_timeout)
        except SDK_ERRORS as err:
            log.warning("could not list processes in E2B sandbox %s: %s", sbx.sandbox_id, err)
            return
        for process in processes:
            if any(SERVER_MODULE in arg for arg in (process.cmd, *process.args)):
                log.info("killing stale warm server (pid %s)", process.pid)
                self._kill_process_quietly(sbx, process.pid)

    def _server_failed(
        self, sbx: E2BClient, files: Mapping[str, str], config: PytestConfig, reason: str
    ) -> TestResult:
        """Kill the server (the next run starts another) and run this one cold."""
        self._server_failures += 1
        if self._server is not None:
            self._server.kill(self._request_timeout)
            self._server = None
        log.warning("warm pytest server in E2B sandbox %s failed: %s", sbx.sandbox_id, reason)
        return self._fallback(sbx, files, config, reason)

    def _fallback(
        self, sbx: E2BClient, files: Mapping[str, str], config: PytestConfig, reason: str
    ) -> TestResult:
        # A fresh directory too: a child of a server that died may still run in the old one.
        result = self._run(sbx, files, config)
        return replace(result, extra={**result.extra, "warm": False, "fallback": reason})


def _exit_code(code: int, error: str | None, output: CappedOutput) -> int:
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
        norm = relative_path(rel)
        if norm.split("/")[0] == _SUPPORT_DIR:
            raise ValueError(f"workspace path {rel!r} is the runner's own directory")
        files[norm] = text
    return files
