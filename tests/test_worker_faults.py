"""The Procfile's worker under faults: killed outright (the whole process tree), and Redis
gone for two minutes. Real worker processes, a real Redis of the test's own, the fake
GitHub and Groq on loopback, the real sandbox; the clock is never moved."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from rq import Queue, Retry, Worker
from rq.job import Job

from bot.config import load_settings
from bot.github.webhooks import sign
from bot.journal import load_run
from bot.redis_server import connect
from bot.web import create_app
from jobs.worker import PatientRetry, ride_out_outages
from jobs.worker import Worker as BotWorker
from tests.fakes import groq as g
from tests.fakes.github import FakeGitHub, generate_pem
from tests.support import GOOD, HALF, ISSUE_BODY, RedisServer, free_port, kill_tree

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "faults-webhook-secret"
REPO = "octo/demo"
QUEUE = "tdd-agent"
# The issue's tests with one that takes 1.5 s: a sandbox step long enough to die in.
SLOW_ISSUE_BODY = ISSUE_BODY.replace(
    "def test_add():\n", "def test_add():\n    import time\n\n    time.sleep(1.5)\n"
)
RECOVERY_TARGET = 60.0
OUTAGE_SECONDS = 120.0


def procfile_worker() -> list[str]:
    """The Procfile's `worker:` command as written, run with this interpreter."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("worker:"):
            words = line.split(":", 1)[1].split()
            return [sys.executable, "-m", "rq.cli", *words[words.index("rq") + 1 :]]
    raise AssertionError("Procfile has no worker: line")


def write(content: str) -> g.Reply:
    return g.tool_call("write_file", {"path": "calc.py", "content": content})


def labeled_payload(issue_number: int) -> dict[str, Any]:
    data = json.loads((FIXTURES / "issues__labeled.payload.json").read_text())
    data["label"]["name"] = "agent:tdd"
    data["issue"]["number"] = issue_number
    data["repository"]["name"] = "demo"
    data["repository"]["full_name"] = REPO
    data["repository"]["owner"]["login"] = "octo"
    data["sender"]["login"] = "alice"
    data["installation"] = {"id": 1}
    return data


def wait(predicate: Callable[[], Any], what: str, timeout: float, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


@dataclass
class Stack:
    server: RedisServer
    redis: redis.Redis
    github: FakeGitHub
    groq: g.FakeGroq
    web_url: str
    env: dict[str, str]
    logs: Path

    def deliver_issue(self, number: int) -> str:
        body = json.dumps(labeled_payload(number)).encode()
        headers = {
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, SECRET),
            "Content-Type": "application/json",
        }
        response = httpx.post(
            f"{self.web_url}/api/github/webhooks", content=body, headers=headers, timeout=10
        )
        assert response.status_code == 202, response.text
        return str(response.json()["queued"])

    def worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        """The Procfile's worker in its own session, its output in `logs/<name>.log`."""
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                [*procfile_worker(), *extra],
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def step_started(self, job_id: str, seq: int) -> bool:
        loaded = load_run(self.redis, job_id)
        return bool(loaded and any(s.seq == seq and s.status == "started" for s in loaded[1]))

    def attempts(self, job_id: str) -> list[tuple[str, int]]:
        _, steps = load_run(self.redis, job_id) or ({}, [])
        return [(s.kind, s.attempt) for s in steps]


@pytest.fixture
def stack(own_redis: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    github = FakeGitHub().start()
    groq = g.FakeGroq().start()
    github.add_repo(REPO, files={"README.md": "# demo\n", "billing.py": "RATE = 3\n"})
    github.add_issue(REPO, number=3, title="Slow calculator", body=SLOW_ISSUE_BODY, user="alice")
    github.set_permission(REPO, "alice", "write")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "REDIS_URL": own_redis.url,
        "APP_ID": str(github.app_id),
        "PRIVATE_KEY": generate_pem(),
        "WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": github.url,
        "GROQ_API_KEY": "gsk_faults",
        "GROQ_BASE_URL": groq.url,
        "MAX_ITERATIONS": "4",
        "SANDBOX": "local",
    }
    settings = load_settings({"WEBHOOK_SECRET": SECRET, "REDIS_URL": own_redis.url})
    app = create_app(settings, redis_client=connect(own_redis.url))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    client = connect(own_redis.url)
    try:
        yield Stack(own_redis, client, github, groq, f"http://127.0.0.1:{port}", env, logs)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        github.stop()
        groq.stop()
        client.close()


def finished(stack: Stack, job_id: str) -> bool:
    return Job.fetch(job_id, connection=stack.redis).get_status() == "finished"


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        kill_tree(proc.pid)
        proc.wait()


def test_the_worker_bounds_its_waits_whatever_the_command_line_says(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=client)
    # RQ's own defaults, which the CLI passes when no flag is given.
    worker = BotWorker([queue], connection=client, maintenance_interval=600)
    try:
        assert (worker.maintenance_interval, worker.job_monitoring_interval) == (10, 5)
        assert worker.dequeue_timeout == 5, "RQ's is worker_ttl - 15 = 405 s"
        job = Job.create(nap, args=("naps", 0.0), connection=client, timeout=3600)
        assert worker.get_heartbeat_ttl(job) == 20, "RQ's is the interval + 60 s"
        assert isinstance(client.get_retry(), PatientRetry)
    finally:
        client.close()


