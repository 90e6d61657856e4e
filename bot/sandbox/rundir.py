"""Run directories on the host: private, owned by the run's uid, swept when left behind."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import socket
import stat
import tempfile
from pathlib import Path, PurePosixPath

from bot.errors import SandboxError, SandboxUnavailable
from bot.paths import relative_path
from bot.sandbox.base import Workspace

# Per-run uids when running as root: far above regular and subordinate (subuid) ranges.
UID_BASE = 1_900_000_000
UID_SLOTS = 10_000


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


def safe_relpath(name: str) -> PurePosixPath:
    """A workspace path, refused (ValueError) if it could land outside the workdir."""
    return PurePosixPath(relative_path(name))


def write_workspace(root: Path, workspace: Workspace, owner: int | None = None) -> None:
    """Write the files under `root` (owned by `owner` if given), readable by everyone: the
    sandbox's uid copies them from there whatever the host's umask."""
    for name, text in workspace.items():
        rel = safe_relpath(name)
        try:
            path = root
            for part in rel.parts[:-1]:
                path = path / part
                if not path.is_dir():
                    path.mkdir(mode=0o755)
                    path.chmod(0o755)
                    if owner is not None:
                        os.chown(path, owner, owner)
            target = root / rel
            target.write_text(text, encoding="utf-8")
            target.chmod(0o644)
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
