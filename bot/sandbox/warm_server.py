"""The warm pytest server both warm backends run inside their sandbox.

It imports pytest once, then serves test runs: for each JSON request line on stdin it forks
a child into the run's directory, which starts a new session and calls pytest's console
entry point; the server enforces the wall timeout, kills what the run left behind and
answers with one JSON line on stdout (exit status, and the head and tail of the output).
The server never imports the code under test: user modules only ever load in children.
When a workspace module would shadow a module the server already holds (say `random.py`),
the host asks for `exec` and the child runs a fresh interpreter instead.

`serve()` is shipped as source and runs as a script under the sandbox's Python, so it is
self-contained (its imports live inside it) and needs only the stdlib and pytest.

* `contained=True` (the local bubblewrap runner): the server is alone in its sandbox, so
  after each run it kills every other process there and wipes /tmp, /dev/shm, its working
  directory (/workspace), SysV IPC objects and POSIX message queues. A fresh IPC namespace
  per run is not to be had: making one needs CAP_SYS_ADMIN, which the run's uid lacks (and
  the user namespace that would grant it is what seccomp forbids), so the server removes
  every object instead; it shares the run's uid, so modes (a dir made 000) do not stop it.
* `contained=False` (E2B): the server shares the machine with envd and other processes of
  its uid. It kills only its own descendants (as their subreaper, it inherits every orphan
  of a run), leaves shared directories alone, and each child arms a watchdog that kills the
  run's process group at the deadline even if the server is gone by then (killing a
  process through envd does not kill its descendants).

Protocol. Hello: `{"ready": true, "modules": [top-level names], "executable": path}`.
Request: `{"id", "dir", "timeout", "cap", "args", "exec", "rlimits"?, "path_env"?,
"stage"?}`; `dir` is relative to the server's start directory (or absolute); `stage` is a
directory whose contents the child copies into `dir` first (after its rlimits are set);
`path_env` maps environment variables to paths relative to the run directory (a report
path, say: it is set in the child only, never in the server's own environment), and a
`PYTHONPATH` there replaces the server's own on `sys.path`, as at interpreter start-up.
The server runs under `python -P -s`, and its children do not put their working directory
on sys.path: exactly what a cold `python -P -s -m pytest` does. Reply: `{"id",
"exit_code", "signal", "timed_out", "head", "tail", "total"}` (head and tail base64).
`{"cmd": "modules"}` answers with every module the server holds.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import PurePosixPath

SERVER_MODULE = "tdd_warm_server"


def serve(contained: bool = True) -> None:  # pragma: no cover - runs inside the sandbox
    """The server's main loop; see the module docstring for `contained`."""
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
    import stat
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
    base_dir = os.getcwd()
    # What a child's sys.path is built from: ours without our own PYTHONPATH entries, which
    # a run's `path_env` PYTHONPATH replaces.
    startup_pythonpath = {
        os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    }
    base_sys_path = [p for p in sys.path if os.path.abspath(p) not in startup_pythonpath]

    def send(message: dict) -> None:
        proto_out.write(json.dumps(message).encode() + b"\n")
        proto_out.flush()

    def empty_dir(top: str, mode: int) -> None:
        """Remove everything inside `top`, however deep, whatever the modes the run set
        (it has our uid), never crossing into another mount (a bind below /tmp)."""
        try:
            root = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return
        device = os.fstat(root).st_dev
        with contextlib.suppress(OSError):
            if os.fstat(root).st_uid == os.getuid():
                os.fchmod(root, mode)  # the run could have made it unreadable
        # Depth-first by file descriptor: no path grows past PATH_MAX, no recursion limit.
        frames: list = [[root, None, None, None]]  # fd, parent fd, name, subdirs left
        while frames:
            frame = frames[-1]
            fd = frame[0]
            if frame[3] is None:
                subdirs = []
                with contextlib.suppress(OSError), os.scandir(fd) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                            if not stat.S_ISDIR(st.st_mode):
                                os.unlink(entry.name, dir_fd=fd)
                            elif st.st_dev == device:
                                subdirs.append(entry.name)
                frame[3] = subdirs
            if frame[3]:
                name = frame[3].pop()
                with contextlib.suppress(OSError):
                    os.chmod(name, 0o700, dir_fd=fd, follow_symlinks=False)
                try:
                    child_fd = os.open(
                        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd
                    )
                except OSError:
                    continue
                frames.append([child_fd, fd, name, None])
                continue
            frames.pop()
            os.close(fd)
            if frame[1] is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(frame[2], dir_fd=frame[1])

    def scrub() -> None:
        """Remove what a run can leave in the sandbox: /tmp, /dev/shm, the workdir, SysV
        IPC objects and POSIX message queues (the server's IPC namespace outlives runs; a
        cold run's does not)."""
        if not contained:
            return  # shared with other processes: not ours to wipe
        for path, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), (base_dir, 0o777)):
            empty_dir(path, mode)
        # bwrap mounts the namespace's mqueue fs here: the only way to list the queues.
        with contextlib.suppress(OSError):
            for name in os.listdir("/dev/mqueue"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/dev/mqueue/{name}")
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

    warm_up = [*sys.argv[1:], "--collect-only"]
    if not contained:
        # Outside a private root, an ini file or conftest.py that a run planted in a parent
        # directory would otherwise be loaded here, into the server.
        warm_up += ["-c", os.devnull, "--noconftest"]
    saved_path = list(sys.path)
    saved_env = dict(os.environ)
    with contextlib.suppress(Exception):
        pytest.main(warm_up)  # in the still empty workdir
    os.chdir(base_dir)
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

    def reap(statuses: dict) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = status

    def others_alive(me: int) -> bool:
        return any(e.isdigit() and int(e) not in (1, me) for e in os.listdir("/proc"))

    def kill_everything_else(statuses: dict) -> None:
        """SIGKILL every process of the sandbox except us and bwrap's init; reap them."""
        me = os.getpid()
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)  # atomic against forks: holds the tasklist lock
            reap(statuses)
            if not others_alive(me) or time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def descendants(root: int) -> list:
        """Live (non-zombie) processes below `root`, from /proc."""
        children: dict = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
        found, todo = [], [root]
        while todo:
            for child_pid in children.get(todo.pop(), []):
                found.append(child_pid)
                todo.append(child_pid)
        return found

    def kill_descendants(statuses: dict) -> None:
        """SIGKILL everything below us (a run's orphans are reparented to us); reap it."""
        me = os.getpid()
        deadline = time.monotonic() + 5
        while True:
            reap(statuses)
            left = descendants(me)
            if not left or time.monotonic() > deadline:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def arm_watchdog(seconds: float) -> None:
        """Fork a process that kills our process group after `seconds`, unless we exit
        first: the run stays bounded even if the code under test kills the server."""
        group = os.getpid()
        if os.fork() != 0:
            return
        try:
            os.closerange(0, 1 << 16)  # hold no pipe: readers must see EOF when we go
            pidfd = os.pidfd_open(group)
            ready, _, _ = select.select([pidfd], [], [], seconds)
            if not ready:
                os.killpg(group, signal.SIGKILL)
        finally:
            os._exit(0)

    def child(request: dict, write_end: int) -> None:
        os.setsid()
        libc.prctl(pr_set_dumpable, 1, 0, 0, 0)
        if not contained:
            # A second later than the server's own deadline, so a live server always
            # reports the timeout itself.
            arm_watchdog(request["timeout"] + 1)
        null_in = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_in, 0)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.closerange(3, 1 << 16)
        for name, value in request.get("rlimits", {}).items():
            limit = getattr(resource, name)
            resource.setrlimit(limit, (value, value))
        os.chdir(os.path.join(base_dir, request["dir"]))
        if request.get("stage"):
            try:
                copy_in(os.path.join(base_dir, request["stage"]), ".")
            except OSError as exc:
                # What the cold runner's `cp` says when the workspace does not fit.
                print(f"tdd: cannot copy the workspace in: {exc}", file=sys.stderr)
                os._exit(1)
        path_env = request.get("path_env") or {}
        for name, value in path_env.items():
            os.environ[name] = os.pathsep.join(
                os.path.abspath(part) for part in value.split(os.pathsep)
            )
        if request.get("exec"):
            os.execv(request["exec"][0], request["exec"])
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives until os._exit
        if "PYTHONPATH" in path_env:
            sys.path[:] = [*os.environ["PYTHONPATH"].split(os.pathsep), *base_sys_path]
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

    def copy_in(stage: str, dest: str) -> None:
        """The staged workspace into `dest`, as `cp -R stage/. dest` does for cold runs."""
        for dirpath, _dirnames, filenames in os.walk(stage):
            target = os.path.normpath(os.path.join(dest, os.path.relpath(dirpath, stage)))
            if target != os.path.normpath(dest):
                os.mkdir(target, 0o755)
            for name in filenames:
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(target, name))

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
        if contained:
            kill_everything_else(statuses)
        else:
            kill_descendants(statuses)
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
        signum = None
        if status is None:
            exit_code = 1  # lost track of the child: never report success
        elif os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            exit_code = 128 + signum  # what bwrap reports for a cold run
        else:
            exit_code = os.waitstatus_to_exitcode(status)
        scrub()
        return {
            "id": request["id"],
            "exit_code": exit_code,
            "signal": signum,
            "timed_out": timed_out,
            "head": base64.b64encode(bytes(capture.head)).decode(),
            "tail": base64.b64encode(bytes(capture.tail)).decode(),
            "total": capture.total,
        }

    send({"ready": True, "modules": top_level_modules(), "executable": sys.executable})
    for line in proto_in:
        request = json.loads(line)
        if request.get("cmd") == "modules":
            send({"id": request.get("id"), "modules": sorted(sys.modules)})
        else:
            send(run(request))


def server_source(*, contained: bool) -> str:
    """The server as a script for the sandbox: `serve()` and a main that runs it."""
    main = f"\n\nif __name__ == '__main__':\n    serve(contained={contained!r})\n"
    return textwrap.dedent(inspect.getsource(serve)) + main


def workspace_module_names(workspace: dict[str, str]) -> set[str]:
    """Every name a workspace file could be imported under at top level (conservative)."""
    names: set[str] = set()
    for path in workspace:
        parts = PurePosixPath(path).parts
        names.update(parts[:-1])
        stem, _, suffix = parts[-1].partition(".")
        if suffix in ("py", "pyc", "pyi", "so", "pth") or not suffix:
            names.add(stem)
    return names
