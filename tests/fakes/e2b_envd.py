"""A fake E2B cloud on loopback: the control plane and envd (the in-sandbox daemon).

One threaded HTTP server plays both parts, so the real `e2b` SDK runs end to end:

* control plane (`api_url`): `POST /v2/sandboxes`, `POST /v2/sandboxes/{id}/connect`,
  `DELETE /sandboxes/{id}`, checked against `X-API-KEY`, with fault injection for
  creation (`create_faults`: HTTP statuses or "hang");
* envd (`sandbox_url`): `GET /health`, `GET`/`POST /files` (multipart upload, as the SDK
  sends `str` data), and the Connect RPC `process.Process` service built from the SDK's own
  generated WSGI stubs (JSON codec): `Start` and `Connect` stream a process's events,
  `SendInput`/`CloseStdin` feed its stdin, `SendSignal` kills it, `List` shows the running
  ones. Requests are routed by the `E2b-Sandbox-Id` header and checked against the sandbox's
  `X-Access-Token`; a dead sandbox answers 502 "was not found", like E2B's edge proxy.

Like envd, a process outlives the streams that follow it: its output fans out to whoever is
connected at that moment (and is dropped when nobody is), and its end event reaches every
stream still open. `cut_streams()` breaks the connections of a process's streams while it
keeps running, as a network failure would.

Commands really run on the host with `subprocess`. Each sandbox owns a private directory
under `root` standing in for its disk: sandbox paths in the files API, a process's `cwd` and
the absolute path components of its env values are mapped into it. The command line itself
runs verbatim (so a test can name the host's Python); output has the host prefix stripped.

Usage::

    with FakeE2B(tmp_path, api_key="e2b_test") as fake:
        sbx = e2b.Sandbox.create(api_key="e2b_test", retries=0, **fake.sdk_options())

In debug mode the SDK skips the control plane and uses the fixed id "debug_sandbox_id" with
no access token: register it first with `fake.add_sandbox("debug_sandbox_id")`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from urllib.parse import parse_qs
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof

SANDBOX_HOME = "/home/user"
# What the sandbox image provides besides what a request sets. The host venv has pytest
# plugins (hypothesis, xdist...) a sandbox image would not: loading them triples start-up.
DEFAULT_BASE_ENV = {"LANG": "C.UTF-8", "USER": "user", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}

Fault = int | str  # an HTTP status to answer with, or "hang"
R = TypeVar("R")


@dataclass
class StartRecord:
    """One `process.Process/Start` call as envd received it (sandbox paths, unmapped)."""

    sandbox_id: str
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str
    stdin: bool = False
    pid: int = 0


class FakeProcess:
    """One process envd started: its config, its stdin and the streams following it."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        config: process_pb.ProcessConfig,
        tag: str | None,
        host_prefix: bytes,
    ) -> None:
        self.popen = popen
        self.config = config
        self.tag = tag
        self._host_prefix = host_prefix
        self._lock = threading.Lock()
        self._stdin_lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        self._end: process_pb.ProcessEvent | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def run(self, on_end: Callable[[], None]) -> None:
        """Pump stdout and stderr to the subscribers; after both close, reap and end."""
        pumps = [
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for pump in pumps:
            pump.start()

        def finish() -> None:
            for pump in pumps:
                pump.join()
            code = self.popen.wait()
            self.close_stdin()
            on_end()
            self._publish(process_pb.ProcessEvent(event=Oneof("end", _end_event(code))), last=True)

        threading.Thread(target=finish, daemon=True).start()

    def _pump(self, name: str, pipe: Any) -> None:
        fd = pipe.fileno()
        while data := os.read(fd, 65536):
            data = data.replace(self._host_prefix, b"")
            output = Oneof(name, data)  # type: ignore[arg-type]
            event = Oneof("data", process_pb.ProcessEvent.DataEvent(output=output))
            self._publish(process_pb.ProcessEvent(event=event))
        pipe.close()

    def _publish(self, event: process_pb.ProcessEvent, *, last: bool = False) -> None:
        # Nobody connected: the output is lost, as with envd.
        with self._lock:
            if last:
                self._end = event
            for sub in self._subscribers:
                sub.events.put(event)
                if last:
                    sub.events.put(None)

    def subscribe(self, sock: socket.socket | None) -> _Subscriber:
        """Follow the process from now on (a stream that comes too late gets only its end)."""
        sub = _Subscriber(queue.Queue(), sock)
        with self._lock:
            if self._end is not None:
                sub.events.put(self._end)
                sub.events.put(None)
            else:
                self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def cut_streams(self) -> int:
        """Break the connection of every stream following this process."""
        with self._lock:
            subs, self._subscribers = self._subscribers, []
        for sub in subs:
            if sub.socket is not None:
                with contextlib.suppress(OSError):
                    sub.socket.shutdown(socket.SHUT_RDWR)
            sub.events.put(None)
        return len(subs)

    def write_stdin(self, data: bytes) -> None:
        with self._stdin_lock:
            stdin = self.popen.stdin
            if stdin is None or stdin.closed:
                raise ConnectError(
                    Code.INTERNAL, "error writing to stdin: stdin not enabled or closed"
                )
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, ValueError) as err:
                raise ConnectError(
                    Code.INTERNAL,
                    f"error writing to stdin: error writing to stdin of process '{self.pid}': "
                    f"{err}",
                ) from err

    def close_stdin(self) -> None:
        with self._stdin_lock:
            if self.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    self.popen.stdin.close()


