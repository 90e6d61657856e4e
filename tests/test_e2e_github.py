"""End to end, Probot-style: the real web app (uvicorn) and a real RQ worker process, the
fake GitHub and fake Groq on loopback, a real sandbox running pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from bot.config import load_settings
from bot.github.webhooks import Repo, sign
from bot.journal import load_run
from bot.report import parse_pr_marker
from bot.web import create_app
from bot.wiring import DailySpend, IssueLocks
from tests.fakes import groq as g
from tests.fakes.github import FakeGitHub, generate_pem
from tests.support import GOOD, HALF, ISSUE_BODY, free_port, kill_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "e2e-webhook-secret"
REPO = "octo/demo"


def write(content: str) -> g.Reply:
    return g.tool_call("write_file", {"path": "calc.py", "content": content})


@dataclass
class Stack:
    github: FakeGitHub
    groq: g.FakeGroq
    web_url: str
    env: dict[str, str]
    redis: redis.Redis

    def deliver(
        self, event: str, payload: dict[str, Any], delivery: str | None = None
    ) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, SECRET),
            "Content-Type": "application/json",
        }
        return httpx.post(f"{self.web_url}/api/github/webhooks", content=body, headers=headers)

    def work(self) -> subprocess.CompletedProcess[str]:
        """Run an RQ worker process until the queue is empty."""
        proc = subprocess.run(
            # The Procfile's worker, in burst mode.
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker",
                "-w",
                "jobs.worker.Worker",
                "-c",
                "jobs.worker_config",
                "--burst",
            ],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc


def labeled_payload(issue_number: int) -> dict[str, Any]:
    data = json.loads((FIXTURES / "issues__labeled.payload.json").read_text())
    data["label"]["name"] = "agent:tdd"
    data["issue"]["number"] = issue_number
    data["repository"]["name"] = "demo"
    data["repository"]["full_name"] = REPO
    data["repository"]["owner"]["login"] = "octo"
    data["sender"]["login"] = "alice"
    data["installation"] = {"id": 1, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
    return data


def comment_payload(stack: Stack, pr_number: int, body: str, user: str) -> dict[str, Any]:
    """The webhook GitHub sends for a new comment, seeded in the fake as it would exist."""
    data = json.loads((FIXTURES / "issue_comment__created.payload.json").read_text())
    data["issue"]["number"] = pr_number
    data["issue"]["pull_request"] = {
        "url": f"https://api.github.com/repos/{REPO}/pulls/{pr_number}",
        "html_url": f"https://github.com/{REPO}/pull/{pr_number}",
    }
    data["comment"]["body"] = body
    data["comment"]["id"] = stack.github.add_comment(REPO, pr_number, body=body, user=user)
    data["comment"]["user"]["login"] = user
    data["comment"]["user"]["type"] = "User"
    data["repository"]["name"] = "demo"
    data["repository"]["full_name"] = REPO
    data["repository"]["owner"]["login"] = "octo"
    data["installation"] = {"id": 1}
    return data


@pytest.fixture
def stack(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Stack]:
    github = FakeGitHub().start()
    groq = g.FakeGroq().start()
    github.add_repo(REPO, files={"README.md": "# demo\n", "billing.py": "RATE = 3\n"})
    github.add_issue(REPO, number=1, title="Add calculator helpers", body=ISSUE_BODY, user="alice")
    github.set_permission(REPO, "alice", "write")
    github.set_permission(REPO, "bob", "read")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "APP_ID": str(github.app_id),
        "PRIVATE_KEY": generate_pem(),
        "WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": github.url,
        "GROQ_API_KEY": "gsk_e2e",
        "GROQ_BASE_URL": groq.url,
        "MAX_ITERATIONS": "4",
        "LEASE_SECONDS": "2",
    }
    settings = load_settings({"WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url})
    app = create_app(settings, redis_client=redis.Redis.from_url(redis_url))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Stack(github, groq, f"http://127.0.0.1:{port}", env, redis_client)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        github.stop()
        groq.stop()


def repo_writes(stack: Stack) -> list[tuple[str, str]]:
    return [
        (c.method, c.path.replace(f"/repos/{REPO}", ""))
        for c in stack.github.calls
        if c.method != "GET" and c.path.startswith(f"/repos/{REPO}")
    ]


def test_labeled_issue_becomes_a_pull_request_with_every_iteration(stack: Stack) -> None:
    stack.groq.script(write(HALF), write(GOOD))
    assert stack.deliver("issues", labeled_payload(1)).status_code == 202
    stack.work()

    gh = stack.github
    writes = repo_writes(stack)
    kinds = [path.split("/")[1] for _, path in writes]
    # The order a maintainer sees: 👀, a progress comment kept up to date, one commit
    # (tree → commit → ref), the PR, the check run, the final progress edit.
    assert writes[0] == ("POST", "/issues/1/reactions")
    assert writes[1] == ("POST", "/issues/1/comments")
    git = [w for w in writes if w[1].startswith("/git/")]
    assert [m for m, _ in git] == ["POST", "POST", "POST"]
    assert [p.split("/")[2] for _, p in git] == ["trees", "commits", "refs"]
    assert (
        writes.index(git[-1])
        < writes.index(("POST", "/pulls"))
        < writes.index(("POST", "/check-runs"))
    )
    assert writes[-1][0] == "PATCH" and writes[-1][1].startswith("/issues/comments/")
    assert kinds.count("pulls") == 1

    branch = "agent-tdd/issue-1"
    files = gh.files_at(REPO, branch)
    assert files["calc.py"] == GOOD
    assert files["billing.py"] == "RATE = 3\n", "the commit builds on the default branch"
    # The issue's tests are committed with the code, where the repository keeps tests.
    assert "def test_" in files["tests/test_calc.py"]
    head = gh.ref_sha(REPO, branch)
    base = gh.ref_sha(REPO, "main")
    assert gh.commit(REPO, head)["parents"][0]["sha"] == base, "exactly one commit on top"

    (pr,) = gh.pulls(REPO)
    assert pr["head"]["ref"] == branch and pr["base"]["ref"] == "main"
    assert pr["draft"] is False and pr["title"] == "Add calculator helpers"
    body = pr["body"]
    assert "Closes #1" in body
    assert body.count("<details>") == 2
    assert "1 passed, 1 failed" in body and "2 passed, 0 failed" in body

    (check,) = gh.check_runs(REPO)
    assert check["name"] == "tdd-agent / tests"
    assert check["head_sha"] == head and check["conclusion"] == "success"

    comments = gh.comments(REPO, 1)
    progress = [c for c in comments if "tdd-agent:progress" in c["body"]]
    assert len(progress) == 1, "one progress comment, edited in place"
    assert "✅ Tests pass" in progress[0]["body"] and f"#{pr['number']}" in progress[0]["body"]
    assert [r["content"] for r in gh.reactions(REPO)] == ["eyes"]
    tokens = set(gh.issued_tokens())
    assert tokens and not any(t in str(stack.groq.requests) for t in tokens), "no token in prompts"


def test_retry_by_a_writer_updates_the_same_pull_request(stack: Stack) -> None:
    stack.groq.script(write(HALF), write(HALF + "\n"), write(HALF + "\n\n"), write(HALF + "# x\n"))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (draft,) = stack.github.pulls(REPO)
    assert draft["draft"] is True and "Closes #1" not in draft["body"]
    progress = next(c for c in stack.github.comments(REPO, 1) if "tdd-agent:progress" in c["body"])
    assert "Budget exhausted" in progress["body"] and "Last test output" in progress["body"]

    stack.groq.script(write(GOOD))
    response = stack.deliver(
        "issue_comment",
        comment_payload(stack, draft["number"], "/retry sub must subtract", "alice"),
    )
    assert response.status_code == 202
    stack.work()

    (pr,) = stack.github.pulls(REPO)
    assert pr["number"] == draft["number"]
    assert stack.github.files_at(REPO, "agent-tdd/issue-1")["calc.py"] == GOOD
    assert "Closes #1" in pr["body"]
    last_request = stack.groq.requests[-1]
    assert "sub must subtract" in last_request.messages[1]["content"], "guidance joins the task"
    pr_comments = [c["body"] for c in stack.github.comments(REPO, draft["number"])]
    assert any("Retrying" in b and "sub must subtract" in b for b in pr_comments)
    assert any("✅ Tests pass" in b for b in pr_comments)


def test_retry_by_a_reader_is_refused(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (pr,) = stack.github.pulls(REPO)
    requests_before = len(stack.groq.requests)

    for _ in range(3):
        stack.deliver("issue_comment", comment_payload(stack, pr["number"], "/retry", "bob"))
    stack.work()
    assert len(stack.groq.requests) == requests_before, "nothing ran"
    replies = [c["body"] for c in stack.github.comments(REPO, pr["number"])]
    # One polite reply per outsider per hour; the other attempts get a 👎 on the comment.
    assert sum("Only people with write access" in b for b in replies) == 1
    downs = [r for r in stack.github.reactions(REPO) if r.get("content") == "-1"]
    assert len(downs) == 2


def test_duplicate_delivery_and_a_502_on_pr_creation_leave_one_pull_request(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    # GitHub creates the PR but the client sees a 502: the bot must find it, not repeat the POST.
    stack.github.inject("POST", "/repos/{owner}/{repo}/pulls", status=502, after_apply=True)
    first = stack.deliver("issues", labeled_payload(1), delivery="dup-1")
    again = stack.deliver("issues", labeled_payload(1), delivery="dup-1")
    assert (first.status_code, again.status_code) == (202, 200)
    stack.work()

    assert len(stack.github.pulls(REPO)) == 1
    posts = stack.github.calls_to("POST", "/repos/{owner}/{repo}/pulls")
    assert len(posts) == 1, "a POST that may have succeeded is never retried"
    assert len(stack.groq.requests) == 1


def test_an_issue_without_tests_gets_an_explanation(stack: Stack) -> None:
    stack.github.add_issue(REPO, number=2, title="Make it faster", body="It is slow.", user="alice")
    stack.deliver("issues", labeled_payload(2))
    stack.work()
    (comment,) = stack.github.comments(REPO, 2)
    assert "```python" in comment["body"] and "agent:tdd" in comment["body"]
    assert "def test_" in comment["body"], "the reply shows an example test"
    assert stack.groq.requests == [] and stack.github.pulls(REPO) == []


def test_a_second_trigger_while_a_run_is_active_gets_a_comment(stack: Stack) -> None:
    # Another run holds the issue (its worker is busy elsewhere): this trigger must not start.
    locks = IssueLocks(stack.redis, lease_seconds=60)
    other = locks.lease(Repo("octo", "demo", None), 1, "issue-octo-demo-1-other")
    assert other.try_acquire() is None
    try:
        stack.deliver("issues", labeled_payload(1))
        stack.work()
    finally:
        other.release()
    (comment,) = stack.github.comments(REPO, 1)
    assert "already working on this" in comment["body"]
    assert stack.groq.requests == [] and stack.github.pulls(REPO) == []


def test_rate_limits_are_waited_out_without_duplicate_comments(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    # A secondary rate limit (403 + retry-after) on the first comment POST: nothing was
    # created, so the bot waits and posts once.
    stack.github.inject("POST", "/repos/{owner}/{repo}/issues/{number}/comments", status=403)
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    progress = [c for c in stack.github.comments(REPO, 1) if "tdd-agent:progress" in c["body"]]
    assert len(progress) == 1 and "✅ Tests pass" in progress[0]["body"]
    statuses = [
        c.status
        for c in stack.github.calls_to("POST", "/repos/{owner}/{repo}/issues/{number}/comments")
    ]
    assert statuses == [403, 201]
    assert len(stack.github.pulls(REPO)) == 1


def test_installation_tokens_never_reach_the_journal(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    tokens = set(stack.github.issued_tokens())
    assert tokens
    stored = b"".join((stack.redis.dump(key) or b"") for key in stack.redis.scan_iter("tdd:*"))
    assert stored and not any(t.encode() in stored for t in tokens)


SLOW_ISSUE_BODY = ISSUE_BODY.replace(
    "def test_add():\n", "def test_add():\n    import time\n\n    time.sleep(1.5)\n"
)


def test_a_worker_killed_mid_run_resumes_from_the_journal(stack: Stack) -> None:
    from rq import Queue
    from rq.registry import StartedJobRegistry

    from bot.journal import load_run

    stack.github.add_issue(
        REPO, number=3, title="Slow calculator", body=SLOW_ISSUE_BODY, user="alice"
    )
    stack.groq.script(write(HALF), write(GOOD))
    job_id = stack.deliver("issues", labeled_payload(3)).json()["queued"]

    def worker() -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "-c",
            "jobs.worker_config",
            "--maintenance-interval",
            "30",
            "--job-monitoring-interval",
            "10",
        ]
        return subprocess.Popen(
            cmd,
            env=stack.env,
            cwd=ROOT,
            start_new_session=True,
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait(predicate: Any, what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def step_started(seq: int) -> bool:
        loaded = load_run(stack.redis, job_id)
        return bool(loaded and any(s.seq == seq and s.status == "started" for s in loaded[1]))

    first = worker()
    try:
        wait(lambda: step_started(5), "the third sandbox run (red at base, red, green)")
    finally:
        kill_tree(first.pid)  # the worker and its work-horse die mid-step
        first.wait()
    assert len(stack.groq.requests) == 2

    # RQ's maintenance finds the job once its heartbeat expires (~70 s with the Procfile's
    # settings); run that same cleanup with the clock moved past the expiry.
    queue = Queue("tdd-agent", connection=stack.redis)
    StartedJobRegistry(queue=queue).cleanup(timestamp=time.time() + 3600)

    second = worker()
    try:
        wait(lambda: stack.github.pulls(REPO), "the pull request", timeout=90)
    finally:
        kill_tree(second.pid)
        second.wait()

    assert len(stack.groq.requests) == 2, "finished model turns were replayed"
    _, steps = load_run(stack.redis, job_id) or ({}, [])
    assert [(s.kind, s.attempt) for s in steps] == [
        ("sandbox", 1),
        ("model", 1),
        ("sandbox", 1),
        ("model", 1),
        ("sandbox", 2),
        ("verify", 1),
    ]
    (pr,) = stack.github.pulls(REPO)
    assert "Closes #3" in pr["body"]
    assert stack.github.files_at(REPO, "agent-tdd/issue-3")["calc.py"] == GOOD


def test_a_github_error_while_publishing_is_reported_and_loses_nothing(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    # The app cannot write git objects (e.g. installed without contents: write).
    stack.github.inject("POST", "/repos/{owner}/{repo}/git/trees", status=404, times=None)
    stack.deliver("issues", labeled_payload(1))
    stack.work()

    assert len(stack.groq.requests) == 1, "RQ's retries replayed the journal, no new model call"
    assert stack.github.pulls(REPO) == []
    bodies = [c["body"] for c in stack.github.comments(REPO, 1)]
    failures = [b for b in bodies if "stopped without a result" in b]
    assert len(failures) == 1, "reported once, on the last attempt"
    assert "could not commit the code: 404" in failures[0] and "agent:tdd" in failures[0]
    assert "without asking the model again" in failures[0]
    progress = next(b for b in bodies if "tdd-agent:progress" in b)
    assert "could not commit the code: 404" in progress
    attempts = stack.github.calls_to("POST", "/repos/{owner}/{repo}/git/trees")
    assert len(attempts) == 4, "the first try and RQ's three retries"

    # The permission is fixed and the label applied again: the kept result is published.
    stack.github.clear_injections()
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (pr,) = stack.github.pulls(REPO)
    assert pr["draft"] is False
    assert len(stack.groq.requests) == 1, "published from the journal, no new model call"


def test_a_check_run_that_failed_after_its_effect_is_not_made_twice(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    # GitHub creates the check run but the client sees a 502; RQ runs the job again.
    stack.github.inject("POST", "/repos/{owner}/{repo}/check-runs", status=502, after_apply=True)
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    commits = stack.github.calls_to("POST", "/repos/{owner}/{repo}/git/commits")
    assert len(commits) == 1, "the retry reused the run's commit: no orphaned commit"
    (check,) = stack.github.check_runs(REPO)
    assert check["head_sha"] == stack.github.ref_sha(REPO, "agent-tdd/issue-1")
    assert check["conclusion"] == "success"
    assert len(stack.github.pulls(REPO)) == 1


def test_groq_failing_for_good_is_reported_on_the_issue(stack: Stack) -> None:
    stack.groq.script(*[g.server_error(503)] * 20)
    stack.env["GROQ_MAX_RETRIES"] = "1"
    stack.deliver("issues", labeled_payload(1))
    stack.work()

    bodies = [c["body"] for c in stack.github.comments(REPO, 1)]
    progress = next(b for b in bodies if "tdd-agent:progress" in b)
    assert "The run failed" in progress and "Groq answered 503" in progress
    assert len([b for b in bodies if "stopped without a result" in b]) == 1
    assert stack.github.pulls(REPO) == []
    # Each of the 4 attempts made one call plus one SDK retry: bounded, never endless.
    assert len(stack.groq.requests) == 8


def test_a_retry_that_fails_for_good_is_reported_on_the_pull_request(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (pr,) = stack.github.pulls(REPO)

    stack.groq.script(*[g.server_error(503)] * 20)
    stack.env["GROQ_MAX_RETRIES"] = "0"
    stack.deliver("issue_comment", comment_payload(stack, pr["number"], "/retry", "alice"))
    stack.work()

    replies = [c["body"] for c in stack.github.comments(REPO, pr["number"])]
    assert len([b for b in replies if "stopped without a result" in b]) == 1
    assert "comment `/retry`" in next(b for b in replies if "stopped without a result" in b)


# -- a green that can be trusted ---------------------------------------------------------


def test_the_pr_proves_red_to_green_and_commits_the_issues_tests(stack: Stack) -> None:
    stack.groq.script(write(GOOD))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (pr,) = stack.github.pulls(REPO)
    body = pr["body"]
    assert pr["draft"] is False
    proof = body[body.index("## Proof: red → green") :]
    # Both tests were red at base (calc.py did not exist) and are green at head.
    assert "tests/test_calc.py::test_add" in proof and "tests/test_calc.py::test_sub" in proof
    assert "-m pytest" in proof and "sha256" in proof.lower()
    (check,) = stack.github.check_runs(REPO)
    assert (
        check["conclusion"] == "success"
        and "tests/test_calc.py::test_add" in check["output"]["summary"]
    )
    files = stack.github.files_at(REPO, "agent-tdd/issue-1")
    assert (
        "def test_add" in files["tests/test_calc.py"]
        and "canary" not in files["tests/test_calc.py"]
    )


def test_tests_already_green_at_base_end_as_nothing_to_do(stack: Stack) -> None:
    stack.github.add_repo(REPO + "-done", files={"calc.py": GOOD})
    stack.github.add_issue(
        REPO + "-done", number=1, title="Already done", body=ISSUE_BODY, user="alice"
    )
    stack.github.set_permission(REPO + "-done", "alice", "write")
    payload = labeled_payload(1)
    payload["repository"]["name"] = "demo-done"
    payload["repository"]["full_name"] = REPO + "-done"
    stack.deliver("issues", payload)
    stack.work()
    assert stack.groq.requests == [], "no model call when every test already passes"
    assert stack.github.pulls(REPO + "-done") == []
    (comment,) = [
        c for c in stack.github.comments(REPO + "-done", 1) if "tdd-agent:progress" in c["body"]
    ]
    assert "already passes at the base commit" in comment["body"]


@pytest.mark.parametrize(
    ("attack", "why"),
    [
        (
            [
                g.tool_call(
                    "write_file",
                    {"path": "pytest.ini", "content": "[pytest]\naddopts = -k add\n"},
                ),
            ],
            "pytest.ini",
        ),
        (
            [
                g.tool_call(
                    "write_file",
                    {
                        "path": "calc.py",
                        "content": "import atexit, os\natexit.register(lambda: os._exit(0))\n"
                        + HALF,
                    },
                ),
            ],
            "atexit",
        ),
    ],
    ids=["pytest-ini-deselects", "atexit-exit-0"],
)
def test_attacks_on_the_verdict_never_make_a_ready_pr(
    stack: Stack, attack: list[g.Reply], why: str
) -> None:
    finish = g.tool_call("finish", {"summary": "done"})
    stack.groq.script(*attack, write(HALF), finish, finish, finish)
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    for pr in stack.github.pulls(REPO):
        assert pr["draft"] is True and "Closes #1" not in pr["body"]
    assert all(c["conclusion"] != "success" for c in stack.github.check_runs(REPO))
    files = stack.github.files_at(REPO, "agent-tdd/issue-1")
    assert "pytest.ini" not in files and "atexit" not in files.get("calc.py", "")
    refusal = stack.groq.requests[1].messages[-1]["content"]
    assert why in refusal


def test_the_repositorys_pytest_config_is_used_but_its_addopts_cannot_pick_the_tests(
    stack: Stack,
) -> None:
    # `-x -k add` would stop at the first failure and deselect test_sub: both steer the verdict.
    stack.github.add_repo(
        REPO + "-cfg", files={"pytest.ini": "[pytest]\naddopts = -x -k add\nmarkers = slow\n"}
    )
    stack.github.add_issue(REPO + "-cfg", number=1, title="calc", body=ISSUE_BODY, user="alice")
    stack.github.set_permission(REPO + "-cfg", "alice", "write")
    payload = labeled_payload(1)
    payload["repository"]["name"] = "demo-cfg"
    payload["repository"]["full_name"] = REPO + "-cfg"
    stack.groq.script(write(HALF), write(GOOD))
    stack.deliver("issues", payload)
    stack.work()
    (pr,) = stack.github.pulls(REPO + "-cfg")
    assert pr["draft"] is False
    assert "tests/test_calc.py::test_sub" in pr["body"], "test_sub ran despite -k add"
    second_turn = stack.groq.requests[1].messages[-1]["content"]
    assert "1 passed, 1 failed" in second_turn, "HALF fails test_sub: it was not deselected"


def test_a_retry_after_publishing_failed_for_good_publishes_without_asking_the_model(
    stack: Stack,
) -> None:
    stack.groq.script(write(GOOD))
    # The PR is opened, then every check run POST fails: the job fails for good.
    stack.github.inject("POST", "/repos/{owner}/{repo}/check-runs", status=500, times=None)
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (pr,) = stack.github.pulls(REPO)
    failure = [c["body"] for c in stack.github.comments(REPO, 1) if "stopped without" in c["body"]]
    assert len(failure) == 1 and "could not create the check run" in failure[0]
    assert stack.github.check_runs(REPO) == []

    stack.github.clear_injections()
    stack.deliver("issue_comment", comment_payload(stack, pr["number"], "/retry", "alice"))
    stack.work()
    assert len(stack.groq.requests) == 1, "the kept result was published, no new model call"
    (check,) = stack.github.check_runs(REPO)
    assert check["conclusion"] == "success"
    assert len(stack.github.calls_to("POST", "/repos/{owner}/{repo}/git/commits")) == 1


def test_the_cost_is_the_same_in_the_journal_the_pr_and_the_progress_comment(
    stack: Stack,
) -> None:
    stack.env["MODEL_PRICES"] = '{"openai/gpt-oss-120b": {"input": 1000, "output": 2000}}'
    args = {"path": "calc.py", "content": GOOD}
    stack.groq.script(g.tool_call("write_file", args, prompt_tokens=1000, completion_tokens=100))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    (pr,) = stack.github.pulls(REPO)
    run_id = parse_pr_marker(pr["body"])["run"]  # type: ignore[index]
    meta, _ = load_run(stack.redis, run_id) or ({}, [])
    assert meta["cost_usd"] == pytest.approx(1.2)
    assert "**Cost:** $1.20" in pr["body"]
    progress = next(c for c in stack.github.comments(REPO, 1) if "progress" in c["body"])
    assert "$1.20" in progress["body"]
    assert "$1.20" in stack.github.check_runs(REPO)[0]["output"]["summary"]


def test_the_daily_cost_cap_refuses_a_run_and_says_when_it_can_run(stack: Stack) -> None:
    stack.env["DAILY_COST_USD"] = "5"
    DailySpend(stack.redis).add(Repo("octo", "demo", 1), 5.5, run_id="earlier-run")
    stack.groq.script(write(GOOD))
    stack.deliver("issues", labeled_payload(1))
    stack.work()
    assert stack.groq.requests == [] and stack.github.pulls(REPO) == []
    (comment,) = [c for c in stack.github.comments(REPO, 1) if "spending cap" in c["body"]]
    assert "$5.50 of $5.00" in comment["body"] and "00:00 UTC" in comment["body"]
