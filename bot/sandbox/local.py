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
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
    IN_OUT,
    IN_PYCACHE,
    IN_REPORT,
    IN_WORK,
    Bind,
    HostSetup,
    SandboxLimits,
    seccomp_fd,
    unavailable_from_bwrap,
    write_etc,
    write_lib,
)
from bot.sandbox.pytest_run import (
    REPORT_ENV,
    pytest_args,
)
from bot.sandbox.rundir import RunDir, UidLease, make_private_dir, sweep_stale_dirs, write_workspace

PROBE_TIMEOUT = 30.0


def pytest_options() -> list[str]:
    """The options after `python -m pytest` in the shared invocation."""
    args = pytest_args("python")
    start = args.index("-m")
    if args[start + 1] != "pytest":
        raise RuntimeError(f"unexpected pytest invocation: {args}")
    return args[start + 2 :]


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
