"""A warm local sandbox: one long-lived pytest server per instance, a fork per run.

Most of a cold run is Python and pytest start-up. Here a server process starts once inside
the same bubblewrap sandbox as the cold runner (binds, namespaces, seccomp, tmpfs mounts,
per-instance uid), imports pytest and its plugins by running one empty pytest session, and
then serves runs: the host writes the workspace into the read-only staging dir, the run's
pytest config into the read-only config dir and an empty report file with a fresh random
name into the report dir, and sends a JSON line; the server forks a child that applies the
run's rlimits, copies the staged workspace into /workspace, starts a new session, points
stdout/stderr at a pipe and calls pytest's console entry point with the same arguments as
a cold run; the server enforces the wall timeout, kills every other process in the sandbox
afterwards, wipes /workspace, /tmp, /dev/shm and IPC objects, and answers with the exit
status and the head and tail of the output. The host reads the plugin's report itself.
The whole server is under one memory limit (memory.py), checked while each run goes on.

The server never imports the code under test: user modules only ever load in children.
When a workspace module would shadow a module the server already holds (say `random.py`),
the child execs a fresh interpreter instead, so results match a cold run exactly.

The code under test shares the server's uid, so it can kill the server: the host notices,
reports a sandbox error for that run and starts a new server on the next one. The server
marks itself non-dumpable so the children cannot read its memory or its pipes via /proc.

The server itself lives in `warm_server.py` (the E2B backend runs it too); this module is
the local host side: bubblewrap, the shared dirs, and replacing a server that broke.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import subprocess
import threading
import time
import uuid
import weakref
from dataclasses import replace
from typing import Any

from bot.errors import SandboxError
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.capture import KILL_GRACE, HeadTail, build_result, kill_group, read_report
from bot.sandbox.jail import (
    BWRAP_ENV,
    IN_CFG,
    IN_LIB,
    IN_STAGE,
    IN_WORK,
    Bind,
    HostSetup,
    SandboxLimits,
    bwrap_launch,
    config_path,
    make_report_dir,
    make_staging_dir,
    new_report_file,
    seccomp_fd,
    write_config,
    write_etc,
    write_lib,
)
from bot.sandbox.local import (
    PROBE_TIMEOUT,
    ProbeResult,
    describe_disk,
    over_memory,
    probe,
    pycache_binds,
    run_command,
)
from bot.sandbox.memory import MEMORY_POLL_SECONDS, MemoryRule, RunMemory, sweep_stale_cgroups
from bot.sandbox.pytest_run import (
    REPORT_ENV,
    PytestConfig,
    as_config,
    command_line,
    pytest_options,
)
from bot.sandbox.rundir import (
    RunDir,
    UidLease,
    remove_tree,
    sweep_stale_dirs,
    write_workspace,
)
from bot.sandbox.warm_server import SERVER_MODULE, server_source, workspace_module_names

SERVER_SOURCE = server_source(contained=True)
# Extra time the host grants the server beyond the wall timeout before declaring it hung.
HOST_GRACE = 10.0


class _Server:
    """One running server: its bwrap process, temp dir, uid and memory limit."""

    def __init__(self, sandbox: WarmLocalSandbox, pycache: str | None) -> None:
        host, limits = sandbox.host, sandbox.limits
        self.proc: subprocess.Popen[bytes] | None = None
        self.lease: UidLease | None = None
        self.run_dir: RunDir | None = None
        self.memory: RunMemory | None = None
        self._buffer = b""
        self._status_r = -1
        self._stopped = False
        self.over_memory = False  # set by read_message when the memory limit was hit
        try:
            self.lease = UidLease() if host.as_root else None
            self.owner = self.lease.uid if self.lease else os.getuid()
            self.chown_to = self.lease.uid if self.lease else None
            self.run_dir = RunDir("tdd-warm-", sandbox.temp_root)
            self.tmp = self.run_dir.path
            self.stage = self.tmp / "stage"
            self.cfg = self.tmp / "cfg"
            self.out = self.tmp / "out"
            self.log = self.tmp / "server.log"
            cache_binds, cache_env = pycache_binds(pycache)
            config = sandbox.pytest_config
            write_config(self.cfg, config)
            binds = [
                write_lib(self.tmp / "lib", {f"{SERVER_MODULE}.py": SERVER_SOURCE}),
                Bind("--ro-bind", str(self.cfg), IN_CFG),
                make_staging_dir(self.stage),
                *write_etc(self.tmp / "etc", self.owner),
                *cache_binds,
                make_report_dir(self.out),
            ]
            self.memory = sandbox.memory_rule.start(limits, warm=True)
            # bwrap writes its status here; the read end stays open (and unread: the few
            # bytes fit in the pipe) so bwrap never gets SIGPIPE.
            self._status_r, status_w = os.pipe()
            try:
                with seccomp_fd() as filter_fd, open(self.log, "wb") as log:
                    argv = host.argv(
                        binds=binds,
                        # No report path here: each run's goes to its child only.
                        env=host.env(cache_env),
                        uid=self.lease.uid if self.lease else None,
                        limits=limits,
                        seccomp_fd=filter_fd,
                        status_fd=status_w,
                        chdir=IN_WORK,
                        command=[
                            host.python,
                            "-B",
                            "-P",
                            "-s",
                            f"{IN_LIB}/{SERVER_MODULE}.py",
                            *pytest_options(config_file=config_path(config), rootdir=IN_WORK),
                        ],
                        apply_limits=False,  # the server limits each run's child instead
                    )
                    with bwrap_launch(host, argv) as (launch, launch_fds):
                        self.proc = subprocess.Popen(
                            self.memory.command(host.shell, launch),
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=log,
                            pass_fds=(filter_fd, status_w, *launch_fds),
                            start_new_session=True,
                            env=BWRAP_ENV,
                        )
            finally:
                os.close(status_w)
            self.memory.attach(self.proc.pid)
            hello = self.read_message(time.monotonic() + PROBE_TIMEOUT)
            if not hello or not hello.get("ready"):
                raise SandboxError(f"the warm pytest server did not start: {self.log_tail()}")
            self.preloaded: frozenset[str] = frozenset(hello.get("modules", []))
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log.read_bytes()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def read_message(self, deadline: float, *, watch: bool = False) -> dict[str, Any] | None:
        """The next JSON line from the server; None on EOF or when the deadline passes, or
        (with `watch`) when the sandbox went over its memory limit: `over_memory` says so."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if watch and self.memory is not None:
                    if self.memory.poll():
                        self.over_memory = True
                        return None
                    remaining = min(remaining, MEMORY_POLL_SECONDS)
                if not sel.select(remaining):
                    continue
                data = os.read(fd, 1 << 20)
                if not data:
                    return None
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            return None
        return message if isinstance(message, dict) else None

    def reset(self) -> None:
        """Empty the staging dir and the report dir (the same dirs serve every run). The
        sandbox can write neither (as root), so the host alone decides what is in them;
        the server empties the tmpfs mounts itself."""
        for path in (self.stage, self.out):
            # Without root the report dir is the run's own: it may have changed its mode.
            os.chmod(path, 0o755 if path == self.stage else 0o711)
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    remove_tree(entry)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc is not None:
            kill_group(self.proc.pid)
            try:
                self.proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # bwrap itself, should its group have changed
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self.proc = None
        if self._status_r >= 0:
            os.close(self._status_r)
        if self.run_dir is not None:
            self.run_dir.remove()
        if self.memory is not None:
            self.memory.close()
        if self.lease is not None:
            self.lease.release()
            self.lease = None


