"""Labeled issue to pull request: wall time vs the model and pytest time inside it.

Wired as tests/test_e2e_github.py wires it: the real web app under uvicorn, an RQ worker
process, the fake GitHub and the fake Groq on loopback, the real local sandbox. The model
is scripted (a half-right file, then the right one: two model turns). A run's pytest steps
are the red run at the base commit (in the loop's warm sandbox, whose server it starts),
one run per model turn, and the verification run in a fresh cold sandbox with canaries.

The clock starts when the signed `issues.labeled` delivery is posted and stops when the
pull request exists in the fake GitHub. The baseline is the sum of the run journal's step
durations of that same run: `model`, `sandbox` (the loop's pytest runs, the red run
included) and `verify` (the verification run: pytest time too, in a fresh sandbox).
Everything above it is the bot's own overhead (webhook, queue, GitHub calls, journal,
worker). Verification must not double a run either: issue -> PR is also compared with
the same time minus the verification step.

Worker modes, one after the other, each warmed up by one untimed issue first:
- `fork`: the Procfile's worker line as written (`rq worker -c jobs.worker_config ...`), which
  forks a work horse per job from a parent that has the job code imported;
- `simple`: the same with `-w rq.worker.SimpleWorker` (jobs run in the worker process).

    uv run python -m bench.e2e [--repeat 3] [--modes fork,simple] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn
from rq import Worker
from rq.job import Job

from bench.common import (
    ROOT,
    Report,
    Target,
    median,
    parser,
    ratio,
    run_main,
    stop_process,
    wait_for,
)
from bot.config import load_settings
from bot.github.webhooks import sign
from bot.journal import load_run
from bot.redis_server import connect
from bot.web import create_app
from tests.fakes import groq as g
from tests.fakes.github import FakeGitHub, generate_pem
from tests.support import GOOD, HALF, ISSUE_BODY, RedisServer, free_port

TARGET = 1.5
# The issue's words: verification must not double a run's time.
VERIFY_TARGET = 2.0
# Journal step kinds whose durations make the baseline: the model, and pytest (the loop's
# runs, the red run at the base commit included, and the verification run).
BASELINE_KINDS = frozenset({"model", "sandbox", "verify"})
SECRET = "bench-e2e-secret"
REPO = "octo/demo"
FIXTURE = ROOT / "tests" / "fixtures" / "webhooks" / "issues__labeled.payload.json"
PROCFILE_WORKER = ROOT / "Procfile"
WORKER_CLASS = {"fork": None, "simple": "rq.worker.SimpleWorker"}
POLL = 0.01


def _write(content: str) -> g.Reply:
    return g.tool_call("write_file", {"path": "calc.py", "content": content})


def labeled_payload(issue_number: int) -> dict[str, Any]:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    data["label"]["name"] = "agent:tdd"
    data["issue"]["number"] = issue_number
    data["issue"]["state"] = "open"
    data["repository"]["name"] = "demo"
    data["repository"]["full_name"] = REPO
    data["repository"]["owner"]["login"] = "octo"
    data["sender"]["login"] = "alice"
    data["installation"] = {"id": 1}
    return data


@contextmanager
def web_app(redis_url: str) -> Iterator[str]:
    """The real app under uvicorn in a thread (as the e2e test runs it); yields its URL."""
    settings = load_settings({"WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url})
    app = create_app(settings, redis_client=connect(redis_url))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=10, what="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def procfile_worker_args() -> list[str]:
    """The arguments of the Procfile's `worker:` line after `rq`, so the bench runs it as is."""
    for line in PROCFILE_WORKER.read_text().splitlines():
        if line.startswith("worker:"):
            words = line.split(":", 1)[1].split()
            return words[words.index("rq") + 1 :]
    raise RuntimeError("Procfile has no worker: line")


@contextmanager
def worker(mode: str, env: dict[str, str], client: redis.Redis, log: Path) -> Iterator[None]:
    """A long-running RQ worker process on the bot's queue, as the Procfile starts it."""
    argv = [sys.executable, "-m", "rq.cli", *procfile_worker_args()]
    if WORKER_CLASS[mode]:
        argv += ["-w", WORKER_CLASS[mode]]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:

        def registered() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text(errors='replace')[-2000:]}")
            return len(Worker.all(connection=client)) > 0

        wait_for(registered, timeout=30, what=f"{mode} worker")
        yield
    finally:
        stop_process(proc, grace=10)
        wait_for(lambda: not Worker.all(connection=client), timeout=10, what="worker exit")


