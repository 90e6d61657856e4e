"""A warm local sandbox: one long-lived pytest server per instance, a fork per run.

Most of a cold run is Python and pytest start-up. Here a server process starts once inside
the same bubblewrap sandbox as the cold runner (binds, namespaces, seccomp, per-instance
uid), imports pytest and its plugins by running one empty pytest session, and then serves
runs: the host writes the workspace into a shared dir and sends a JSON line; the server
forks a child that applies the run's rlimits, starts a new session, points stdout/stderr at
a pipe and calls pytest's console entry point; the server enforces the wall timeout, kills
every other process in the sandbox afterwards, wipes /tmp, and answers with the exit status
and the head and tail of the output. The host reads the plugin's report itself.

The server never imports the code under test: user modules only ever load in children.
When a workspace module would shadow a module the server already holds (say `random.py`),
the child execs a fresh interpreter instead, so results match a cold run exactly.

The code under test shares the server's uid, so it can kill the server: the host notices,
reports a sandbox error for that run and starts a new server on the next one. The server
marks itself non-dumpable so the children cannot read its memory or its pipes via /proc.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import os
import selectors
import subprocess
import textwrap
import threading
import time
import uuid
import weakref
from pathlib import PurePosixPath
from typing import Any

from bot.errors import SandboxError
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.local import (
    BWRAP_ENV,
    IN_LIB,
    IN_OUT,
    IN_REPORT,
    IN_WORK,
    KILL_GRACE,
    PROBE_TIMEOUT,
    Bind,
    HeadTail,
    HostSetup,
    RunDir,
    SandboxLimits,
    UidLease,
    build_result,
    kill_group,
    make_private_dir,
    probe,
    pycache_binds,
    pytest_options,
    read_report,
    remove_tree,
    seccomp_fd,
    sweep_stale_dirs,
    write_etc,
    write_lib,
    write_workspace,
)
from bot.sandbox.pytest_run import REPORT_ENV, pytest_args

SERVER_MODULE = "tdd_warm_server"
# Extra time the host grants the server beyond the wall timeout before declaring it hung.
HOST_GRACE = 10.0


def serve() -> None:  # pragma: no cover - runs inside the sandbox, as its own script
    """The server's main loop. Self-contained: it is shipped as source into the sandbox."""
    import atexit
    import base64
    import contextlib
    import ctypes
    import importlib
    import json
    import os
    import random
    import resource
    import runpy
    import select
    import shutil
    import signal
    import sys
    import threading
    import time

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_dumpable, pr_set_child_subreaper = 4, 36
    # Non-dumpable: children (same uid) cannot ptrace us or open /proc/<us>/fd.
    libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
    # Orphans of a run get reparented to us, so we can reap them.
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)

    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # pytest's warm-up output must not reach the protocol pipe

    def send(message: dict) -> None:
        proto_out.write(json.dumps(message).encode() + b"\n")
        proto_out.flush()

    def scrub() -> None:
        """Remove what a run can leave in the sandbox: /tmp, /dev/shm and SysV IPC objects
        (the server's IPC namespace outlives runs; a cold run's does not)."""
        for path in ("/tmp", "/dev/shm"):
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        ipc_rmid = 0
        removers = {
            "shm": lambda ident: libc.shmctl(ident, ipc_rmid, None),
            "sem": lambda ident: libc.semctl(ident, 0, ipc_rmid),
            "msg": lambda ident: libc.msgctl(ident, ipc_rmid, None),
        }
        for kind, remove in removers.items():
            try:
                with open(f"/proc/sysvipc/{kind}") as fh:
                    rows = fh.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                remove(int(row.split()[1]))

    class Capture:
        """The head and the tail of a run's output, in bounded memory."""

        def __init__(self, cap: int) -> None:
            self.head_cap, self.tail_cap = cap - cap // 2, cap // 2
            self.head, self.tail, self.total = bytearray(), bytearray(), 0

        def feed(self, data: bytes) -> None:
            self.total += len(data)
            room = self.head_cap - len(self.head)
            if room > 0:
                self.head += data[:room]
                data = data[room:]
            if data and self.tail_cap:
                self.tail += data
                del self.tail[: max(0, len(self.tail) - self.tail_cap)]

    # Warm-up: one empty session imports pytest, its plugins and their dependencies exactly
    # as a real run does (including assertion rewriting of plugin modules).
    import pytest

    saved_path = list(sys.path)
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    with contextlib.suppress(Exception):
        pytest.main([*sys.argv[1:], "--collect-only"])  # in the still empty workdir
    os.chdir(saved_cwd)
    sys.path[:] = saved_path
    os.environ.clear()
    os.environ.update(saved_env)
    # Each run imports the report plugin afresh (it keeps per-session counts).
    for name in [n for n in sys.modules if n.split(".")[0] == "tdd_report_plugin"]:
        del sys.modules[name]
    sys.stdout.flush()
    sys.stderr.flush()
    scrub()

    def top_level_modules() -> list:
        return sorted({name.split(".")[0] for name in sys.modules})

    def others_alive(me: int) -> bool:
        return any(e.isdigit() and int(e) not in (1, me) for e in os.listdir("/proc"))

    def kill_everything_else(statuses: dict) -> None:
        """SIGKILL every process of the sandbox except us and bwrap's init; reap them."""
        me = os.getpid()
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)  # atomic against forks: holds the tasklist lock
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                statuses[pid] = status
            if not others_alive(me) or time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def child(request: dict, write_end: int) -> None:
        os.setsid()
        libc.prctl(pr_set_dumpable, 1, 0, 0, 0)
        null_in = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_in, 0)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.closerange(3, 1 << 16)
        for name, value in request["rlimits"].items():
            limit = getattr(resource, name)
            resource.setrlimit(limit, (value, value))
        os.chdir(request["dir"])
        if request.get("exec"):
            os.execv(request["exec"][0], request["exec"])
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives until os._exit
        sys.path[0] = os.getcwd()  # what `python -m` puts first
        sys.argv = ["-m", *request["args"]]
        importlib.invalidate_caches()
        random.seed()
        code = 1
        try:
            # Exactly what `python -m pytest` runs; it ends in SystemExit.
            runpy.run_module("pytest", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        # What interpreter shutdown would do: wait for threads, run atexit, flush.
        try:
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError):
                    stream.flush()
            os._exit(code & 0xFF)

    def run(request: dict) -> dict:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                child(request, write_end)
            finally:
                os._exit(70)
        os.close(write_end)
        pidfd = os.pidfd_open(pid)
        capture = Capture(request["cap"])
        deadline = time.monotonic() + request["timeout"]
        poller = select.poll()
        poller.register(read_end, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        timed_out, exited, pipe_open = False, False, True
        while not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for fd, _event in poller.poll(remaining * 1000):
                if fd == pidfd:
                    exited = True
                elif fd == read_end:
                    data = os.read(read_end, 1 << 18)
                    if not data:
                        poller.unregister(read_end)
                        pipe_open = False
                        continue
                    capture.feed(data)
        statuses: dict = {}
        if timed_out:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        kill_everything_else(statuses)
        os.close(pidfd)
        # Every writer is gone now: drain what is left in the pipe.
        while pipe_open:
            data = os.read(read_end, 1 << 18)
            if not data:
                break
            capture.feed(data)
        os.close(read_end)
        status = statuses.get(pid)
        if status is None:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, 0)
        if status is None:
            exit_code = 1  # lost track of the child: never report success
        elif os.WIFSIGNALED(status):
            exit_code = 128 + os.WTERMSIG(status)  # what bwrap reports for a cold run
        else:
            exit_code = os.waitstatus_to_exitcode(status)
        scrub()
        return {
            "id": request["id"],
            "exit_code": exit_code,
            "timed_out": timed_out,
            "head": base64.b64encode(bytes(capture.head)).decode(),
            "tail": base64.b64encode(bytes(capture.tail)).decode(),
            "total": capture.total,
        }

    send({"ready": True, "modules": top_level_modules()})
    for line in proto_in:
        request = json.loads(line)
        if request.get("cmd") == "modules":
            send({"modules": sorted(sys.modules)})
        else:
            send(run(request))