@dataclass
class _Subscriber:
    events: queue.Queue[process_pb.ProcessEvent | None]
    socket: socket.socket | None


@dataclass
class FakeSandbox:
    """One sandbox: its disk (a host directory), its token and its live processes."""

    sandbox_id: str
    root: Path
    access_token: str | None
    template: str = "base"
    timeout: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    alive: bool = True
    processes: dict[int, FakeProcess] = field(default_factory=dict)

    def host_path(self, path: str) -> Path:
        """Where a sandbox path lives on the host (relative paths start at the home dir)."""
        if not path.startswith("/"):
            path = f"{SANDBOX_HOME}/{path}"
        return self.root / os.path.normpath(path).lstrip("/")

    def map_env_value(self, value: str) -> str:
        """Map every absolute path in a `:`-separated env value into this sandbox's disk."""
        parts = value.split(os.pathsep)
        return os.pathsep.join(str(self.host_path(p)) if p.startswith("/") else p for p in parts)

    def live_processes(self) -> list[int]:
        """Host pids still running inside this sandbox's disk (by working directory)."""
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd.is_relative_to(self.root) and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
        return pids

    def kill_all(self) -> None:
        for proc in list(self.processes.values()):
            kill_tree(proc.pid, signal.SIGKILL)


def kill_tree(pid: int, sig: int) -> None:
    """Signal `pid` and every descendant: `timeout` moves its child into its own group."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces or parentheses: split after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(children.get(current, []))
    for target in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


def pid_alive(pid: int) -> bool:
    """Whether a host process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class _QuietServerHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:
        pass  # dropped connections are part of the fault injection


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, plus chunked request bodies (the SDK streams RPC requests)."""

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or not self.parse_request():
            return
        environ = self.get_environ()
        # Read the whole body up front: wsgiref hands the app the raw socket, so reading
        # to EOF (as connectrpc does on errors) would block until the client gives up.
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["fake.socket"] = self.connection
        handler = _QuietServerHandler(
            io.BytesIO(body), self.wfile, self.get_stderr(), environ, multithread=True
        )
        handler.request_handler = self
        handler.run(self.server.get_app())

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            body += self.rfile.read(size)
            self.rfile.readline()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the fake records calls instead


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections are part of the fault injection


class _Process(process_connect.ProcessSync):
    """envd's process service over the fake's sandboxes."""

    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake

    def start(
        self,
        request: process_pb.StartRequest,
        ctx: RequestContext[process_pb.StartRequest, process_pb.StartResponse],
    ) -> Iterator[process_pb.StartResponse]:
        sbx = self._fake._sandbox_for(ctx.request_headers.get("e2b-sandbox-id", ""))
        config = request.process or process_pb.ProcessConfig()
        cwd_path = config.cwd or SANDBOX_HOME
        # envd opens stdin unless the request turns it off explicitly.
        stdin = not request.has_field("stdin") or request.stdin
        record = StartRecord(
            sandbox_id=sbx.sandbox_id,
            cmd=config.cmd,
            args=list(config.args),
            envs=dict(config.envs),
            cwd=cwd_path,
            stdin=stdin,
        )
        cwd = sbx.host_path(cwd_path)
        home = sbx.host_path(SANDBOX_HOME)
        home.mkdir(parents=True, exist_ok=True)
        if not cwd.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd_path}' does not exist")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **self._fake.base_env,
            "HOME": str(home),
            **{k: sbx.map_env_value(v) for k, v in config.envs.items()},
        }
        popen = subprocess.Popen(
            [config.cmd, *config.args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        proc = FakeProcess(
            popen, config, request.tag if request.has_field("tag") else None, str(sbx.root).encode()
        )
        record.pid = popen.pid
        # Subscribed before the pumps start: the starting stream sees all of the output.
        sub = proc.subscribe(self._fake._stream_socket())
        with self._fake._lock:
            sbx.processes[popen.pid] = proc
            self._fake.starts.append(record)

        def forget() -> None:
            with self._fake._lock:
                sbx.processes.pop(popen.pid, None)

        proc.run(on_end=forget)
        return _follow(proc, sub, process_pb.StartResponse)

    def connect(
        self,
        request: process_pb.ConnectRequest,
        ctx: RequestContext[process_pb.ConnectRequest, process_pb.ConnectResponse],
    ) -> Iterator[process_pb.ConnectResponse]:
        sbx = self._fake._sandbox_for(ctx.request_headers.get("e2b-sandbox-id", ""))
        proc = _find(sbx, request.process)
        with self._fake._lock:
            self._fake.connects.append(proc.pid)
        return _follow(
            proc, proc.subscribe(self._fake._stream_socket()), process_pb.ConnectResponse
        )

    def list(
        self,
        request: process_pb.ListRequest,
        ctx: RequestContext[process_pb.ListRequest, process_pb.ListResponse],
    ) -> process_pb.ListResponse:
        sbx = self._fake._sandbox_for(ctx.request_headers.get("e2b-sandbox-id", ""))
        with self._fake._lock:
            procs = list(sbx.processes.values())
        return process_pb.ListResponse(
            processes=[process_pb.ProcessInfo(config=p.config, pid=p.pid, tag=p.tag) for p in procs]
        )

    def send_input(
        self,
        request: process_pb.SendInputRequest,
        ctx: RequestContext[process_pb.SendInputRequest, process_pb.SendInputResponse],
    ) -> process_pb.SendInputResponse:
        sbx = self._fake._sandbox_for(ctx.request_headers.get("e2b-sandbox-id", ""))
        proc = _find(sbx, request.process)
        data = request.input.input if request.input is not None else None
        if data is None or data.field != "stdin":
            raise ConnectError(Code.UNIMPLEMENTED, "the fake envd has no pty")
        proc.write_stdin(data.value)
        return process_pb.SendInputResponse()

    def close_stdin(
        self,
        request: process_pb.CloseStdinRequest,
        ctx: RequestContext[process_pb.CloseStdinRequest, process_pb.CloseStdinResponse],
    ) -> process_pb.CloseStdinResponse:
        sbx = self._fake._sandbox_for(ctx.request_headers.get("e2b-sandbox-id", ""))
        _find(sbx, request.process).close_stdin()
        return process_pb.CloseStdinResponse()

    def send_signal(
        self,
        request: process_pb.SendSignalRequest,
        ctx: RequestContext[process_pb.SendSignalRequest, process_pb.SendSignalResponse],
    ) -> process_pb.SendSignalResponse:
        sbx = self._fake._sandbox_for(ctx.request_headers.get("e2b-sandbox-id", ""))
        proc = _find(sbx, request.process)
        sig = signal.SIGTERM if request.signal == process_pb.Signal.SIGTERM else signal.SIGKILL
        # envd signals only the process; the tree here keeps `timeout`'s group from
        # outliving a killed cold run on the test host.
        kill_tree(proc.pid, sig)
        return process_pb.SendSignalResponse()


def _find(sbx: FakeSandbox, selector: process_pb.ProcessSelector | None) -> FakeProcess:
    """The process a selector names, or envd's NOT_FOUND error."""
    choice = selector.selector if selector is not None else None
    if choice is None:
        raise ConnectError(Code.UNIMPLEMENTED, "invalid input type: no process selector")
    procs = list(sbx.processes.values())
    found = [p for p in procs if (p.pid if choice.field == "pid" else p.tag) == choice.value]
    if not found:
        raise ConnectError(Code.NOT_FOUND, f"process with {choice.field} {choice.value} not found")
    return found[0]