class Stack:
    """What one issue-to-PR measurement talks to: the fakes, the web app and Redis."""

    def __init__(
        self, github: FakeGitHub, groq: g.FakeGroq, web_url: str, client: redis.Redis
    ) -> None:
        self.github = github
        self.groq = groq
        self.web_url = web_url
        self.client = client

    def issue_to_pr(self, log: Path) -> dict[str, float]:
        """One labeled issue through to its PR; timings in seconds."""
        number = self.github.add_issue(
            REPO, title="Add calculator helpers", body=ISSUE_BODY, user="alice"
        )
        self.groq.script(_write(HALF), _write(GOOD))
        body = json.dumps(labeled_payload(number)).encode()
        headers = {
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, SECRET),
            "Content-Type": "application/json",
        }
        branch = f"agent-tdd/issue-{number}"
        calls_before = len(self.github.calls)
        wall_started = time.time()  # the journal's clock, to place its steps on ours
        started = time.perf_counter()
        response = httpx.post(f"{self.web_url}/api/github/webhooks", content=body, headers=headers)
        answered = time.perf_counter()
        if response.status_code != 202:
            raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
        job_id = response.json()["queued"]
        pr_at = done_at = None
        deadline = started + 120
        while done_at is None:
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"issue {number}: no PR after 120 s; worker log: {_tail(log)}")
            if pr_at is None and any(p["head"]["ref"] == branch for p in self.github.pulls(REPO)):
                pr_at = now
            status = Job.fetch(job_id, connection=self.client).get_status()
            if status in ("failed", "stopped", "canceled"):
                raise RuntimeError(f"job {job_id} {status}; worker log: {_tail(log)}")
            if status == "finished":
                done_at = time.perf_counter()
            else:
                time.sleep(POLL)
        if pr_at is None:
            if not any(p["head"]["ref"] == branch for p in self.github.pulls(REPO)):
                raise RuntimeError(f"job {job_id} finished without a PR: {_tail(log)}")
            pr_at = done_at
        clock = (wall_started, started)
        return self._timings(job_id, calls_before, clock, answered, pr_at, done_at)

    def _timings(
        self,
        job_id: str,
        calls_before: int,
        clock: tuple[float, float],
        answered: float,
        pr_at: float,
        done_at: float,
    ) -> dict[str, float]:
        loaded = load_run(self.client, job_id)
        if loaded is None:
            raise RuntimeError(f"no journal for run {job_id}")
        meta, steps = loaded
        if meta.get("status") != "passed":
            raise RuntimeError(f"run {job_id} ended {meta.get('status')}: {meta.get('reason')}")
        model = sum(s.duration for s in steps if s.kind == "model")
        pytest_runs = [s.duration for s in steps if s.kind == "sandbox"]
        sandbox = sum(pytest_runs)
        verify_runs = [s.duration for s in steps if s.kind == "verify"]
        verify = sum(verify_runs)
        # Any other kind of step is neither model nor pytest time: overhead, but shown.
        other = [s for s in steps if s.kind not in BASELINE_KINDS]
        job = Job.fetch(job_id, connection=self.client)
        queue_wait = (
            (job.started_at - job.enqueued_at).total_seconds()
            if job.started_at and job.enqueued_at
            else float("nan")
        )
        # Journal steps carry the worker's wall clock: place them on the bench's timeline.
        wall_started, started = clock
        last = steps[-1]
        job_setup = steps[0].started_at - _epoch(job.started_at) if job.started_at else float("nan")
        after_steps = (pr_at - started) - (last.started_at + last.duration - wall_started)
        return {
            "model": model,
            "sandbox": sandbox,
            "verify": verify,
            "pytest": sandbox + verify,
            "steps": model + sandbox + verify,
            "other": sum(s.duration for s in other),
            "model_steps": sum(1 for s in steps if s.kind == "model"),
            "sandbox_steps": len(pytest_runs),
            "verify_steps": len(verify_runs),
            "other_steps": len(other),
            # The red run at the base commit: it starts the loop's warm runner (and a new
            # process probes the sandbox on its first run: that would show here too).
            "first_pytest": pytest_runs[0],
            "later_pytest": sum(pytest_runs[1:]) / max(len(pytest_runs) - 1, 1),
            "github_calls": len(self.github.calls) - calls_before,
            "webhook": answered - started,
            "queue_wait": queue_wait,
            "job_setup": job_setup,
            "after_steps": after_steps,
            "to_pr": pr_at - started,
            "to_done": done_at - started,
        }


