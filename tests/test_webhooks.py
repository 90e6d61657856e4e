"""Webhook intake with GitHub's real example payloads, a real Redis and RQ queue."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue

from bot.config import load_settings
from bot.errors import MalformedPayload
from bot.github.webhooks import (
    Ignore,
    Repo,
    RetryRun,
    StartRun,
    action_from_json,
    json_too_deep,
    retry_guidance,
    route,
    sign,
)
from bot.web import create_app

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "s3cret-for-tests"


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.payload.json").read_text())


def labeled(label: str = "agent:tdd") -> dict[str, Any]:
    data = payload("issues__labeled")
    data["label"]["name"] = label
    data["installation"] = {"id": 4242, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI0Mg=="}
    return data


def retry_comment(body: str = "/retry", user_type: str = "User") -> dict[str, Any]:
    data = payload("issue_comment__created")
    data["comment"]["body"] = body
    data["comment"]["user"]["type"] = user_type
    number = data["issue"]["number"]
    repo = data["repository"]["full_name"]
    data["issue"]["pull_request"] = {
        "url": f"https://api.github.com/repos/{repo}/pulls/{number}",
        "html_url": f"https://github.com/{repo}/pull/{number}",
        "diff_url": f"https://github.com/{repo}/pull/{number}.diff",
        "patch_url": f"https://github.com/{repo}/pull/{number}.patch",
    }
    data["installation"] = {"id": 4242}
    return data


@pytest.fixture
def queue(redis_client: redis.Redis) -> Queue:
    return Queue("tdd-agent", connection=redis_client)


@pytest.fixture
def client(redis_client: redis.Redis, queue: Queue) -> TestClient:
    settings = load_settings({"WEBHOOK_SECRET": SECRET})
    return TestClient(create_app(settings, redis_client=redis_client, queue=queue))


def post(
    client: TestClient,
    event: str,
    body: dict[str, Any] | bytes,
    *,
    delivery: str | None = None,
    signature: str | None = "auto",
    header: str = "X-Hub-Signature-256",
):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "Content-Type": "application/json",
    }
    if signature == "auto":
        headers[header] = sign(raw, SECRET)
    elif signature is not None:
        headers[header] = signature
    return client.post("/api/github/webhooks", content=raw, headers=headers)


def test_labeled_issue_enqueues_one_run(client: TestClient, queue: Queue) -> None:
    response = post(client, "issues", labeled(), delivery="d-1")
    assert response.status_code == 202
    job_id = response.json()["queued"]
    assert queue.job_ids == [job_id]
    job = queue.fetch_job(job_id)
    assert job is not None and job.func_name == "jobs.tdd.handle"
    action_json, run_id = job.args
    assert run_id == job_id
    assert action_from_json(action_json) == StartRun(
        repo=Repo(owner="Codertocat", name="Hello-World", installation_id=4242),
        issue_number=1,
        sender="Codertocat",
    )
    assert job.retries_left == 3, "a dead worker's job comes back and resumes its journal"


def test_redelivery_starts_nothing_new(client: TestClient, queue: Queue) -> None:
    first = post(client, "issues", labeled(), delivery="same-delivery")
    again = post(client, "issues", labeled(), delivery="same-delivery")
    assert first.status_code == 202
    assert again.status_code == 200 and again.json() == {"duplicate": "same-delivery"}
    assert len(queue.job_ids) == 1


@pytest.mark.parametrize(
    ("signature", "header"),
    [
        (None, "X-Hub-Signature-256"),
        ("sha256=" + "0" * 64, "X-Hub-Signature-256"),
        ("deadbeef", "X-Hub-Signature-256"),
        ("sha1=" + "0" * 40, "X-Hub-Signature-256"),
        ("auto-sha1", "X-Hub-Signature"),
    ],
    ids=["missing", "wrong", "no-prefix", "sha1-in-256", "sha1-only"],
)
def test_bad_signatures_are_rejected(client, queue, signature, header) -> None:
    body = json.dumps(labeled()).encode()
    if signature == "auto-sha1":
        import hashlib
        import hmac

        signature = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    response = post(client, "issues", body, signature=signature, header=header)
    assert response.status_code == 401
    assert "WEBHOOK_SECRET" in response.json()["error"]
    assert queue.job_ids == []


def test_signature_for_other_body_is_rejected(client, queue) -> None:
    body = json.dumps(labeled()).encode()
    response = post(client, "issues", body + b" ", signature=sign(body, SECRET))
    assert response.status_code == 401


def test_oversized_and_malformed_bodies_are_rejected(client, queue) -> None:
    huge = b"{" + b" " * (25 * 1024 * 1024) + b"}"
    assert post(client, "issues", huge).status_code == 413
    malformed = post(client, "issues", b'{"action": "labeled",')
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    assert post(client, "issues", b"[1, 2]").status_code == 400
    assert queue.job_ids == []


def test_ping_and_unhandled_events(client, queue) -> None:
    pong = post(client, "ping", json.loads((FIXTURES / "ping__payload.json").read_text()))
    assert pong.status_code == 200 and pong.json()["ok"] is True
    installed = post(client, "installation", payload("installation__created"))
    assert installed.status_code == 202 and "not handled" in installed.json()["ignored"]
    assert queue.job_ids == []


def test_unlabeled_and_other_labels_are_ignored(client, queue) -> None:
    assert "not a trigger" in post(client, "issues", payload("issues__unlabeled")).json()["ignored"]
    other = post(client, "issues", payload("issues__labeled"))
    assert other.status_code == 202 and "'bug' is not 'agent:tdd'" in other.json()["ignored"]
    opened = post(client, "issues", payload("issues__opened"))
    assert "issues.opened" in opened.json()["ignored"]
    no_label = labeled()
    del no_label["label"]
    assert post(client, "issues", no_label).json()["ignored"].startswith("label None")
    assert queue.job_ids == []


def test_retry_on_a_pr_enqueues_a_retry_job(client, queue) -> None:
    response = post(
        client, "issue_comment", retry_comment("Looks close.\n/retry handle zero too\n")
    )
    assert response.status_code == 202
    job = queue.fetch_job(response.json()["queued"])
    assert job is not None and job.func_name == "jobs.tdd.handle"
    action = action_from_json(job.args[0])
    assert isinstance(action, RetryRun)
    assert (action.guidance, action.pr_number) == ("handle zero too", 1)


def test_retry_from_bots_or_on_issues_or_without_command_is_ignored(client, queue) -> None:
    assert "bot" in post(client, "issue_comment", retry_comment(user_type="Bot")).json()["ignored"]
    on_issue = retry_comment()
    del on_issue["issue"]["pull_request"]
    assert "pull requests" in post(client, "issue_comment", on_issue).json()["ignored"]
    chatter = retry_comment("please /retry this")
    assert "not /retry" in post(client, "issue_comment", chatter).json()["ignored"]
    edited = payload("issue_comment__edited")
    assert "not a trigger" in post(client, "issue_comment", edited).json()["ignored"]
    assert queue.job_ids == []


def test_healthz_reports_redis(client) -> None:
    assert client.get("/healthz").json()["redis"] == "ok"
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    app = create_app(
        load_settings({"WEBHOOK_SECRET": SECRET}),
        redis_client=dead,
        queue=Queue("x", connection=dead),
    )
    response = TestClient(app).get("/healthz")
    assert response.status_code == 503 and "unreachable" in response.json()["redis"]


def test_missing_secret_is_a_clear_server_error(redis_client, queue) -> None:
    app = create_app(load_settings({}), redis_client=redis_client, queue=queue)
    response = post(TestClient(app), "issues", labeled())
    assert response.status_code == 503 and "WEBHOOK_SECRET" in response.json()["error"]


def test_routing_is_pure() -> None:
    assert retry_guidance("/retry") == (True, None)
    assert retry_guidance("  /retry   use a dict  ") == (True, "use a dict")
    assert retry_guidance("/retrying") == (False, None)
    assert retry_guidance("x /retry") == (False, None)
    action = route("issues", labeled(), trigger_label="agent:tdd")
    assert isinstance(action, StartRun) and action.repo.full_name == "Codertocat/Hello-World"
    closed = copy.deepcopy(labeled())
    closed["issue"]["state"] = "closed"
    assert isinstance(route("issues", closed, trigger_label="agent:tdd"), Ignore)
    assert isinstance(route("issue_comment", retry_comment(), trigger_label="agent:tdd"), RetryRun)


MISSING = object()


def with_field(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with the dotted `path` set to `value` (or deleted, for MISSING)."""
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is MISSING:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("event", "make", "path", "value", "reason"),
    [
        ("issues", labeled, "issue.number", True, "issue.number must be an integer, got true"),
        ("issues", labeled, "installation.id", "x", 'installation.id must be an integer, got "x"'),
        ("issues", labeled, "installation.id", 0, "installation.id must be positive, got 0"),
        ("issues", labeled, "sender", None, "sender must be an object, got null"),
        ("issues", labeled, "repository.owner", MISSING, "repository.owner is missing"),
        ("issues", labeled, "repository.name", "../x", "repository.name has characters"),
        ("issues", labeled, "label", "agent:tdd", 'label must be an object, got "agent:tdd"'),
        (
            "issue_comment",
            retry_comment,
            "comment.id",
            "492700400",
            'comment.id must be an integer, got "492700400"',
        ),
        ("issue_comment", retry_comment, "comment", None, "comment must be an object, got null"),
        ("issue_comment", retry_comment, "issue.number", 1.0, "issue.number must be an integer"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_trigger_with_a_broken_field_is_a_400_naming_it(
    client, queue, event, make, path, value, reason
) -> None:
    response = post(client, event, with_field(make(), path, value))
    assert response.status_code == 400
    assert response.json()["error"].startswith(reason)
    assert "\n" not in response.json()["error"]
    assert queue.job_ids == []


def test_route_names_the_broken_field() -> None:
    with pytest.raises(MalformedPayload) as caught:
        route("issues", with_field(labeled(), "issue.number", True), trigger_label="agent:tdd")
    assert caught.value.field == "issue.number" and caught.value.status == 400


def test_deep_nesting_is_refused_before_parsing(client, queue) -> None:
    nested = b"[" * 10_000 + b"]" * 10_000
    body = json.dumps(with_field(labeled(), "issue.body", "DEEP")).encode()
    body = body.replace(b'"DEEP"', nested)
    response = post(client, "issues", body)
    assert response.status_code == 400
    assert response.json()["error"] == "body nests deeper than 64 levels"
    assert queue.job_ids == []
    # 64 levels is GitHub-sized with room to spare, and still accepted.
    ok = json.dumps(with_field(labeled(), "issue.body", "DEEP")).encode()
    ok = ok.replace(b'"DEEP"', b"[" * 62 + b"]" * 62)  # payload, issue, then 62 arrays
    assert post(client, "issues", ok).status_code == 202


def test_json_depth_scan() -> None:
    assert not json_too_deep(b"[" * 64 + b"]" * 64)
    assert json_too_deep(b"[" * 65 + b"]" * 65)
    assert json_too_deep(b'{"a": ' * 65 + b"1" + b"}" * 65)
    # Brackets inside strings are text, including after escaped quotes and backslashes.
    text = json.dumps({"s": '[[[[ \\" {{{{ \\', "t": "]]]] " + '"' * 3 + "[" * 70}).encode()
    assert not json_too_deep(text, limit=1)
    assert json_too_deep(text, limit=0)


def test_broken_fields_outside_a_trigger_are_still_just_ignored(client, queue) -> None:
    opened = with_field(payload("issues__opened"), "sender", None)
    assert "issues.opened" in post(client, "issues", opened).json()["ignored"]
    other_label = with_field(labeled("bug"), "issue.number", "one")
    assert "'bug' is not" in post(client, "issues", other_label).json()["ignored"]
    chatter = with_field(retry_comment("thanks!"), "repository", None)
    assert "not /retry" in post(client, "issue_comment", chatter).json()["ignored"]
    weird_action = with_field(labeled(), "action", {"labeled": True})
    response = post(client, "issues", weird_action)
    assert response.status_code == 202 and "not a trigger" in response.json()["ignored"]
    assert queue.job_ids == []


def test_numbers_past_pythons_digit_limit_are_a_400(client, queue) -> None:
    body = json.dumps(with_field(labeled(), "issue.number", 0)).encode()
    body = body.replace(b'"number": 0', b'"number": ' + b"9" * 5000)
    response = post(client, "issues", body)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    assert queue.job_ids == []