def _follow(proc: FakeProcess, sub: _Subscriber, response: Callable[..., R]) -> Iterator[R]:
    """A Start or Connect stream: the start event, then the process's events from now on."""
    try:
        yield response(event=_start_event(proc.pid))
        while (event := sub.events.get()) is not None:
            yield response(event=event)
    finally:
        proc.unsubscribe(sub)


def _start_event(pid: int) -> process_pb.ProcessEvent:
    return process_pb.ProcessEvent(
        event=Oneof("start", process_pb.ProcessEvent.StartEvent(pid=pid))
    )


def _end_event(returncode: int) -> process_pb.ProcessEvent.EndEvent:
    """What envd (Go's ProcessState) reports: a signal death is exit code -1."""
    if returncode >= 0:
        status = f"exit status {returncode}"
        error = status if returncode else None
        return process_pb.ProcessEvent.EndEvent(
            exit_code=returncode, exited=True, status=status, error=error
        )
    name = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated"}.get(
        signal.Signals(-returncode), signal.Signals(-returncode).name
    )
    status = f"signal: {name}"
    return process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=status, error=status)


def _json(start_response: Any, status: str, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _read_body(environ: Mapping[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


class FakeE2B:
    """The E2B control plane and envd on one loopback port; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        api_key: str = "e2b_test_key",
        envd_version: str = "0.6.7",
        base_env: Mapping[str, str] = DEFAULT_BASE_ENV,
    ) -> None:
        self.root = Path(root)
        self.api_key = api_key
        self.envd_version = envd_version
        self.base_env = dict(base_env)
        # Fault injection: set these from a test.
        self.create_faults: list[Fault] = []
        self.hang_seconds = 30.0
        # Cut this many upcoming Start streams after the start event. The process is killed
        # too (unlike real envd) so it does not compete for CPU with the retried run.
        self.drop_starts = 0
        # What the fake saw, in order.
        self.calls: list[str] = []
        self.create_requests: list[dict[str, Any]] = []
        self.create_keys: list[str | None] = []  # Idempotency-Key of each create request
        self.starts: list[StartRecord] = []
        self.connects: list[int] = []  # pids that a Connect stream followed
        self.envd_headers: list[dict[str, str]] = []
        self.sandboxes: dict[str, FakeSandbox] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # the connection the current request came in on
        self._stopping = threading.Event()
        self._rpc = process_connect.ProcessWSGIApplication(_Process(self))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeE2B:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = make_server(
            "127.0.0.1", 0, self._app, server_class=_Server, handler_class=_Handler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for sbx in list(self.sandboxes.values()):
            sbx.kill_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeE2B:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def sdk_options(self) -> dict[str, str]:
        """SDK options pointing both the control plane and envd at this fake."""
        return {"api_url": self.url, "sandbox_url": self.url}

    # -- state for tests -----------------------------------------------------------------

    def add_sandbox(
        self, sandbox_id: str | None = None, *, access_token: str | None = None
    ) -> FakeSandbox:
        """Register a running sandbox (as if created earlier, or for debug mode)."""
        sandbox_id = sandbox_id or f"sbx-{len(self.sandboxes) + 1:03d}-{secrets.token_hex(3)}"
        sbx = FakeSandbox(sandbox_id, self.root / sandbox_id, access_token)
        sbx.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.sandboxes[sandbox_id] = sbx
        return sbx

    def crash(self, sandbox_id: str) -> None:
        """The sandbox dies (timeout, host failure): processes killed, envd gone."""
        sbx = self.sandboxes[sandbox_id]
        sbx.alive = False
        sbx.kill_all()

    def cut_streams(self, sandbox_id: str, pid: int) -> int:
        """Break every Start/Connect stream following `pid`; the process keeps running.
        Returns how many streams were cut."""
        return self.sandboxes[sandbox_id].processes[pid].cut_streams()

    def created(self) -> list[str]:
        """Ids of sandboxes created through the API, in order."""
        return [c.rsplit(" ", 1)[1] for c in self.calls if c.startswith("created ")]

    def alive(self) -> list[str]:
        return [s.sandbox_id for s in self.sandboxes.values() if s.alive]

    # -- HTTP ----------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if path.startswith("/v2/sandboxes") or path.startswith("/sandboxes"):
            self._record(f"{method} {path}")
            if environ.get("HTTP_X_API_KEY") != self.api_key:
                return _json(
                    start_response, "401 Unauthorized", {"code": 401, "message": "Invalid API key"}
                )
            return self._control_plane(environ, start_response, method, path)
        return self._envd(environ, start_response, method, path)

    def _record(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)

    def _control_plane(
        self, environ: dict[str, Any], start_response: Any, method: str, path: str
    ) -> Iterable[bytes]:
        parts = path.strip("/").split("/")
        if method == "POST" and parts == ["v2", "sandboxes"]:
            return self._create(environ, start_response)
        if method == "POST" and len(parts) == 4 and parts[:2] == ["v2", "sandboxes"]:
            sbx = self.sandboxes.get(parts[2])
            if sbx is None or not sbx.alive:
                return _json(
                    start_response,
                    "404 Not Found",
                    {"code": 404, "message": f"sandbox {parts[2]} not found"},
                )
            return _json(start_response, "200 OK", self._sandbox_json(sbx))
        if method == "DELETE" and len(parts) == 2 and parts[0] == "sandboxes":
            sbx = self.sandboxes.get(parts[1])
            if sbx is None or not sbx.alive:
                return _json(
                    start_response,
                    "404 Not Found",
                    {"code": 404, "message": f"sandbox {parts[1]} not found"},
                )
            self.crash(sbx.sandbox_id)
            start_response("204 No Content", [])
            return []
        return _json(
            start_response, "404 Not Found", {"code": 404, "message": f"no route {method} {path}"}
        )

    def _create(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = json.loads(_read_body(environ) or b"{}")
        key = environ.get("HTTP_IDEMPOTENCY_KEY")
        with self._lock:
            self.create_requests.append(body)
            self.create_keys.append(key)
            fault = self.create_faults.pop(0) if self.create_faults else None
        if fault == "hang":
            # Never answer: the client's timeout must fire. Closing without a response
            # afterwards keeps the thread from outliving the test.
            self._stopping.wait(self.hang_seconds)
            environ["fake.socket"].shutdown(socket.SHUT_RDWR)
            return []
        if isinstance(fault, int):
            message = (
                "Rate limit: too many concurrent sandboxes" if fault == 429 else "Internal error"
            )
            reason = {
                429: "Too Many Requests",
                500: "Internal Server Error",
                502: "Bad Gateway",
                503: "Service Unavailable",
            }.get(fault, "Error")
            return _json(start_response, f"{fault} {reason}", {"code": fault, "message": message})
        with self._lock:
            existing = self._by_idempotency_key.get(key) if key else None
        if existing is not None:
            return _json(
                start_response, "201 Created", self._sandbox_json(self.sandboxes[existing])
            )
        sbx = self.add_sandbox(access_token=secrets.token_hex(8))
        sbx.template = body.get("templateID", "base")
        sbx.timeout = body.get("timeout")
        sbx.metadata = dict(body.get("metadata") or {})
        with self._lock:
            if key:
                self._by_idempotency_key[key] = sbx.sandbox_id
        self._record(f"created {sbx.sandbox_id}")
        return _json(start_response, "201 Created", self._sandbox_json(sbx))

    def _sandbox_json(self, sbx: FakeSandbox) -> dict[str, Any]:
        return {
            "templateID": sbx.template,
            "sandboxID": sbx.sandbox_id,
            "clientID": "fake",
            "envdVersion": self.envd_version,
            "envdAccessToken": sbx.access_token,
        }

    def _stream_socket(self) -> socket.socket | None:
        return getattr(self._local, "socket", None)

    def _sandbox_for(self, sandbox_id: str) -> FakeSandbox:
        sbx = self.sandboxes.get(sandbox_id)
        if sbx is None or not sbx.alive:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
        return sbx

    def _envd(
        self, environ: dict[str, Any], start_response: Any, method: str, path: str
    ) -> Iterable[bytes]:
        sandbox_id = environ.get("HTTP_E2B_SANDBOX_ID", "")
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        with self._lock:
            self.envd_headers.append(headers)
            self.calls.append(f"envd {method} {path} {sandbox_id}")
        sbx = self.sandboxes.get(sandbox_id)
        if sbx is None or not sbx.alive:
            # What E2B's edge proxy answers for a sandbox that is gone.
            return _json(
                start_response,
                "502 Bad Gateway",
                {
                    "code": 502,
                    "message": f"The sandbox {sandbox_id} was not found",
                    "sandboxId": sandbox_id,
                },
            )
        if sbx.access_token is not None and headers.get("x-access-token") != sbx.access_token:
            return _json(
                start_response, "401 Unauthorized", {"code": 401, "message": "invalid access token"}
            )
        if path == "/health":
            start_response("204 No Content", [])
            return []
        if path == "/files":
            return self._files(sbx, environ, start_response, method)
        if path.startswith("/process.Process/"):
            self._local.socket = environ["fake.socket"]
            if path.endswith("/Start") and self._take_drop():
                # A promised length the body never reaches makes the cut a transport
                # error for the client, as a reset HTTP/2 stream is against real E2B.
                def promise_more(status: str, headers: list[tuple[str, str]]) -> Any:
                    return start_response(status, [*headers, ("Content-Length", "1048576")])

                result = self._rpc(environ, promise_more)
                return _drop_after_first(result, environ["fake.socket"], sbx)
            return self._rpc(environ, start_response)
        return _json(start_response, "404 Not Found", {"code": 404, "message": f"no route {path}"})

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drop_starts <= 0:
                return False
            self.drop_starts -= 1
            return True

    def _files(
        self, sbx: FakeSandbox, environ: dict[str, Any], start_response: Any, method: str
    ) -> Iterable[bytes]:
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if method == "GET":
            target = sbx.host_path(query.get("path", ""))
            if not target.is_file():
                return _json(
                    start_response,
                    "404 Not Found",
                    {"code": 404, "message": f"path '{query.get('path')}' does not exist"},
                )
            data = target.read_bytes()
            start_response(
                "200 OK",
                [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))],
            )
            return [data]
        content_type = environ.get("CONTENT_TYPE", "")
        body = _read_body(environ)
        if content_type.startswith("multipart/form-data"):
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + body
            )
            uploads = [
                (part.get_filename() or "", part.get_payload(decode=True) or b"")
                for part in message.iter_parts()
            ]
            if len(uploads) == 1 and "path" in query:
                uploads = [(query["path"], uploads[0][1])]
        else:
            uploads = [(query.get("path", ""), body)]
        written = []
        for sandbox_path, data in uploads:
            target = sbx.host_path(sandbox_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append({"name": target.name, "type": "file", "path": sandbox_path})
        return _json(start_response, "200 OK", written)


def _drop_after_first(
    result: Iterable[bytes], sock: socket.socket, sbx: FakeSandbox
) -> Iterator[bytes]:
    """Send the first frame (the start event), then cut the connection mid-stream."""
    iterator = iter(result)
    try:
        yield next(iterator)
        sock.shutdown(socket.SHUT_RDWR)
        sbx.kill_all()
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
