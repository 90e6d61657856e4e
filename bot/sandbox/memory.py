"""The memory limit for a whole run (RLIMIT_AS only ever holds one process).

Two ways, chosen per sandbox by `MemoryRule.detect`:

* **cgroup v2**, where the host delegates a memory controller: a cgroup v2 directory we may
  make children in, with `memory` in its cgroup.subtree_control (the `cgroup_parent` a
  caller names, or else the cgroup this process runs in, when it is set up that way). Each
  cold run, and each warm server, gets a child `tdd-<random>` with `memory.max` set to
  `run_memory_bytes` plus the sizes of the run's tmpfs mounts (their pages are charged to
  the cgroup too) and no swap. bwrap is started by a shell that first moves itself into
  the cgroup, so no process of the run ever runs outside it. The kernel enforces the
  limit; `memory.events` (oom_kill) tells the host it did.
* **watchdog**, everywhere else, including hosts whose memory controller is mounted as
  cgroup v1 only (the container this was written in: cgroup v2 there offers `hugetlb`
  alone). The host sums the resident memory (RSS) of every process below the run's bwrap
  every MEMORY_POLL_SECONDS and kills the run when the sum passes `run_memory_bytes`.
  Between two checks a run can overshoot by what it allocates in that time; RSS counts
  pages shared after fork once per process, so the sum errs on the high side.

Either way the run's result says `memory_exceeded` and fails; the sandbox goes on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.sandbox.jail import SandboxLimits

MEMORY_POLL_SECONDS = 0.05
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CGROUP_PREFIX = "tdd-"
# A run cgroup can only be removed once the kernel has reaped every process in it.
CGROUP_REMOVE_SECONDS = 5.0


def _read(path: str | Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def cgroup2_mounts(mountinfo: str) -> list[tuple[str, Path]]:
    """(root inside the hierarchy, mount point) of every cgroup2 mount in a mountinfo."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or not right.startswith("cgroup2 "):
            continue
        fields = left.split()
        if len(fields) >= 5:
            unescape = fields[4].replace("\\040", " ")
            mounts.append((fields[3].replace("\\040", " "), Path(unescape)))
    return mounts


