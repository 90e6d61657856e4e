"""The default sandbox: pytest inside bubblewrap on this machine, with rlimits and a timeout.

Layout of the sandbox (a fresh tmpfs root, nothing of the host's `/` unless bound here):

    /usr, /lib*, /bin, /sbin        read-only (symlinks when the host has merged /usr)
    <python prefixes>               read-only at their own paths (pyenv base, the venv)
    /etc/{ld.so.*,localtime,...}    read-only; hosts/passwd/group are generated
    /run/tdd/lib                    read-only: the report plugin, on PYTHONPATH
    /run/tdd/cfg                    read-only: the one pytest config file the run reads
    /run/tdd/stage                  read-only: the workspace as the host wrote it
    /run/tdd/out                    the report dir: not listable; holds the run's report
                                    file (random name, made by the host, writable by the
                                    run's uid only)
    /workspace                      size-capped tmpfs: the staged files are copied here
                                    (by the run's uid), then pytest runs in it
    /tmp, /dev/shm                  fresh size-capped tmpfs; /proc, /dev, /dev/mqueue too

Nothing else is writable, so the tmpfs sizes bound what a run can write (SandboxLimits).
bwrap gets its options through a pipe (`--args`), so the sandbox's pid 1 (bwrap itself)
shows neither host paths nor the environment in /proc/1/cmdline.

As root, bwrap runs without a user namespace and the command drops to a per-run uid from a
private range with `setpriv` (RLIMIT_NPROC is not enforced for uid 0, even in a user
namespace, and a uid shared by concurrent runs would share one process budget); seccomp
keeps that uid from making user namespaces of its own. Not as root, bwrap maps the
caller's own uid in a new user namespace (then the report dir belongs to the run's own
uid, which could chmod it back to listable). Limits are set by `prlimit` after the uid
drop, so nothing inside can raise them again. The whole run's memory is held by a cgroup
or by a watchdog (memory.py); `check()` says which.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bot.errors import SandboxUnavailable
from bot.sandbox.base import TestResult, Workspace
from bot.sandbox.capture import (
    HeadTail,
    build_result,
    parse_status,
    pump_output,
    read_all,
    read_report,
)
from bot.sandbox.jail import (
    BWRAP_ENV,
    IN_CFG,
    IN_PYCACHE,
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
    unavailable_from_bwrap,
    write_config,
    write_etc,
    write_lib,
)
from bot.sandbox.memory import MemoryRule, RunMemory, sweep_stale_cgroups
from bot.sandbox.pytest_run import (
    DEFAULT_CONFIG,
    REPORT_ENV,
    PytestConfig,
    as_config,
    command_line,
    pytest_args,
    pytest_options,
)
from bot.sandbox.rundir import RunDir, UidLease, sweep_stale_dirs, write_workspace

PROBE_TIMEOUT = 30.0
# Runs first in every sandbox, as the run's uid and under its limits: the workspace goes
# from the read-only staging dir into the /workspace tmpfs, where the tests may change it.
# A workspace too big for the tmpfs fails here, with cp's message, like any failing run.
# SIGXFSZ is ignored (Python ignores it anyway) so that a file over RLIMIT_FSIZE makes cp
# fail with EFBIG and exit 1, as the warm runner's copy does, instead of dying of it.
COPY_IN = f"trap '' XFSZ; cp -R {IN_STAGE}/. {IN_WORK} && exec \"$@\""


def copy_in(host: HostSetup, command: Sequence[str]) -> list[str]:
    """`command`, preceded by copying the staged workspace into /workspace."""
    return [host.shell, "-c", COPY_IN, "tdd-copy-in", *command]


def run_command(python: str, config: PytestConfig) -> list[str]:
    """The pytest command line of a run inside the local sandbox (cold or warm)."""
    return pytest_args(python, config_file=config_path(config), rootdir=IN_WORK)


@dataclass(frozen=True)
class ProbeResult:
    error: str | None
    pycache: str | None  # host dir holding bytecode for pytest's start-up modules
    # Filled by `check()`: which rules bound a run's memory and disk on this host.
    memory: str = ""
    disk: str = ""


def describe_disk(host: HostSetup, limits: SandboxLimits) -> str:
    if not host.supports_size:
        return (
            f"no size caps: {host.bwrap} lacks --size, so /workspace, /tmp and /dev/shm are "
            "tmpfs mounts limited only by RAM"
        )
    mib = 1 << 20
    return (
        f"tmpfs: /workspace {limits.workspace_bytes // mib} MiB, /tmp and /dev/shm "
        f"{limits.tmpfs_bytes // mib} MiB each; one report file of at most "
        f"{limits.file_size_bytes // mib} MiB on the host"
    )


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
    options = pytest_options(config_file=config_path(DEFAULT_CONFIG), rootdir=IN_WORK)
    command = [host.python, "-P", "-s", "-c", boot, *options, "--collect-only"]
    outcome = run_in_sandbox(
        host,
        # It checks the machine, not the caller's limits: a tiny memory limit must not
        # make the cached verdict "unavailable" for every later sandbox.
        limits=SandboxLimits(wall_seconds=PROBE_TIMEOUT),
        temp_root=temp_root,
        workspace={},
        command=command,
        config=DEFAULT_CONFIG,
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
    memory_exceeded: bool = False
    memory_note: str = ""


def run_in_sandbox(
    host: HostSetup,
    *,
    limits: SandboxLimits,
    temp_root: str | None,
    workspace: Workspace,
    command: Sequence[str],
    config: PytestConfig,
    memory: RunMemory | None = None,
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
        stage = make_staging_dir(tmp / "stage")
        write_workspace(tmp / "stage", workspace)
        write_config(tmp / "cfg", config)
        report_bind = make_report_dir(tmp / "out")
        report_host, report_inside = new_report_file(tmp / "out", chown_to)
        binds = [
            write_lib(tmp / "lib"),
            Bind("--ro-bind", str(tmp / "cfg"), IN_CFG),
            stage,
            *write_etc(tmp / "etc", owner),
            *extra_binds,
            report_bind,
        ]
        env = host.env({REPORT_ENV: report_inside, **(extra_env or {})})
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
                    command=copy_in(host, command),
                )
                with bwrap_launch(host, argv) as (launch, launch_fds):
                    if memory is not None:
                        launch = memory.command(host.shell, launch)
                    started = time.monotonic()
                    proc = subprocess.Popen(
                        launch,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        pass_fds=(filter_fd, status_w, *launch_fds),
                        start_new_session=True,
                        env=BWRAP_ENV,
                    )
            os.close(status_w)
            status_w = -1
            if memory is not None:
                memory.attach(proc.pid)
            with proc:
                exit_code, timed_out = pump_output(
                    proc,
                    capture,
                    started + limits.wall_seconds,
                    memory.poll if memory is not None else None,
                )
            duration = time.monotonic() - started
            status = parse_status(read_all(status_r))
        finally:
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)
        exceeded = memory is not None and memory.exceeded()
        return RunOutcome(
            exit_code=exit_code,
            timed_out=timed_out and not exceeded,
            capture=capture,
            report_json=read_report(report_host, owner=owner),
            duration=duration,
            setup_failed=not timed_out
            and not exceeded
            and not any("child-pid" in s for s in status),
            memory_exceeded=exceeded,
            memory_note=memory.note() if exceeded and memory is not None else "",
        )
    finally:
        run_dir.remove()
        if lease:
            lease.release()


def over_memory(result: TestResult, note: str) -> TestResult:
    """A result whose run went over its memory limit: a failure, whatever pytest said."""
    return replace(
        result,
        errors=result.errors + 1,
        failing=(*result.failing, "<memory limit exceeded>"),
        output=f"{result.output}\n{note}\n",
        extra={**result.extra, "memory_exceeded": True},
    )


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
        pytest_config: PytestConfig | str | None = None,
        cgroup_parent: str | None = None,
    ) -> None:
        """`temp_root` holds per-run dirs (default: the system temp dir); a run cannot
        write there beyond its report file when we are root (see the module docstring).
        `pytest_config` is the pytest configuration runs use unless `run_tests` names
        another (a str is pytest.ini text; default: an empty one). `cgroup_parent` is a
        cgroup v2 dir delegated to us for run cgroups (see memory.py)."""
        self.limits = limits or SandboxLimits()
        self.host = HostSetup.detect(bwrap=bwrap, python=python)
        self.temp_root = temp_root
        self.pytest_config = as_config(pytest_config)
        self.memory_rule = MemoryRule.detect(cgroup_parent)
        sweep_stale_dirs(temp_root)
        sweep_stale_cgroups(self.memory_rule)

    def check(self) -> ProbeResult:
        """Probe the sandbox once (cached per process); raise SandboxUnavailable if broken.
        The result also says which rules hold a run's memory and disk here."""
        result = probe(self.host, self.temp_root)
        return replace(
            result,
            memory=self.memory_rule.describe(self.limits),
            disk=describe_disk(self.host, self.limits),
        )

    def run_tests(
        self, workspace: Workspace, *, pytest_config: PytestConfig | str | None = None
    ) -> TestResult:
        config = as_config(pytest_config, self.pytest_config)
        binds, env = pycache_binds(probe(self.host, self.temp_root).pycache)
        command = run_command(self.host.python, config)
        memory = self.memory_rule.start(self.limits)
        try:
            outcome = run_in_sandbox(
                self.host,
                limits=self.limits,
                temp_root=self.temp_root,
                workspace=workspace,
                command=command,
                config=config,
                memory=memory,
                extra_binds=binds,
                extra_env=env,
            )
        finally:
            memory.close()
        if outcome.setup_failed:
            message = str(unavailable_from_bwrap(outcome.capture.text()))
            return TestResult(
                exit_code=outcome.exit_code or 1,
                output=outcome.capture.text(),
                duration=outcome.duration,
                sandbox_error=message,
            )
        result = build_result(
            exit_code=outcome.exit_code,
            report_json=outcome.report_json,
            capture=outcome.capture,
            duration=outcome.duration,
            timed_out=outcome.timed_out,
            cap=self.limits.output_cap,
            command=command_line(command),
        )
        if outcome.memory_exceeded:
            result = over_memory(result, outcome.memory_note)
        return result

    def close(self) -> None:
        """Nothing outlives a cold run; present for the Sandbox protocol."""

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