SERVER_SOURCE = (
    textwrap.dedent(inspect.getsource(serve)) + "\n\nif __name__ == '__main__':\n    serve()\n"
)


def workspace_module_names(workspace: Workspace) -> set[str]:
    """Every name a workspace file could be imported under at top level (conservative)."""
    names: set[str] = set()
    for path in workspace:
        parts = PurePosixPath(path).parts
        names.update(parts[:-1])
        stem, _, suffix = parts[-1].partition(".")
        if suffix in ("py", "pyc", "pyi", "so", "pth") or not suffix:
            names.add(stem)
    return names


class _Server:
    """One running server: its bwrap process, temp dir and uid."""

    def __init__(self, sandbox: WarmLocalSandbox, pycache: str | None) -> None:
        host, limits = sandbox.host, sandbox.limits
        self.proc: subprocess.Popen[bytes] | None = None
        self.lease: UidLease | None = None
        self.run_dir: RunDir | None = None
        self._buffer = b""
        self._status_r = -1
        self._stopped = False
        try:
            self.lease = UidLease() if host.as_root else None
            self.owner = self.lease.uid if self.lease else os.getuid()
            self.chown_to = chown_to = self.lease.uid if self.lease else None
            self.run_dir = RunDir("tdd-warm-", sandbox.temp_root)
            self.tmp = self.run_dir.path
            self.work = make_private_dir(self.tmp / "work", chown_to)
            self.out = make_private_dir(self.tmp / "out", chown_to)
            self.log = self.tmp / "server.log"
            cache_binds, cache_env = pycache_binds(pycache)
            binds = [
                write_lib(self.tmp / "lib", {f"{SERVER_MODULE}.py": SERVER_SOURCE}),
                *write_etc(self.tmp / "etc", self.owner),
                *cache_binds,
                Bind("--bind", str(self.out), IN_OUT),
                Bind("--bind", str(self.work), IN_WORK),
            ]
            # bwrap writes its status here; the read end stays open (and unread: the few
            # bytes fit in the pipe) so bwrap never gets SIGPIPE.
            self._status_r, status_w = os.pipe()
            try:
                with seccomp_fd() as filter_fd, open(self.log, "wb") as log:
                    argv = host.argv(
                        binds=binds,
                        env=host.env({REPORT_ENV: IN_REPORT, **cache_env}),
                        uid=self.lease.uid if self.lease else None,
                        limits=limits,
                        seccomp_fd=filter_fd,
                        status_fd=status_w,
                        chdir=IN_WORK,
                        command=[
                            host.python,
                            "-B",
                            f"{IN_LIB}/{SERVER_MODULE}.py",
                            *pytest_options(),
                        ],
                        apply_limits=False,  # the server limits each run's child instead
                    )
                    self.proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        pass_fds=(filter_fd, status_w),
                        start_new_session=True,
                        env=BWRAP_ENV,
                    )
            finally:
                os.close(status_w)
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

    def read_message(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line from the server; None on EOF or when the deadline passes."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    return None
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
        """Empty the workdir and the report dir (the same dirs serve every run)."""
        for path in (self.work, self.out):
            # The code under test owns these dirs and may have changed their mode.
            os.chmod(path, 0o700)
            if self.chown_to is not None:
                os.chown(path, self.chown_to, self.chown_to)
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
    ) -> None:
        """Arguments as for LocalSandbox; `host_grace` is how long past the wall timeout
        the host waits for the server's answer before it replaces a hung server."""
        self.limits = limits or SandboxLimits()
        self.host = HostSetup.detect(bwrap=bwrap, python=python)
        self.temp_root = temp_root
        self.host_grace = host_grace
        sweep_stale_dirs(temp_root)
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

    def check(self) -> None:
        """Probe the sandbox once (cached per process); raise SandboxUnavailable if broken."""
        probe(self.host, self.temp_root)

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

    def run_tests(self, workspace: Workspace) -> TestResult:
        with self._lock:
            try:
                server = self._ensure_server()
            except SandboxError as exc:
                return TestResult(exit_code=1, sandbox_error=str(exc))
            return self._run(server, workspace)

    def _run(self, server: _Server, workspace: Workspace) -> TestResult:
        limits = self.limits
        run_id = uuid.uuid4().hex
        started = time.monotonic()
        try:
            server.reset()
            write_workspace(server.work, workspace, server.chown_to)
            shadowing = workspace_module_names(workspace) & server.preloaded
            request = {
                "id": run_id,
                "dir": IN_WORK,
                "timeout": limits.wall_seconds,
                "cap": limits.output_cap,
                "args": pytest_options(),
                "exec": pytest_args(self.host.python) if shadowing else None,
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
            try:
                server.send(request)
            except OSError:
                reply = None
            else:
                reply = server.read_message(started + limits.wall_seconds + self.host_grace)
            duration = time.monotonic() - started
            if reply is None or reply.get("id") != run_id:
                return self._server_failed(server, duration)
            capture = HeadTail(limits.output_cap)
            capture.head = bytearray(base64.b64decode(reply["head"]))
            capture.tail = bytearray(base64.b64decode(reply["tail"]))
            capture.total = int(reply["total"])
            return build_result(
                exit_code=int(reply["exit_code"]),
                report_json=read_report(server.out / "report.json", owner=server.owner),
                capture=capture,
                duration=duration,
                timed_out=bool(reply["timed_out"]),
                cap=limits.output_cap,
                extra={"mode": "exec" if shadowing else "fork"},
            )
        finally:
            if self._server is server:
                server.reset()

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