def own_cgroup_dir(proc_cgroup: str, mountinfo: str) -> Path | None:
    """The directory of the cgroup v2 this process is in, if the hierarchy is mounted."""
    own = next(
        (line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")),
        None,
    )
    if own is None:
        return None
    for root, mount_point in cgroup2_mounts(mountinfo):
        if own == root or own.startswith(root.rstrip("/") + "/"):
            rel = own[len(root.rstrip("/")) :].lstrip("/")
            return mount_point / rel if rel else mount_point
    return None


def delegates_memory(directory: Path) -> bool:
    """Whether we can make child cgroups of `directory` with a memory limit."""
    controls = _read(directory / "cgroup.subtree_control")
    return (
        controls is not None
        and "memory" in controls.split()
        and os.access(directory, os.W_OK | os.X_OK)
    )


@dataclass(frozen=True)
class MemoryRule:
    """How a sandbox holds a run's memory: in a cgroup below `cgroup_parent`, or (None)
    with the watchdog."""

    cgroup_parent: Path | None

    @classmethod
    def detect(
        cls,
        cgroup_parent: str | None = None,
        *,
        proc_cgroup: str | None = None,
        mountinfo: str | None = None,
    ) -> MemoryRule:
        """The cgroup named by `cgroup_parent` if it delegates memory (else none at all:
        a named parent that does not work is not silently swapped for another), or our
        own cgroup when it does; the watchdog otherwise."""
        if cgroup_parent is not None:
            parent = Path(cgroup_parent)
            return cls(parent if delegates_memory(parent) else None)
        own = own_cgroup_dir(
            proc_cgroup if proc_cgroup is not None else _read("/proc/self/cgroup") or "",
            mountinfo if mountinfo is not None else _read("/proc/self/mountinfo") or "",
        )
        return cls(own if own is not None and delegates_memory(own) else None)

    @property
    def kind(self) -> str:
        return "cgroup" if self.cgroup_parent is not None else "watchdog"

    def cgroup_bytes(self, limits: SandboxLimits) -> int:
        """memory.max of a run cgroup: the processes' budget plus the tmpfs mounts."""
        return limits.run_memory_bytes + 2 * limits.tmpfs_bytes + limits.workspace_bytes

    def describe(self, limits: SandboxLimits) -> str:
        per_process = f"RLIMIT_AS {_size(limits.memory_bytes)} per process"
        if self.cgroup_parent is not None:
            return (
                f"cgroup v2: memory.max {_size(self.cgroup_bytes(limits))} for the whole run "
                f"(processes {_size(limits.run_memory_bytes)} + tmpfs), no swap, in a child "
                f"of {self.cgroup_parent}; {per_process}"
            )
        return (
            f"watchdog (no delegated cgroup v2 memory controller): the run is killed when "
            f"its processes' resident memory passes {_size(limits.run_memory_bytes)}, "
            f"checked every {MEMORY_POLL_SECONDS * 1000:.0f} ms; {per_process}"
        )

    def start(self, limits: SandboxLimits, *, warm: bool = False) -> RunMemory:
        """The limit for one cold run or one warm server."""
        if self.cgroup_parent is None:
            return RunMemory(limits.run_memory_bytes, None)
        # A warm server outlives runs: the OOM killer takes the run's biggest process, not
        # the whole group, so the server survives a run that ran out of memory.
        cgroup = RunCgroup(self.cgroup_parent, self.cgroup_bytes(limits), oom_group=not warm)
        return RunMemory(limits.run_memory_bytes, cgroup)


def _size(n: int) -> str:
    mib = n / (1 << 20)
    return f"{mib / 1024:.3g} GiB" if mib >= 1024 else f"{mib:.3g} MiB"


class RunCgroup:
    """One run's (or warm server's) child cgroup, removed by `remove()`."""

    def __init__(self, parent: Path, limit: int, *, oom_group: bool) -> None:
        self.path = parent / f"{CGROUP_PREFIX}{secrets.token_hex(8)}"
        self.path.mkdir()
        try:
            (self.path / "memory.max").write_text(str(limit))
            for name, value in (
                ("memory.swap.max", "0"),
                ("memory.oom.group", "1" if oom_group else "0"),
            ):
                # Absent without swap accounting or on kernels before 4.19.
                if (self.path / name).exists():
                    (self.path / name).write_text(value)
        except BaseException:
            self.remove()
            raise

    def oom_kills(self) -> int:
        for line in (_read(self.path / "memory.events") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def wrap(self, shell: str, argv: Sequence[str]) -> list[str]:
        """`argv` started inside the cgroup: the shell moves itself there (writing 0 to
        cgroup.procs moves the writer), then becomes `argv`."""
        return [shell, "-c", 'echo 0 > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def remove(self) -> None:
        kill = self.path / "cgroup.kill"  # Linux 5.14+: kills whatever is left
        with contextlib.suppress(OSError):
            if kill.exists():
                kill.write_text("1")
        deadline = time.monotonic() + CGROUP_REMOVE_SECONDS
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # swept by the next sandbox (sweep_stale_cgroups)
                time.sleep(0.01)


def sweep_stale_cgroups(rule: MemoryRule) -> None:
    """Remove empty run cgroups that dead workers left (a populated one refuses rmdir)."""
    if rule.cgroup_parent is None:
        return
    with contextlib.suppress(OSError):
        for entry in rule.cgroup_parent.iterdir():
            if entry.name.startswith(CGROUP_PREFIX):
                with contextlib.suppress(OSError):
                    entry.rmdir()


def _children(pid: int) -> list[int]:
    """Child pids of `pid` from /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            found += [int(x) for x in text.split()]
    return found


def _rss_pages(pid: int) -> int:
    text = _read(f"/proc/{pid}/statm")
    try:
        return int(text.split()[1]) if text else 0
    except (IndexError, ValueError):
        return 0


def _tree_by_scan(root: int) -> list[int]:
    """Every pid below `root`, from a scan of all of /proc (slower: no children files)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


HAVE_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and every process below it."""
    if HAVE_CHILDREN_FILES:
        pids, todo, seen = [], [root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            pids.append(pid)
            todo += _children(pid)
    else:
        pids = [root, *_tree_by_scan(root)]
    return sum(_rss_pages(pid) for pid in pids) * PAGE_SIZE


class RunMemory:
    """The whole-run memory limit of one cold run or one warm server.

    `command()` wraps the bwrap command line, `attach()` names bwrap's pid, `poll()` is
    called every MEMORY_POLL_SECONDS while a run goes on (True: kill the run now), and
    `exceeded()` says afterwards whether the run went over (since `mark()` for warm runs).
    """

    def __init__(self, run_bytes: int, cgroup: RunCgroup | None) -> None:
        self.run_bytes = run_bytes
        self.cgroup = cgroup
        self.root_pid: int | None = None
        self.peak = 0
        self._tripped = False
        self._oom_mark = 0

    @property
    def kind(self) -> str:
        return "cgroup" if self.cgroup is not None else "watchdog"

    def command(self, shell: str, argv: Sequence[str]) -> list[str]:
        return self.cgroup.wrap(shell, argv) if self.cgroup is not None else list(argv)

    def attach(self, pid: int) -> None:
        self.root_pid = pid

    def mark(self) -> None:
        """A warm run starts: forget earlier runs' verdicts."""
        self._tripped = False
        self.peak = 0
        if self.cgroup is not None:
            self._oom_mark = self.cgroup.oom_kills()

    def poll(self) -> bool:
        if self.cgroup is not None or self.root_pid is None:
            return False  # the kernel enforces the cgroup's limit itself
        used = tree_rss(self.root_pid)
        self.peak = max(self.peak, used)
        if used > self.run_bytes:
            self._tripped = True
        return self._tripped

    def exceeded(self) -> bool:
        if self.cgroup is not None:
            return self.cgroup.oom_kills() > self._oom_mark
        return self._tripped

    def note(self) -> str:
        """The line the run's output gets when it went over."""
        if self.cgroup is not None:
            return "[sandbox: the run went over its memory limit; the kernel killed a process]"
        return (
            f"[sandbox: the run's processes used {_size(self.peak)} of memory, more than its "
            f"limit of {_size(self.run_bytes)}: killed]"
        )

    def close(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