class WarmLocalSandbox:
    """Like LocalSandbox (same isolation, limits and results), but runs reuse a warm server.

    Raises SandboxUnavailable like LocalSandbox when this machine cannot sandbox. A server
    that dies or hangs is replaced on the next run; that run returns `sandbox_error` (or
    `timed_out`). Runs on one instance are serialized; `close()` stops the server.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        temp_root: str | None = None,
        host_grace: float = HOST_GRACE,
        pytest_config: PytestConfig | str | None = None,
        cgroup_parent: str | None = None,
    ) -> None:
        """Arguments as for LocalSandbox; `host_grace` is how long past the wall timeout
        the host waits for the server's answer before it replaces a hung server."""
        self.limits = limits or SandboxLimits()
        self.host = HostSetup.detect(bwrap=bwrap, python=python)
        self.temp_root = temp_root
        self.host_grace = host_grace
        self.pytest_config = as_config(pytest_config)
        self.memory_rule = MemoryRule.detect(cgroup_parent)
        sweep_stale_dirs(temp_root)
        sweep_stale_cgroups(self.memory_rule)
        self._lock = threading.Lock()
        # The running server lives in a one-slot list that a finalizer also holds, so a
        # sandbox dropped without close() still stops its server (at GC or at exit).
        self._slot: list[_Server | None] = [None]
        weakref.finalize(self, WarmLocalSandbox._stop_server, self._slot)
        self.restarts = 0  # servers replaced after dying or hanging

    @staticmethod
    def _stop_server(slot: list[_Server | None]) -> None:
        if slot[0] is not None:
            slot[0].stop()
            slot[0] = None

    @property
    def _server(self) -> _Server | None:
        return self._slot[0]

    def check(self) -> ProbeResult:
        """Probe the sandbox once (cached per process); raise SandboxUnavailable if broken.
        The result also says which rules hold a run's memory and disk here."""
        result = probe(self.host, self.temp_root)
        return replace(
            result,
            memory=self.memory_rule.describe(self.limits),
            disk=describe_disk(self.host, self.limits),
        )

    def _ensure_server(self) -> _Server:
        if self._server is not None and not self._server.alive():
            self._drop_server()
            self.restarts += 1
        server = self._server
        if server is None:
            pycache = probe(self.host, self.temp_root).pycache
            server = self._slot[0] = _Server(self, pycache)
        return server

    def _drop_server(self) -> None:
        self._stop_server(self._slot)

    @property
    def server_pid(self) -> int | None:
        """Host pid of the running server's bwrap (None when no server runs)."""
        server = self._server
        return server.proc.pid if server is not None and server.proc is not None else None

    def server_modules(self) -> list[str]:
        """Every module the server process holds (to check it never imported user code)."""
        with self._lock:
            server = self._ensure_server()
            server.send({"cmd": "modules"})
            reply = server.read_message(time.monotonic() + 30)
            if reply is None:
                self._drop_server()
                raise SandboxError("the warm pytest server did not answer")
            return list(reply["modules"])

    def run_tests(
        self, workspace: Workspace, *, pytest_config: PytestConfig | str | None = None
    ) -> TestResult:
        config = as_config(pytest_config, self.pytest_config)
        with self._lock:
            try:
                server = self._ensure_server()
            except SandboxError as exc:
                return TestResult(exit_code=1, sandbox_error=str(exc))
            return self._run(server, workspace, config)

    def _run(self, server: _Server, workspace: Workspace, config: PytestConfig) -> TestResult:
        limits = self.limits
        run_id = uuid.uuid4().hex
        started = time.monotonic()
        command = run_command(self.host.python, config)
        try:
            server.reset()
            write_workspace(server.stage, workspace)
            write_config(server.cfg, config)
            report_host, report_inside = new_report_file(server.out, server.chown_to)
            shadowing = workspace_module_names(workspace) & server.preloaded
            request = {
                "id": run_id,
                "dir": IN_WORK,
                "stage": IN_STAGE,
                "timeout": limits.wall_seconds,
                "cap": limits.output_cap,
                "args": command[command.index("pytest") + 1 :],
                "exec": command if shadowing else None,
                # The report's path goes to this run's child alone.
                "path_env": {REPORT_ENV: report_inside},
                "rlimits": {
                    "RLIMIT_AS": limits.memory_bytes,
                    "RLIMIT_CPU": limits.cpu_seconds,
                    # The server is one more process of the same uid than a cold run has.
                    "RLIMIT_NPROC": limits.processes + 1,
                    "RLIMIT_FSIZE": limits.file_size_bytes,
                    "RLIMIT_NOFILE": limits.open_files,
                    "RLIMIT_CORE": 0,
                },
            }
            assert server.memory is not None
            server.memory.mark()
            try:
                server.send(request)
            except OSError:
                reply = None
            else:
                reply = server.read_message(
                    started + limits.wall_seconds + self.host_grace, watch=True
                )
            duration = time.monotonic() - started
            if server.over_memory:
                return self._over_memory(server, duration, command)
            if reply is None or reply.get("id") != run_id:
                return self._server_failed(server, duration)
            capture = HeadTail(limits.output_cap)
            capture.head = bytearray(base64.b64decode(reply["head"]))
            capture.tail = bytearray(base64.b64decode(reply["tail"]))
            capture.total = int(reply["total"])
            result = build_result(
                exit_code=int(reply["exit_code"]),
                report_json=read_report(report_host, owner=server.owner),
                capture=capture,
                duration=duration,
                timed_out=bool(reply["timed_out"]),
                cap=limits.output_cap,
                extra={"mode": "exec" if shadowing else "fork"},
                command=command_line(command),
            )
            if server.memory.exceeded():  # the kernel's verdict, with a cgroup
                result = over_memory(result, server.memory.note())
            return result
        finally:
            if self._server is server:
                server.reset()

    def _over_memory(self, server: _Server, duration: float, command: list[str]) -> TestResult:
        """The watchdog saw the sandbox go over its memory limit mid-run: the whole
        server goes (the run's processes with it), the next run starts a new one."""
        assert server.memory is not None
        note = server.memory.note()
        self._drop_server()
        self.restarts += 1
        result = TestResult(
            exit_code=137,
            errors=1,
            failing=("<pytest did not finish>",),
            duration=duration,
            command=command_line(command),
        )
        return over_memory(result, note)

    def _server_failed(self, server: _Server, duration: float) -> TestResult:
        """The server died or hung mid-run (the code under test can kill it): replace it."""
        hung = server.alive()
        log = server.log_tail()
        self._drop_server()
        self.restarts += 1
        if hung:
            return TestResult(
                exit_code=137,
                errors=1,
                failing=("<pytest did not finish>",),
                duration=duration,
                timed_out=True,
                extra={"warm_server": "unresponsive; restarted"},
            )
        return TestResult(
            exit_code=1,
            duration=duration,
            sandbox_error=f"the warm pytest server died during the run: {log[-500:]}",
        )

    def close(self) -> None:
        """Stop the server and remove its files; the next run would start a new one."""
        with self._lock:
            self._drop_server()

    def __enter__(self) -> WarmLocalSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