def _epoch(moment: datetime) -> float:
    """RQ's timestamps are UTC; a naive one is read as UTC, not as local time."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def measure(args: argparse.Namespace) -> Report:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in WORKER_CLASS]
    if unknown or not modes:
        raise ValueError(f"--modes takes a list of {sorted(WORKER_CLASS)}, got {args.modes!r}")
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with (
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
        RedisServer() as redis_server,
        FakeGitHub() as github,
        g.FakeGroq() as groq,
    ):
        github.add_repo(REPO, files={"README.md": "# demo\n", "billing.py": "RATE = 3\n"})
        github.set_permission(REPO, "alice", "write")
        env = {
            "PATH": os.environ["PATH"],
            "HOME": tmp,
            "REDIS_URL": redis_server.url,
            "APP_ID": str(github.app_id),
            "PRIVATE_KEY": generate_pem(),
            "WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": github.url,
            "GROQ_API_KEY": "gsk_bench",
            "GROQ_BASE_URL": groq.url,
            "SANDBOX": "local",
            "MAX_ITERATIONS": "4",
        }
        client = redis_server.client()
        log = Path(tmp) / "worker.log"
        try:
            with web_app(redis_server.url) as web_url:
                stack = Stack(github, groq, web_url, client)
                for mode in modes:
                    with worker(mode, env, client, log):
                        stack.issue_to_pr(log)  # warm-up: first imports, probe, token
                        for _ in range(args.repeat):
                            samples[mode].append(stack.issue_to_pr(log))
        finally:
            client.close()
    return _report(args, modes, samples)


def _report(
    args: argparse.Namespace, modes: list[str], samples: dict[str, list[dict[str, float]]]
) -> Report:
    report = Report(
        benchmark="e2e",
        baseline="model + pytest time of the same run (sum of its journal step durations)",
        repeat=args.repeat,
        columns=["worker", "what", "median_ms", "ratio_vs_steps"],
    )
    labels = {"fork": "fork (Procfile)", "simple": "SimpleWorker"}
    for mode in modes:
        runs = samples[mode]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return median([r[key] for r in runs])

        # Ratios per run, then the median: each run is compared with its own steps.
        to_pr = median([ratio(r["to_pr"], r["steps"]) for r in runs])
        to_done = median([ratio(r["to_done"], r["steps"]) for r in runs])
        # What verification adds: issue -> PR against the same run without its verify step.
        doubling = median([ratio(r["to_pr"], r["to_pr"] - r["verify"]) for r in runs])
        # The ratio as it would read if verification were counted as overhead instead.
        verify_as_overhead = median([ratio(r["to_pr"], r["steps"] - r["verify"]) for r in runs])
        rows = [
            ("model steps (journal)", med("model"), None),
            ("pytest steps (journal, verification included)", med("pytest"), None),
            ("  red run at the base commit (starts warm runner)", med("first_pytest"), None),
            ("  each later pytest step of the loop", med("later_pytest"), None),
            ("  verification (fresh cold sandbox, canaries)", med("verify"), None),
            ("model + pytest (baseline)", med("steps"), 1.0),
            ("webhook POST -> 202", med("webhook"), None),
            ("enqueued -> job started", med("queue_wait"), None),
            ("job started -> first step", med("job_setup"), None),
            ("last step -> PR", med("after_steps"), None),
            ("labeled issue -> PR", med("to_pr"), to_pr),
            ("labeled issue -> job done", med("to_done"), to_done),
            ("overhead (issue -> PR minus steps)", med("to_pr") - med("steps"), None),
        ]
        if any(r["other_steps"] for r in runs):
            rows.insert(5, ("other journal steps (counted as overhead)", med("other"), None))
        for what, seconds, rel in rows:
            row: dict[str, Any] = {
                "worker": labels[mode],
                "mode": mode,
                "what": what,
                "median_ms": seconds * 1000,
            }
            if rel is not None:
                row["ratio_vs_steps"] = rel
            report.rows.append(row)
        report.targets.append(
            Target(f"issue->PR / (model+pytest), {labels[mode]}", to_pr, "<=", TARGET)
        )
        report.targets.append(
            Target(
                f"issue->PR / (issue->PR minus verification), {labels[mode]}",
                doubling,
                "<=",
                VERIFY_TARGET,
            )
        )
        report.extra.setdefault("verification_as_overhead", {})[mode] = verify_as_overhead
        steps = runs[0]
        other = f" + {steps['other_steps']:.0f} other" if steps["other_steps"] else ""
        report.notes.append(
            f"{labels[mode]}: {steps['model_steps']:.0f} model + {steps['sandbox_steps']:.0f} "
            f"pytest + {steps['verify_steps']:.0f} verify steps{other}, "
            f"{med('github_calls'):.0f} GitHub API calls per run; counting verification as "
            f"overhead instead of pytest time, issue->PR would be {verify_as_overhead:.2f}x"
        )
    report.notes.append(
        "scripted fake Groq (answers at once), fake GitHub on loopback, the local sandbox "
        "with its default warm runner; the web app, both fakes and the bench share one "
        "process, the worker has its own"
    )
    report.extra["samples"] = samples
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("e2e", __doc__.splitlines()[0], repeat=3)
    p.add_argument("--modes", default="fork,simple", help="worker modes: fork, simple")
    return run_main(measure, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
