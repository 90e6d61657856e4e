"""Webhook intake without I/O: verify the signature, then route an event to an action.

Routing works on the raw JSON (never on strict models: NOTES found real payloads that
githubkit's models reject), using GitHub's own event names as plain strings.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bot.errors import WebhookRejected

MAX_BODY_BYTES = 25 * 1024 * 1024
_RETRY_LINE = re.compile(r"^[ \t]*/retry(?:[ \t]+(?P<guidance>\S.*?))?[ \t]*$", re.MULTILINE)


def verify_signature(body: bytes, signature_256: str | None, secret: str) -> bool:
    """True only for a valid `sha256=` HMAC of `body`; SHA-1 signatures are never accepted."""
    if not signature_256 or not signature_256.startswith("sha256=") or not secret:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature_256.strip().encode())


def sign(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` value GitHub would send (for tests and benchmarks)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery: GitHub's event name, its delivery id, the JSON object."""

    event: str
    id: str
    payload: dict[str, Any]


def parse_delivery(headers: Mapping[str, str], body: bytes, *, secret: str) -> Delivery:
    """Verify and decode one delivery (headers with lower-case names); raises
    `WebhookRejected` with the HTTP status and a one-line reason."""
    if not secret:
        raise WebhookRejected(503, "WEBHOOK_SECRET is not configured on this server")
    if not verify_signature(body, headers.get("x-hub-signature-256"), secret):
        # Probot's hint: the usual cause is a secret mismatch, not an attack.
        raise WebhookRejected(
            401,
            "signature missing or invalid: send X-Hub-Signature-256 (sha256=...) and check "
            "that the app's webhook secret matches WEBHOOK_SECRET",
        )
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WebhookRejected(400, "body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "body is not a JSON object")
    return Delivery(
        event=headers.get("x-github-event", ""),
        id=headers.get("x-github-delivery", ""),
        payload=payload,
    )


@dataclass(frozen=True)
class Repo:
    owner: str
    name: str
    installation_id: int | None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class StartRun:
    """A maintainer asked for a run on an issue."""

    repo: Repo
    issue_number: int
    sender: str

    def to_json(self) -> str:
        return json.dumps({"kind": "start", **asdict(self)})


@dataclass(frozen=True)
class RetryRun:
    """`/retry` on a pull request: run the PR's task again and update that PR."""

    repo: Repo
    pr_number: int
    comment_id: int
    sender: str
    guidance: str | None

    def to_json(self) -> str:
        return json.dumps({"kind": "retry", **asdict(self)})


@dataclass(frozen=True)
class Ignore:
    reason: str


Action = StartRun | RetryRun | Ignore
Job = StartRun | RetryRun  # the actions that become a job


def action_from_json(text: str) -> Job:
    """The action `to_json` wrote (the one job entry point's argument)."""
    data = json.loads(text)
    kind = data.pop("kind")
    data["repo"] = Repo(**data["repo"])
    if kind == "start":
        return StartRun(**data)
    if kind == "retry":
        return RetryRun(**data)
    raise ValueError(f"unknown action kind {kind!r}")


def retry_guidance(body: str | None) -> tuple[bool, str | None]:
    """Whether a comment asks for `/retry`, and the guidance text on that line."""
    match = _RETRY_LINE.search(body or "")
    if match is None:
        return False, None
    return True, match.group("guidance")


def _repo(payload: dict[str, Any]) -> Repo | None:
    repo = payload.get("repository")
    if not isinstance(repo, dict):
        return None
    owner = (repo.get("owner") or {}).get("login")
    name = repo.get("name")
    if not owner or not name:
        return None
    installation = payload.get("installation") or {}
    inst_id = installation.get("id") if isinstance(installation, dict) else None
    return Repo(owner=str(owner), name=str(name), installation_id=inst_id)


def _is_bot(user: dict[str, Any] | None) -> bool:
    if not isinstance(user, dict):
        return True
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")


def route(event: str, payload: dict[str, Any], *, trigger_label: str) -> Action:
    """Decide what a delivery asks for. Anything not for us is an `Ignore` with a reason."""
    action = payload.get("action")
    repo = _repo(payload)
    if event == "issues":
        if action != "labeled":
            return Ignore(f"issues.{action} is not a trigger")
        label = (payload.get("label") or {}).get("name")  # `label` can be absent
        if label != trigger_label:
            return Ignore(f"label {label!r} is not {trigger_label!r}")
        issue = payload.get("issue") or {}
        if repo is None or not isinstance(issue.get("number"), int):
            return Ignore("payload lacks repository or issue")
        if issue.get("pull_request"):
            return Ignore("labeled a pull request, not an issue")
        if issue.get("state") == "closed":
            return Ignore("the issue is closed")
        sender = (payload.get("sender") or {}).get("login", "")
        return StartRun(repo=repo, issue_number=issue["number"], sender=str(sender))
    if event == "issue_comment":
        if action != "created":
            return Ignore(f"issue_comment.{action} is not a trigger")
        comment = payload.get("comment") or {}
        issue = payload.get("issue") or {}
        if _is_bot(comment.get("user")):
            return Ignore("comment by a bot")
        wants_retry, guidance = retry_guidance(comment.get("body"))
        if not wants_retry:
            return Ignore("comment is not /retry")
        if not issue.get("pull_request"):
            return Ignore("/retry only works on the bot's pull requests")
        if repo is None or not isinstance(issue.get("number"), int):
            return Ignore("payload lacks repository or issue")
        return RetryRun(
            repo=repo,
            pr_number=issue["number"],
            comment_id=int(comment.get("id") or 0),
            sender=str((comment.get("user") or {}).get("login", "")),
            guidance=guidance,
        )
    return Ignore(f"event {event!r} is not handled")