@pytest.mark.slow
def test_a_client_waits_a_redis_outage_out_and_says_so_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = own_redis.client()
    ride_out_outages(client, logging.getLogger("tests.outage"))
    client.set("kept", "yes")
    own_redis._kill()
    got: list[bytes | None] = []
    waiting = threading.Thread(target=lambda: got.append(client.get("kept")))
    with caplog.at_level(logging.WARNING, logger="tests.outage"):
        waiting.start()
        time.sleep(2)
        assert waiting.is_alive() and not got, "the command waits for Redis"
        own_redis.start()
        waiting.join(timeout=15)
    assert got == [b"yes"]
    said = [r.getMessage() for r in caplog.records if r.name == "tests.outage"]
    assert len(said) == 2, said
    assert "is unreachable" in said[0] and "is back after" in said[1]
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_worker_s_run_resumes_within_a_minute_of_a_new_worker(stack: Stack) -> None:
    stack.groq.script(write(HALF), write(GOOD))
    job_id = stack.deliver_issue(3)

    with running(stack.worker("first")) as first:
        # The first model reply came back and the sandbox is running the tests on it.
        wait(lambda: stack.step_started(job_id, 3), "step 3 (on HALF)", 60, stack.log("first"))
        kill_tree(first.pid)  # the worker and its work-horse die mid-step
    assert len(stack.groq.requests) == 1
    assert Job.fetch(job_id, connection=stack.redis).get_status() == "started"

    started = time.monotonic()
    with running(stack.worker("second")):
        wait(lambda: stack.github.pulls(REPO), "the pull request", 90, stack.log("second"))
        elapsed = time.monotonic() - started
        wait(lambda: finished(stack, job_id), "the job to finish", 30, stack.log("second"))
    assert elapsed < RECOVERY_TARGET, f"PR {elapsed:.1f}s after the new worker started"

    # Only the step in flight ran again; the first model turn was not asked twice.
    assert stack.attempts(job_id) == [
        ("sandbox", 1),
        ("model", 1),
        ("sandbox", 2),
        ("model", 1),
        ("sandbox", 1),
        ("verify", 1),
    ]
    assert len(stack.groq.requests) == 2
    # RQ's cleanup took the job back under its Retry (not failed for good): one retry spent.
    assert Job.fetch(job_id, connection=stack.redis).retries_left == 2
    assert f"job {job_id} lost its worker" in stack.log("second").read_text()
    assert "now queued, 2 retries left" in stack.log("second").read_text()
    (pr,) = stack.github.pulls(REPO)
    assert "Closes #3" in pr["body"]
    assert stack.github.files_at(REPO, "agent-tdd/issue-3")["calc.py"] == GOOD


def nap(counter: str, seconds: float) -> str:
    """A job for the worker: counts its runs in Redis, then sleeps like a long run."""
    connect(os.environ["REDIS_URL"]).incr(counter)
    time.sleep(seconds)
    return "rested"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_long_healthy_job_is_never_taken_for_dead(stack: Stack) -> None:
    # Heartbeats every second that lapse after 4 s; the job runs 9 s while another worker
    # looks for abandoned jobs every time it wakes up.
    fast = ("--job-monitoring-interval", "1", "--maintenance-interval", "1")
    with running(stack.worker("a", *fast)), running(stack.worker("b", *fast)):
        wait(lambda: len(Worker.all(connection=stack.redis)) == 2, "two workers", 30)
        queue = Queue(QUEUE, connection=stack.redis)
        job = queue.enqueue(nap, "naps", 9.0, retry=Retry(max=3), job_timeout=60)
        wait(lambda: job.get_status(refresh=True) == "finished", "the job", 60, stack.log("a"))

    assert stack.redis.get("naps") == b"1", "the job ran once"
    job.refresh()
    assert job.retries_left == 3
    assert job.started_at and job.ended_at
    assert (job.ended_at - job.started_at).total_seconds() > 2 * 4
    for name in ("a", "b"):
        assert "lost its worker" not in stack.log(name).read_text()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_worker_rides_out_a_two_minute_redis_outage(stack: Stack) -> None:
    stack.groq.script(write(HALF), write(GOOD))
    job_id = stack.deliver_issue(3)

    with running(stack.worker("only")) as worker:
        wait(lambda: stack.step_started(job_id, 3), "step 3 (on HALF)", 60, stack.log("only"))
        stack.server._kill()  # SIGKILL, mid-step; AOF with fsync always keeps every write
        down_until = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < down_until:
            assert worker.poll() is None, stack.log("only").read_text()[-3000:]
            time.sleep(1)
        stack.server.start()  # the same port and append-only file

        wait(lambda: stack.github.pulls(REPO), "the pull request", 120, stack.log("only"))
        wait(lambda: finished(stack, job_id), "the job to finish", 30, stack.log("only"))
        assert worker.poll() is None
        (registered,) = Worker.all(connection=stack.redis)
        assert registered.pid == worker.pid, "the same worker process carried on"

    log = stack.log("only").read_text()
    assert "unhandled exception" not in log
    # Said once by the worker process: when Redis went away, and when it came back.
    said = f"PID {worker.pid}: Redis at 127.0.0.1:{stack.server.port} is"
    assert log.count(f"{said} unreachable") == 1 and log.count(f"{said} back after") == 1
    (pr,) = stack.github.pulls(REPO)
    assert "Closes #3" in pr["body"]
    assert stack.github.files_at(REPO, "agent-tdd/issue-3")["calc.py"] == GOOD
    # The work-horse's journal writes waited the outage out: the step in flight finished
    # and was recorded once Redis was back, so no step ran twice and no retry was spent.
    assert len(stack.groq.requests) == 2
    assert stack.attempts(job_id) == [
        ("sandbox", 1),
        ("model", 1),
        ("sandbox", 1),
        ("model", 1),
        ("sandbox", 1),
        ("verify", 1),
    ]
    assert Job.fetch(job_id, connection=stack.redis).retries_left == 3
