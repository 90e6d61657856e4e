"""Webhook intake without I/O: verify the signature, then route an event to an action.

Routing works on the raw JSON (never on githubkit's models: NOTES found real payloads that
they reject), using GitHub's own event names as plain strings. A delivery that would become a
job has the fields the router reads checked against the small models in `payloads`: wrong
shapes are a 400 naming the field, never a crash and never a job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import accumulate, count
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bot.errors import MalformedPayload, WebhookRejected
from bot.github.payloads import (
    Author,
    CommentGate,
    Installation,
    IssueTrigger,
    LabeledGate,
    PullRequestGate,
    Repository,
    RetryTrigger,
)
from bot.text import cut

MAX_BODY_BYTES = 25 * 1024 * 1024
# GitHub's payloads nest about 5 deep; json.loads recurses once per level.
MAX_JSON_DEPTH = 64
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
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


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit`, found without parsing
    it (parsing is what recurses). Only structure counts, never brackets inside strings."""
    if b"\\" in body:
        # Dropping escapes first leaves only the quotes that open and close strings. The
        # regex is faster for the usual few escapes, replace() for a body made of them.
        if body.count(b"\\") < 10_000:
            body = _ESCAPE.sub(b"", body)
        else:
            body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Removing two adjacent quotes never changes what is inside a string, and is the fast
    # path: strings without brackets in them vanish here.
    structure = body.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    # Each opener adds 2 and each closer 0, so the running sum after n brackets is
    # depth + n: the nesting passes `limit` where that sum first exceeds n + limit.
    depths = accumulate(structure.translate(_DEPTH_STEPS))
    return any(map(operator.gt, depths, count(limit + 1)))


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
    if json_too_deep(body):
        raise WebhookRejected(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError also covers bad UTF-8 and integers over Python's 4300-digit limit;
        # RecursionError only if the depth scan was fooled (a UTF-16 body).
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


_Fields = TypeVar("_Fields", bound=BaseModel)

# pydantic's error types, in words about the JSON a sender can fix.
_PROBLEMS = {
    "missing": "is missing",
    "model_type": "must be an object",
    "dict_type": "must be an object",
    "int_type": "must be an integer",
    "greater_than": "must be positive",
    "less_than_equal": "is out of range",
    "string_type": "must be a string",
    "string_too_long": "is too long",
    "string_pattern_mismatch": "has characters GitHub does not allow",
}


def _shown(value: object, limit: int = 60) -> str:
    """A payload value fit for a one-line reason: hostile payloads put anything there."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return cut(json.dumps(value), limit)


def _fields(model: type[_Fields], payload: dict[str, Any]) -> _Fields:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        problem = _PROBLEMS.get(error["type"], error["msg"])
        if error["type"] == "missing":
            raise MalformedPayload(field, f"{field} {problem}") from None
        raise MalformedPayload(
            field, f"{field} {problem}, got {_shown(error.get('input'))}"
        ) from None


def _repo(repository: Repository, installation: Installation | None) -> Repo:
    inst_id = installation.id if installation is not None else None
    return Repo(owner=repository.owner.login, name=repository.name, installation_id=inst_id)


def _is_bot(user: Author | None) -> bool:
    if user is None:
        return True
    return user.type == "Bot" or (user.login or "").endswith("[bot]")


def route(event: str, payload: dict[str, Any], *, trigger_label: str) -> Action:
    """Decide what a delivery asks for. Anything not for us is an `Ignore` with a reason; a
    trigger whose fields have the wrong shape raises `MalformedPayload` (a 400)."""
    action = payload.get("action")
    if event == "issues":
        if action != "labeled":
            return Ignore(f"issues.{_shown_action(action)} is not a trigger")
        gate = _fields(LabeledGate, payload)
        label = gate.label.name if gate.label is not None else None  # `label` can be absent
        if label != trigger_label:
            return Ignore(f"label {cut(repr(label), 60)} is not {trigger_label!r}")
        start = _fields(IssueTrigger, payload)
        if start.issue.pull_request:
            return Ignore("labeled a pull request, not an issue")
        if start.issue.state == "closed":
            return Ignore("the issue is closed")
        return StartRun(
            repo=_repo(start.repository, start.installation),
            issue_number=start.issue.number,
            sender=start.sender.login,
        )
    if event == "issue_comment":
        if action != "created":
            return Ignore(f"issue_comment.{_shown_action(action)} is not a trigger")
        comment = _fields(CommentGate, payload).comment
        if _is_bot(comment.user):
            return Ignore("comment by a bot")
        wants_retry, guidance = retry_guidance(comment.body)
        if not wants_retry:
            return Ignore("comment is not /retry")
        if not _fields(PullRequestGate, payload).issue.pull_request:
            return Ignore("/retry only works on the bot's pull requests")
        retry = _fields(RetryTrigger, payload)
        return RetryRun(
            repo=_repo(retry.repository, retry.installation),
            pr_number=retry.issue.number,
            comment_id=retry.comment.id,
            sender=retry.comment.user.login,
            guidance=guidance,
        )
    return Ignore(f"event {cut(repr(event), 60)} is not handled")


def _shown_action(action: object) -> str:
    # GitHub's own actions (and an absent one, `None`) read as they always have; anything
    # else as JSON, clipped.
    if action is None or (isinstance(action, str) and action.isidentifier()):
        return str(action)
    return _shown(action, 40)
