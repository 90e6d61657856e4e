"""A stateful fake of GitHub's REST API, served over real HTTP on loopback.

Point the real client at it: ``GitHub(auth, base_url=fake.url)``. Answers use GitHub's paths,
status codes and JSON shapes (each one parses with githubkit's 2026-03-10 models), git objects
get real git SHA-1s, and every request is recorded so a test can assert the sequence of calls.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import jwt

AuthKind = Literal["jwt", "installation", "none", "invalid"]

DOCS_URL = "https://docs.github.com/rest"
HTML_URL = "https://github.com"
MAX_BODY_CHARS = 65536
MAX_CHECK_OUTPUT_CHARS = 65535
TOKEN_EXPIRES_AT = "2099-01-01T00:00:00Z"
REACTION_CONTENTS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
# GitHub reports the legacy base permission next to the fine-grained role.
ROLE_TO_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
APP_PERMISSIONS = {
    "metadata": "read",
    "issues": "write",
    "pull_requests": "write",
    "contents": "write",
    "checks": "write",
}
APP_EVENTS = ["issues", "issue_comment"]
SECONDARY_RATE_LIMIT_BODY = {
    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you "
    "try again. If you reach out to GitHub Support for help, please include the request ID "
    "0000:1111:2222:3333:44444444.",
    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
    "#about-secondary-rate-limits",
    "status": "403",
}
RATE_LIMIT_429_BODY = {
    "message": "API rate limit exceeded for installation. If you reach out to GitHub Support "
    "for help, please include the request ID 0000:1111:2222:3333:44444444.",
    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
    "status": "429",
}
BAD_GATEWAY_HTML = (
    "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>"
    "<p>We couldn't respond to your request in time. Sorry about that.</p></body></html>"
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_body(status: int, message: str, *, errors: list[Any] | None = None) -> dict[str, Any]:
    """GitHub's error JSON; it now echoes the status as a string."""
    body: dict[str, Any] = {"message": message, "documentation_url": DOCS_URL}
    if errors is not None:
        body["errors"] = errors
    body["status"] = str(status)
    return body


def compile_path(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """Compile a path template (``/repos/{owner}/{repo}``, ``{ref:path}`` spans slashes).

    A compiled regex is used as is; either is matched against the whole path.
    """
    if isinstance(pattern, re.Pattern):
        return pattern
    parts: list[str] = []
    pos = 0
    for m in re.finditer(r"\{(\w+)(:path)?\}", pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        parts.append(f"(?P<{m[1]}>{'.+' if m[2] else '[^/]+'})")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Call:
    """One request the fake answered, in arrival order."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth: AuthKind
    status: int
    injected: bool = False
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Injection:
    """A scripted fault; ``hits`` counts how often it fired."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int | None
    headers: dict[str, str]
    body: Any
    after_apply: bool
    delay: float
    drop: bool
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.method in ("*", method) and self.pattern.fullmatch(path) is not None


class _HttpError(Exception):
    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.reply = _Reply(status, body, dict(headers or {}))


def _fail(status: int, message: str, *, errors: list[Any] | None = None) -> _HttpError:
    return _HttpError(status, error_body(status, message, errors=errors))


def _invalid(
    resource: str, field_name: str | None, code: str, message: str | None = None
) -> _HttpError:
    error: dict[str, Any] = {"resource": resource, "code": code}
    if field_name is not None:
        error["field"] = field_name
    if message is not None:
        error["message"] = message
    return _fail(422, "Validation Failed", errors=[error])


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Req:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    auth: AuthKind
    installation_id: int | None

    def json(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise _fail(400, "Problems parsing JSON")
        return self.body


@dataclass
class _Entry:
    name: str
    mode: str  # API form: "100644", "100755", "040000", "120000", "160000"
    type: str  # "blob" | "tree" | "commit"
    sha: str


@dataclass
class _Commit:
    tree: str
    parents: list[str]
    message: str
    author: dict[str, str]
    committer: dict[str, str]
    verified: bool


@dataclass
class _Pull:
    id: int
    head: str
    base: str
    draft: bool
    maintainer_can_modify: bool
    head_sha: str


@dataclass
class _Issue:
    number: int
    id: int
    title: str
    body: str | None
    user: str
    labels: list[str]
    state: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    pull: _Pull | None = None


@dataclass
class _Comment:
    id: int
    number: int
    body: str
    user: str
    created_at: datetime
    updated_at: datetime


@dataclass
class _Reaction:
    id: int
    content: str
    user: str
    subject: tuple[str, int]  # ("issue", number) or ("comment", comment_id)
    created_at: datetime


@dataclass
class _CheckRun:
    id: int
    name: str
    head_sha: str
    status: str
    conclusion: str | None
    started_at: datetime | None
    completed_at: datetime | None
    details_url: str | None
    external_id: str | None
    output: dict[str, str | None]
    suite_id: int


@dataclass
class _Repo:
    id: int
    owner: str
    name: str
    default_branch: str
    private: bool
    installation_id: int
    created_at: datetime
    blobs: dict[str, bytes] = field(default_factory=dict)
    trees: dict[str, list[_Entry]] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    issues: dict[int, _Issue] = field(default_factory=dict)
    comments: dict[int, _Comment] = field(default_factory=dict)
    reactions: list[_Reaction] = field(default_factory=list)
    check_runs: dict[int, _CheckRun] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


Handler = Callable[["_Req"], "_Reply"]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    auth: Literal["jwt", "installation", "none"]
    write: bool
    handler: Handler


class FakeGitHub:
    """GitHub's REST API for one App, with repositories seeded by the test."""

    def __init__(
        self,
        *,
        app_id: int = 4242,
        app_slug: str = "tdd-agent",
        app_name: str = "TDD Agent",
        app_owner: str = "octo",
        installation_id: int = 1,
        public_key: Any = None,
        token_expires_at: str = TOKEN_EXPIRES_AT,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.app_id = app_id
        self.app_slug = app_slug
        self.app_name = app_name
        self.app_owner = app_owner
        self.installation_id = installation_id
        self.bot_login = f"{app_slug}[bot]"
        self._public_key = public_key
        self._token_expires_at = token_expires_at
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._installations: dict[int, str] = {installation_id: app_owner}
        self._tokens: dict[str, int] = {}
        self._manifest_codes: dict[str, dict[str, Any]] = {}
        self._users: dict[str, tuple[int, str]] = {}
        self._ids = itertools.count(1_000_001)
        self._rate_used: dict[str, int] = {}
        self._calls: list[Call] = []
        self._injections: list[Injection] = []
        self._server: _Server | None = None
        self._url: str | None = None
        self.errors: list[str] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._created_at = self._clock()
        self._user_id(self.bot_login, "Bot")
        self._user_id(app_owner)
        self._routes = self._build_routes()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _RequestHandler)
        server.fake = self
        self._stopping.clear()
        self._server = server
        # Kept after stop() so state readers can still render URLs.
        self._url = f"http://127.0.0.1:{server.server_address[1]}/"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the port and join every server thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, for ``GitHub(base_url=...)``."""
        if self._url is None:
            raise RuntimeError("FakeGitHub was never started")
        return self._url

    @property
    def _api(self) -> str:
        return self.url.rstrip("/")

    # -- seeding ---------------------------------------------------------------------------

    def add_repo(
        self,
        full_name: str,
        *,
        files: Mapping[str, str | bytes] | None = None,
        default_branch: str = "main",
        private: bool = False,
        installation_id: int | None = None,
        owner_type: str = "User",
    ) -> str:
        """Create a repository whose default branch holds one commit with ``files``.

        Returns the initial commit's SHA.
        """
        owner, name = full_name.split("/")
        inst = self.installation_id if installation_id is None else installation_id
        with self._lock:
            self._user_id(owner, owner_type)
            # An installation belongs to the account of the first repository seeded into it.
            if not any(r.installation_id == inst for r in self._repos.values()):
                self._installations[inst] = owner
            repo = _Repo(
                id=next(self._ids),
                owner=owner,
                name=name,
                default_branch=default_branch,
                private=private,
                installation_id=inst,
                created_at=self._clock(),
            )
            repo.roles[owner] = "admin"
            self._repos[full_name.lower()] = repo
            tree = self._tree_from_flat(repo, self._flat_from_files(repo, files or {}))
            who = {"name": owner, "email": f"{owner}@users.noreply.github.com"}
            sha = self._write_commit(repo, tree, [], "Initial commit", who, who, verified=False)
            repo.refs[f"refs/heads/{default_branch}"] = sha
            return sha

    def commit_files(
        self,
        repo: str,
        branch: str,
        files: Mapping[str, str | bytes | None],
        *,
        message: str = "Update files",
        author: str = "alice",
    ) -> str:
        """Commit ``files`` (None deletes) on ``branch``, branching from the default if new."""
        with self._lock:
            r = self._get_repo(repo)
            ref = f"refs/heads/{branch}"
            parent = r.refs.get(ref) or r.refs[f"refs/heads/{r.default_branch}"]
            flat = self._flatten(r, r.commits[parent].tree)
            for path, content in files.items():
                if content is None:
                    flat.pop(path, None)
                else:
                    data = content.encode() if isinstance(content, str) else content
                    self._put_flat(flat, path, ("100644", "blob", self._write_blob(r, data)))
            who = {"name": author, "email": f"{author}@users.noreply.github.com"}
            tree = self._tree_from_flat(r, flat)
            sha = self._write_commit(r, tree, [parent], message, who, who, verified=False)
            r.refs[ref] = sha
            return sha

    def add_issue(
        self,
        repo: str,
        *,
        number: int | None = None,
        title: str,
        body: str | None = "",
        user: str = "alice",
        labels: Iterable[str] = (),
        state: str = "open",
    ) -> int:
        """Create an issue; returns its number (PRs and issues share the numbering)."""
        with self._lock:
            r = self._get_repo(repo)
            self._user_id(user)
            num = number if number is not None else self._next_number(r)
            if num in r.issues:
                raise ValueError(f"#{num} already exists in {repo}")
            now = self._clock()
            r.issues[num] = _Issue(
                number=num,
                id=next(self._ids),
                title=title,
                body=body,
                user=user,
                labels=list(labels),
                state=state,
                created_at=now,
                updated_at=now,
                closed_at=now if state == "closed" else None,
            )
            return num

    def add_pull(
        self,
        repo: str,
        *,
        head: str,
        base: str | None = None,
        title: str = "Existing pull request",
        body: str | None = "",
        user: str | None = None,
        state: str = "open",
        draft: bool = False,
    ) -> int:
        """Seed a PR from an existing branch; returns its number."""
        with self._lock:
            r = self._get_repo(repo)
            try:
                issue = self._create_pull(
                    r,
                    title=title,
                    head=head,
                    base=base or r.default_branch,
                    body=body,
                    draft=draft,
                    user=user or self.bot_login,
                    maintainer_can_modify=False,
                )
            except _HttpError as e:
                raise ValueError(f"GitHub would refuse this PR: {e.reply.body}") from e
            if state == "closed":
                issue.state = "closed"
                issue.closed_at = self._clock()
            return issue.number

    def add_comment(self, repo: str, number: int, *, body: str, user: str = "alice") -> int:
        """Seed an issue/PR comment by ``user``; returns the comment id."""
        with self._lock:
            r = self._get_repo(repo)
            if number not in r.issues:
                raise KeyError(f"no issue #{number} in {repo}")
            self._user_id(user)
            return self._create_comment(r, number, body, user).id

    def set_permission(self, repo: str, user: str, role: str) -> None:
        """Give ``user`` a role: admin, maintain, write, triage, read or none."""
        if role not in ROLE_TO_PERMISSION:
            raise ValueError(f"unknown role {role!r}")
        with self._lock:
            self._user_id(user)
            self._get_repo(repo).roles[user] = role

    def add_manifest_code(self, code: str, **overrides: Any) -> dict[str, Any]:
        """Register a one-time manifest code; returns the conversion JSON it will answer with."""
        with self._lock:
            payload = {
                **self._integration_json(),
                "client_id": f"Iv23li{secrets.token_hex(5)}",
                "client_secret": secrets.token_hex(20),
                "webhook_secret": secrets.token_hex(20),
                "pem": overrides.pop("pem", None) or generate_pem(),
                **overrides,
            }
            self._manifest_codes[code] = payload
            return dict(payload)

    # -- fault injection and recording ----------------------------------------------------

    def inject(
        self,
        method: str,
        path: str | re.Pattern[str],
        *,
        status: int,
        times: int | None = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        after_apply: bool = False,
        delay: float = 0.0,
        drop: bool = False,
    ) -> Injection:
        """Answer matching requests with ``status`` instead (``times=None``: forever).

        ``path`` is a template (``/repos/{owner}/{repo}/pulls``) or a compiled regex, matched
        against the whole path; ``method`` may be ``"*"``. With ``after_apply`` the request
        changes state first, modelling a write that succeeded although the client saw an
        error. ``drop`` closes the connection without any answer; ``delay`` sleeps first.
        Default bodies: 403 is a secondary rate limit with ``retry-after: 1``, 429 carries
        ``retry-after: 1``, 502 is an HTML page, others are GitHub's error JSON.
        """
        default_body, default_headers = _default_fault(status)
        injection = Injection(
            method=method.upper(),
            pattern=compile_path(path),
            status=status,
            times=times,
            headers={**default_headers, **{k.lower(): v for k, v in (headers or {}).items()}},
            body=default_body if body is None else body,
            after_apply=after_apply,
            delay=delay,
            drop=drop,
        )
        with self._lock:
            self._injections.append(injection)
        return injection

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every recorded call, oldest first."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str, path: str | re.Pattern[str]) -> list[Call]:
        """Recorded calls whose method (or ``"*"``) and whole path match ``path``."""
        pattern = compile_path(path)
        return [
            c for c in self.calls if method.upper() in ("*", c.method) and pattern.fullmatch(c.path)
        ]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- state readers ---------------------------------------------------------------------

    def files_at(self, repo: str, ref: str) -> dict[str, str]:
        """Files (path → UTF-8 text) at a branch, ``refs/...`` name or commit SHA."""
        with self._lock:
            r = self._get_repo(repo)
            sha = self._resolve(r, ref)
            if sha is None:
                raise KeyError(f"no ref {ref!r} in {repo}")
            flat = self._flatten(r, r.commits[sha].tree)
            return {
                path: r.blobs[sha_].decode("utf-8", errors="replace")
                for path, (_, kind, sha_) in sorted(flat.items())
                if kind == "blob"
            }

    def ref_sha(self, repo: str, branch: str) -> str | None:
        """The commit a branch points at, or None when it does not exist."""
        with self._lock:
            return self._get_repo(repo).refs.get(f"refs/heads/{branch}")

    def branches(self, repo: str) -> dict[str, str]:
        """Branch name → commit SHA."""
        with self._lock:
            refs = self._get_repo(repo).refs
            return {k.removeprefix("refs/heads/"): v for k, v in refs.items()}

    def commit(self, repo: str, sha: str) -> dict[str, Any]:
        """The GitHub JSON of a git commit (message, parents, author, verification...)."""
        with self._lock:
            r = self._get_repo(repo)
            return self._commit_json(r, sha)

    def pulls(self, repo: str) -> list[dict[str, Any]]:
        """Every PR as GitHub's full pull request JSON, by number."""
        with self._lock:
            r = self._get_repo(repo)
            return [self._pull_json(r, i) for _, i in sorted(r.issues.items()) if i.pull]

    def issue(self, repo: str, number: int) -> dict[str, Any]:
        """Issue JSON (PRs included, with their ``pull_request`` key)."""
        with self._lock:
            r = self._get_repo(repo)
            return self._issue_json(r, r.issues[number])

    def comments(self, repo: str, number: int | None = None) -> list[dict[str, Any]]:
        """Issue comment JSON, oldest first, optionally for one issue/PR."""
        with self._lock:
            r = self._get_repo(repo)
            return [
                self._comment_json(r, c)
                for c in r.comments.values()
                if number is None or c.number == number
            ]

    def reactions(self, repo: str) -> list[dict[str, Any]]:
        """Reactions as ``{id, content, user, issue_number, comment_id}`` (one of the last two)."""
        with self._lock:
            return [
                {
                    "id": x.id,
                    "content": x.content,
                    "user": x.user,
                    "issue_number": x.subject[1] if x.subject[0] == "issue" else None,
                    "comment_id": x.subject[1] if x.subject[0] == "comment" else None,
                }
                for x in self._get_repo(repo).reactions
            ]

    def check_runs(self, repo: str) -> list[dict[str, Any]]:
        """Check run JSON in creation order."""
        with self._lock:
            r = self._get_repo(repo)
            return [self._check_run_json(r, c) for c in r.check_runs.values()]

    def issued_tokens(self) -> dict[str, int]:
        """Installation token → installation id, for every token handed out."""
        with self._lock:
            return dict(self._tokens)

    # -- git object store ------------------------------------------------------------------

    def _write_blob(self, repo: _Repo, data: bytes) -> str:
        sha = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        repo.blobs[sha] = data
        return sha

    def _write_tree(self, repo: _Repo, entries: list[_Entry]) -> str:
        # Git orders entries as if directory names ended with "/".
        entries = sorted(entries, key=lambda e: e.name + ("/" if e.type == "tree" else ""))
        raw = b"".join(
            f"{e.mode.lstrip('0')} {e.name}".encode() + b"\0" + bytes.fromhex(e.sha)
            for e in entries
        )
        sha = hashlib.sha1(b"tree %d\0" % len(raw) + raw).hexdigest()
        repo.trees[sha] = entries
        return sha

    def _write_commit(
        self,
        repo: _Repo,
        tree: str,
        parents: list[str],
        message: str,
        author: Mapping[str, str],
        committer: Mapping[str, str],
        *,
        verified: bool,
    ) -> str:
        now = _iso(self._clock())
        author = {
            "name": author["name"],
            "email": author["email"],
            "date": author.get("date") or now,
        }
        committer = {
            "name": committer["name"],
            "email": committer["email"],
            "date": committer.get("date") or now,
        }

        def ident(who: Mapping[str, str]) -> str:
            stamp = int(datetime.fromisoformat(who["date"].replace("Z", "+00:00")).timestamp())
            return f"{who['name']} <{who['email']}> {stamp} +0000"

        lines = [f"tree {tree}", *(f"parent {p}" for p in parents)]
        lines += [f"author {ident(author)}", f"committer {ident(committer)}", "", message]
        raw = "\n".join(lines).encode()
        sha = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        repo.commits[sha] = _Commit(tree, list(parents), message, author, committer, verified)
        return sha

    def _flatten(
        self, repo: _Repo, tree_sha: str, prefix: str = ""
    ) -> dict[str, tuple[str, str, str]]:
        flat: dict[str, tuple[str, str, str]] = {}
        for e in repo.trees[tree_sha]:
            path = prefix + e.name
            if e.type == "tree":
                flat.update(self._flatten(repo, e.sha, path + "/"))
            else:
                flat[path] = (e.mode, e.type, e.sha)
        return flat

    @staticmethod
    def _put_flat(
        flat: dict[str, tuple[str, str, str]], path: str, value: tuple[str, str, str]
    ) -> None:
        # A file replaces a directory of the same name and the reverse, as git would.
        parts = path.split("/")
        for i in range(1, len(parts)):
            flat.pop("/".join(parts[:i]), None)
        for key in [k for k in flat if k.startswith(path + "/")]:
            del flat[key]
        flat[path] = value

    def _flat_from_files(
        self, repo: _Repo, files: Mapping[str, str | bytes]
    ) -> dict[str, tuple[str, str, str]]:
        flat: dict[str, tuple[str, str, str]] = {}
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            self._put_flat(flat, path.strip("/"), ("100644", "blob", self._write_blob(repo, data)))
        return flat

    def _tree_from_flat(self, repo: _Repo, flat: Mapping[str, tuple[str, str, str]]) -> str:
        here: list[_Entry] = []
        subdirs: dict[str, dict[str, tuple[str, str, str]]] = {}
        for path, (mode, kind, sha) in flat.items():
            head, sep, rest = path.partition("/")
            if sep:
                subdirs.setdefault(head, {})[rest] = (mode, kind, sha)
            else:
                here.append(_Entry(head, mode, kind, sha))
        for name, sub in subdirs.items():
            here.append(_Entry(name, "040000", "tree", self._tree_from_flat(repo, sub)))
        return self._write_tree(repo, here)

    def _resolve(self, repo: _Repo, ref: str) -> str | None:
        """Commit SHA for a branch, tag, ``heads/x``, ``refs/...`` name or SHA."""
        for candidate in (ref, f"refs/{ref}", f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if candidate in repo.refs:
                return repo.refs[candidate]
        return ref if ref in repo.commits else None

    def _ancestors(self, repo: _Repo, sha: str) -> list[str]:
        """``sha`` and everything reachable from it, nearest first."""
        seen: dict[str, None] = {}
        queue = [sha]
        while queue:
            cur = queue.pop(0)
            if cur in seen or cur not in repo.commits:
                continue
            seen[cur] = None
            queue.extend(repo.commits[cur].parents)
        return list(seen)

    # -- HTTP plumbing ---------------------------------------------------------------------

    def _serve(self, h: _RequestHandler) -> None:
        split = urlsplit(h.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        auth, inst = self._authenticate(headers.get("authorization"))
        body: Any = None
        parse_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parse_error = True

        with self._lock:
            injection = next((i for i in self._injections if i.matches(h.command, path)), None)
            if injection is not None:
                injection.hits += 1

        if injection is not None and not injection.after_apply:
            reply = self._fault_reply(injection)
        elif parse_error:
            reply = _Reply(400, error_body(400, "Problems parsing JSON"))
        else:
            try:
                reply = self._dispatch(h.command, path, query, body, auth, inst)
            except Exception:
                # A bug in the fake must fail loudly, not look like a network error.
                with self._lock:
                    self.errors.append(traceback.format_exc())
                reply = _Reply(500, error_body(500, "FakeGitHub crashed; see fake.errors"))
            if injection is not None:
                reply = self._fault_reply(injection)

        with self._lock:
            self._calls.append(
                Call(
                    method=h.command,
                    path=path,
                    query=query,
                    body=body,
                    auth=auth,
                    status=0 if injection and injection.drop else reply.status,
                    injected=injection is not None,
                    headers=headers,
                )
            )
        if injection is not None and injection.delay:
            self._stopping.wait(injection.delay)
        if injection is not None and injection.drop:
            h.close_connection = True
            return
        try:
            self._write(h, reply, headers, auth, inst)
        except OSError:
            # The client gave up (timeout, closed socket); nothing left to tell it.
            h.close_connection = True

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        auth: AuthKind,
        inst: int | None,
    ) -> _Reply:
        for route in self._routes:
            if route.method != method:
                continue
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            params = {k: unquote(v) for k, v in m.groupdict().items()}
            req = _Req(method, path, params, query, body, auth, inst)
            try:
                with self._lock:
                    self._authorize(route, req)
                    return route.handler(req)
            except _HttpError as e:
                return e.reply
        return _Reply(404, error_body(404, "Not Found"))

    def _authenticate(self, header: str | None) -> tuple[AuthKind, int | None]:
        if not header:
            return "none", None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not credential:
            return "invalid", None
        with self._lock:
            if credential in self._tokens:
                return "installation", self._tokens[credential]
        if scheme.lower() == "bearer" and self._valid_jwt(credential):
            return "jwt", None
        return "invalid", None

    def _valid_jwt(self, token: str) -> bool:
        if token.count(".") != 2:
            return False
        try:
            if self._public_key is not None:
                claims = jwt.decode(token, self._public_key, algorithms=["RS256"], leeway=60)
            else:
                claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        # GitHub refuses JWTs that live longer than ten minutes or have expired.
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int) or exp < time.time() - 60:
            return False
        return str(claims.get("iss")) == str(self.app_id) and exp - iat <= 660

    def _authorize(self, route: _Route, req: _Req) -> None:
        if route.auth == "none":
            return
        if route.auth == "jwt":
            if req.auth != "jwt":
                raise _fail(401, "A JSON web token could not be decoded")
            return
        if req.auth != "installation":
            raise _fail(401, "Bad credentials")
        if "owner" in req.params and "repo" in req.params:
            repo = self._repos.get(f"{req.params['owner']}/{req.params['repo']}".lower())
            if repo is None:
                raise _fail(404, "Not Found")
            if repo.installation_id != req.installation_id:
                if repo.private:
                    raise _fail(404, "Not Found")
                if route.write:
                    raise _fail(403, "Resource not accessible by integration")

    def _fault_reply(self, injection: Injection) -> _Reply:
        return _Reply(injection.status, injection.body, dict(injection.headers))

    def _write(
        self,
        h: _RequestHandler,
        reply: _Reply,
        request_headers: Mapping[str, str],
        auth: AuthKind,
        inst: int | None,
    ) -> None:
        if isinstance(reply.body, bytes):
            payload, ctype = reply.body, "application/octet-stream"
        elif isinstance(reply.body, str):
            payload, ctype = reply.body.encode(), "text/html; charset=utf-8"
        elif reply.body is None:
            payload, ctype = b"", "application/json; charset=utf-8"
        else:
            payload, ctype = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
        who = f"installation:{inst}" if auth == "installation" else auth
        with self._lock:
            used = self._rate_used[who] = self._rate_used.get(who, 0) + 1
        limit = 60 if auth in ("none", "invalid") else 5000
        headers = {
            "content-type": ctype,
            "x-github-request-id": "{}:{}:{}:{}:{}".format(
                *(secrets.token_hex(n).upper() for n in (2, 3, 3, 3, 4))
            ),
            "x-github-api-version-selected": request_headers.get(
                "x-github-api-version", "2022-11-28"
            ),
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(limit - used, 1)),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
            "x-content-type-options": "nosniff",
            **{k.lower(): v for k, v in reply.headers.items()},
        }
        h.send_response(reply.status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("content-length", str(len(payload)))
        h.send_header("connection", "close")
        h.end_headers()
        if payload and h.command != "HEAD":
            h.wfile.write(payload)

    def _page(self, req: _Req, items: list[Any]) -> _Reply:
        """A 200 reply with one page of ``items`` and GitHub's ``Link`` header."""
        per_page = min(max(_int(req.query.get("per_page"), 30), 1), 100)
        page = max(_int(req.query.get("page"), 1), 1)
        last = max(1, math.ceil(len(items) / per_page))
        links: list[str] = []

        def link(number: int, rel: str) -> None:
            query = {**req.query, "per_page": str(per_page), "page": str(number)}
            links.append(f'<{self._api}{req.path}?{urlencode(query)}>; rel="{rel}"')

        if page > 1:
            link(page - 1, "prev")
            link(1, "first")
        if page < last:
            link(page + 1, "next")
            link(last, "last")
        chunk = items[(page - 1) * per_page : page * per_page]
        return _Reply(200, chunk, {"link": ", ".join(links)} if links else {})

    # -- lookups ---------------------------------------------------------------------------

    def _get_repo(self, full_name: str) -> _Repo:
        repo = self._repos.get(full_name.lower())
        if repo is None:
            raise KeyError(f"no repository {full_name!r}")
        return repo

    def _repo(self, req: _Req) -> _Repo:
        repo = self._repos.get(f"{req.params['owner']}/{req.params['repo']}".lower())
        if repo is None:
            raise _fail(404, "Not Found")
        return repo

    def _user_id(self, login: str, kind: str = "User") -> int:
        if login not in self._users:
            self._users[login] = (next(self._ids), kind)
        return self._users[login][0]

    def _next_number(self, repo: _Repo) -> int:
        return max(repo.issues, default=0) + 1

    def _number(self, req: _Req, repo: _Repo, key: str = "number") -> _Issue:
        raw = req.params[key]
        if not raw.isdigit() or int(raw) not in repo.issues:
            raise _fail(404, "Not Found")
        return repo.issues[int(raw)]

    def _role(self, repo: _Repo, user: str) -> str:
        return repo.roles.get(user, "none" if repo.private else "read")

    def _association(self, repo: _Repo, user: str) -> str:
        if user == repo.owner:
            return "OWNER"
        if user in repo.roles and repo.roles[user] != "none":
            return "COLLABORATOR"
        return "NONE"

    # -- JSON builders ---------------------------------------------------------------------

    def _user_json(self, login: str) -> dict[str, Any]:
        uid, kind = self._users.get(login) or (self._user_id(login), "User")
        api = f"{self._api}/users/{login}"
        html = (
            f"{HTML_URL}/apps/{self.app_slug}" if login == self.bot_login else f"{HTML_URL}/{login}"
        )
        return {
            "login": login,
            "id": uid,
            "node_id": f"{'BOT' if kind == 'Bot' else 'U'}_kgDO{uid:08d}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "gravatar_id": "",
            "url": api,
            "html_url": html,
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": kind,
            "user_view_type": "public",
            "site_admin": False,
        }

    def _integration_json(self) -> dict[str, Any]:
        stamp = _iso(self._created_at)
        return {
            "id": self.app_id,
            "slug": self.app_slug,
            "node_id": f"A_kwDO{self.app_id:08d}",
            "client_id": f"Iv1.{self.app_id:016x}",
            "owner": self._user_json(self.app_owner),
            "name": self.app_name,
            "description": "Turns a labeled issue into a pull request.",
            "external_url": "https://example.com/tdd-agent",
            "html_url": f"{HTML_URL}/apps/{self.app_slug}",
            "created_at": stamp,
            "updated_at": stamp,
            "permissions": dict(APP_PERMISSIONS),
            "events": list(APP_EVENTS),
            "installations_count": len(self._installations),
        }

    def _installation_json(self, inst: int) -> dict[str, Any]:
        account = self._installations[inst]
        stamp = _iso(self._created_at)
        return {
            "id": inst,
            "account": self._user_json(account),
            "repository_selection": "all",
            "access_tokens_url": f"{self._api}/app/installations/{inst}/access_tokens",
            "repositories_url": f"{self._api}/installation/repositories",
            "html_url": f"{HTML_URL}/settings/installations/{inst}",
            "app_id": self.app_id,
            "app_slug": self.app_slug,
            "target_id": self._user_id(account),
            "target_type": self._users[account][1],
            "permissions": dict(APP_PERMISSIONS),
            "events": list(APP_EVENTS),
            "created_at": stamp,
            "updated_at": stamp,
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "suspended_by": None,
            "suspended_at": None,
        }

    def _repo_json(self, repo: _Repo) -> dict[str, Any]:
        full = repo.full_name
        base = f"{self._api}/repos/{full}"
        stamp = _iso(repo.created_at)
        open_issues = sum(1 for i in repo.issues.values() if i.state == "open")
        return {
            "id": repo.id,
            "node_id": f"R_kgDO{repo.id:08d}",
            "name": repo.name,
            "full_name": full,
            "owner": self._user_json(repo.owner),
            "private": repo.private,
            "html_url": f"{HTML_URL}/{full}",
            "description": None,
            "fork": False,
            "url": base,
            "archive_url": f"{base}/{{archive_format}}{{/ref}}",
            "assignees_url": f"{base}/assignees{{/user}}",
            "blobs_url": f"{base}/git/blobs{{/sha}}",
            "branches_url": f"{base}/branches{{/branch}}",
            "collaborators_url": f"{base}/collaborators{{/collaborator}}",
            "comments_url": f"{base}/comments{{/number}}",
            "commits_url": f"{base}/commits{{/sha}}",
            "compare_url": f"{base}/compare/{{base}}...{{head}}",
            "contents_url": f"{base}/contents/{{+path}}",
            "contributors_url": f"{base}/contributors",
            "deployments_url": f"{base}/deployments",
            "downloads_url": f"{base}/downloads",
            "events_url": f"{base}/events",
            "forks_url": f"{base}/forks",
            "git_commits_url": f"{base}/git/commits{{/sha}}",
            "git_refs_url": f"{base}/git/refs{{/sha}}",
            "git_tags_url": f"{base}/git/tags{{/sha}}",
            "git_url": f"git://github.com/{full}.git",
            "issue_comment_url": f"{base}/issues/comments{{/number}}",
            "issue_events_url": f"{base}/issues/events{{/number}}",
            "issues_url": f"{base}/issues{{/number}}",
            "keys_url": f"{base}/keys{{/key_id}}",
            "labels_url": f"{base}/labels{{/name}}",
            "languages_url": f"{base}/languages",
            "merges_url": f"{base}/merges",
            "milestones_url": f"{base}/milestones{{/number}}",
            "notifications_url": f"{base}/notifications{{?since,all,participating}}",
            "pulls_url": f"{base}/pulls{{/number}}",
            "releases_url": f"{base}/releases{{/id}}",
            "ssh_url": f"git@github.com:{full}.git",
            "stargazers_url": f"{base}/stargazers",
            "statuses_url": f"{base}/statuses/{{sha}}",
            "subscribers_url": f"{base}/subscribers",
            "subscription_url": f"{base}/subscription",
            "tags_url": f"{base}/tags",
            "teams_url": f"{base}/teams",
            "trees_url": f"{base}/git/trees{{/sha}}",
            "clone_url": f"{HTML_URL}/{full}.git",
            "mirror_url": None,
            "hooks_url": f"{base}/hooks",
            "svn_url": f"{HTML_URL}/{full}",
            "homepage": None,
            "language": "Python",
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "size": sum(len(b) for b in repo.blobs.values()) // 1024,
            "default_branch": repo.default_branch,
            "open_issues_count": open_issues,
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": True,
            "has_wiki": True,
            "has_pages": False,
            "has_downloads": True,
            "has_discussions": False,
            "archived": False,
            "disabled": False,
            "visibility": "private" if repo.private else "public",
            "pushed_at": stamp,
            "created_at": stamp,
            "updated_at": stamp,
            "allow_forking": True,
            "web_commit_signoff_required": False,
            "subscribers_count": 0,
            "network_count": 0,
            "license": None,
            "forks": 0,
            "open_issues": open_issues,
            "watchers": 0,
        }

    def _ref_json(self, repo: _Repo, name: str) -> dict[str, Any]:
        base = f"{self._api}/repos/{repo.full_name}/git"
        sha = repo.refs[name]
        return {
            "ref": name,
            "node_id": "REF_" + base64.b64encode(f"{repo.id}:{name}".encode()).decode(),
            "url": f"{base}/{name}",
            "object": {"type": "commit", "sha": sha, "url": f"{base}/commits/{sha}"},
        }

    def _commit_json(self, repo: _Repo, sha: str) -> dict[str, Any]:
        c = repo.commits[sha]
        base = f"{self._api}/repos/{repo.full_name}/git"
        if c.verified:
            verification = {
                "verified": True,
                "reason": "valid",
                "signature": "-----BEGIN PGP SIGNATURE-----\n\nfake\n-----END PGP SIGNATURE-----\n",
                "payload": f"tree {c.tree}\n\n{c.message}",
                "verified_at": c.committer["date"],
            }
        else:
            verification = {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            }
        return {
            "sha": sha,
            "node_id": f"C_kwDO{sha[:16]}",
            "url": f"{base}/commits/{sha}",
            "html_url": f"{HTML_URL}/{repo.full_name}/commit/{sha}",
            "author": dict(c.author),
            "committer": dict(c.committer),
            "tree": {"sha": c.tree, "url": f"{base}/trees/{c.tree}"},
            "message": c.message,
            "parents": [
                {
                    "sha": p,
                    "url": f"{base}/commits/{p}",
                    "html_url": f"{HTML_URL}/{repo.full_name}/commit/{p}",
                }
                for p in c.parents
            ],
            "verification": verification,
        }

    def _tree_json(self, repo: _Repo, sha: str, *, recursive: bool) -> dict[str, Any]:
        base = f"{self._api}/repos/{repo.full_name}/git"
        items: list[dict[str, Any]] = []

        def walk(tree_sha: str, prefix: str) -> None:
            for e in repo.trees[tree_sha]:
                item: dict[str, Any] = {
                    "path": prefix + e.name,
                    "mode": e.mode,
                    "type": e.type,
                    "sha": e.sha,
                }
                if e.type == "blob":
                    item["size"] = len(repo.blobs[e.sha])
                    item["url"] = f"{base}/blobs/{e.sha}"
                elif e.type == "tree":
                    item["url"] = f"{base}/trees/{e.sha}"
                items.append(item)
                if recursive and e.type == "tree":
                    walk(e.sha, prefix + e.name + "/")

        walk(sha, "")
        return {"sha": sha, "url": f"{base}/trees/{sha}", "tree": items, "truncated": False}

    def _label_json(self, repo: _Repo, name: str) -> dict[str, Any]:
        digest = int(hashlib.sha1(f"{repo.id}:{name}".encode()).hexdigest()[:8], 16)
        return {
            "id": digest,
            "node_id": f"LA_kwDO{digest:08d}",
            "url": f"{self._api}/repos/{repo.full_name}/labels/{name}",
            "name": name,
            "color": "ededed",
            "default": False,
            "description": None,
            # githubkit 0.16.1's PullRequest label model requires this key (always null).
            "archived_by": None,
        }

    def _rollup_json(self, repo: _Repo, subject: tuple[str, int], url: str) -> dict[str, Any]:
        counts = dict.fromkeys(REACTION_CONTENTS, 0)
        for r in repo.reactions:
            if r.subject == subject:
                counts[r.content] += 1
        return {"url": f"{url}/reactions", "total_count": sum(counts.values()), **counts}

    def _issue_json(self, repo: _Repo, issue: _Issue) -> dict[str, Any]:
        base = f"{self._api}/repos/{repo.full_name}"
        url = f"{base}/issues/{issue.number}"
        kind = "pull" if issue.pull else "issues"
        data: dict[str, Any] = {
            "id": issue.id,
            "node_id": f"I_kwDO{issue.id:08d}",
            "url": url,
            "repository_url": base,
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": f"{HTML_URL}/{repo.full_name}/{kind}/{issue.number}",
            "number": issue.number,
            "state": issue.state,
            "state_reason": "completed" if issue.state == "closed" else None,
            "title": issue.title,
            "body": issue.body,
            "user": self._user_json(issue.user),
            "labels": [self._label_json(repo, n) for n in issue.labels],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": sum(1 for c in repo.comments.values() if c.number == issue.number),
            "closed_at": _iso(issue.closed_at) if issue.closed_at else None,
            "created_at": _iso(issue.created_at),
            "updated_at": _iso(issue.updated_at),
            "closed_by": None,
            "author_association": self._association(repo, issue.user),
            "timeline_url": f"{url}/timeline",
            "performed_via_github_app": None,
            "reactions": self._rollup_json(repo, ("issue", issue.number), url),
        }
        if issue.pull:
            pull_url = f"{base}/pulls/{issue.number}"
            html = f"{HTML_URL}/{repo.full_name}/pull/{issue.number}"
            data["draft"] = issue.pull.draft
            data["pull_request"] = {
                "url": pull_url,
                "html_url": html,
                "diff_url": f"{html}.diff",
                "patch_url": f"{html}.patch",
                "merged_at": None,
            }
        return data

    def _comment_json(self, repo: _Repo, c: _Comment) -> dict[str, Any]:
        base = f"{self._api}/repos/{repo.full_name}"
        url = f"{base}/issues/comments/{c.id}"
        kind = "pull" if repo.issues[c.number].pull else "issues"
        return {
            "id": c.id,
            "node_id": f"IC_kwDO{c.id:08d}",
            "url": url,
            "html_url": f"{HTML_URL}/{repo.full_name}/{kind}/{c.number}#issuecomment-{c.id}",
            "body": c.body,
            "user": self._user_json(c.user),
            "created_at": _iso(c.created_at),
            "updated_at": _iso(c.updated_at),
            "issue_url": f"{base}/issues/{c.number}",
            "author_association": self._association(repo, c.user),
            "performed_via_github_app": (
                self._integration_json() if c.user == self.bot_login else None
            ),
            "reactions": self._rollup_json(repo, ("comment", c.id), url),
        }

    def _reaction_json(self, r: _Reaction) -> dict[str, Any]:
        return {
            "id": r.id,
            "node_id": f"REA_lAHO{r.id:08d}",
            "user": self._user_json(r.user),
            "content": r.content,
            "created_at": _iso(r.created_at),
        }

    def _pull_head_sha(self, repo: _Repo, pull: _Pull) -> str:
        # An open PR follows its branch; a deleted branch leaves the last known SHA.
        sha = repo.refs.get(f"refs/heads/{pull.head}")
        if sha is not None:
            pull.head_sha = sha
        return pull.head_sha

    def _pull_json(self, repo: _Repo, issue: _Issue, *, simple: bool = False) -> dict[str, Any]:
        pull = issue.pull
        assert pull is not None
        base = f"{self._api}/repos/{repo.full_name}"
        url = f"{base}/pulls/{issue.number}"
        html = f"{HTML_URL}/{repo.full_name}/pull/{issue.number}"
        head_sha = self._pull_head_sha(repo, pull)
        base_sha = repo.refs.get(f"refs/heads/{pull.base}", head_sha)
        repo_json = self._repo_json(repo)
        owner_json = self._user_json(repo.owner)
        issue_url = f"{base}/issues/{issue.number}"
        data: dict[str, Any] = {
            "url": url,
            "id": pull.id,
            "node_id": f"PR_kwDO{pull.id:08d}",
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": issue_url,
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "review_comment_url": f"{base}/pulls/comments{{/number}}",
            "comments_url": f"{issue_url}/comments",
            "statuses_url": f"{base}/statuses/{head_sha}",
            "number": issue.number,
            "state": issue.state,
            "locked": False,
            "title": issue.title,
            "user": self._user_json(issue.user),
            "body": issue.body,
            "labels": [self._label_json(repo, n) for n in issue.labels],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": _iso(issue.created_at),
            "updated_at": _iso(issue.updated_at),
            "closed_at": _iso(issue.closed_at) if issue.closed_at else None,
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{repo.owner}:{pull.head}",
                "ref": pull.head,
                "sha": head_sha,
                "user": owner_json,
                "repo": repo_json,
            },
            "base": {
                "label": f"{repo.owner}:{pull.base}",
                "ref": pull.base,
                "sha": base_sha,
                "user": owner_json,
                "repo": repo_json,
            },
            "_links": {
                "self": {"href": url},
                "html": {"href": html},
                "issue": {"href": issue_url},
                "comments": {"href": f"{issue_url}/comments"},
                "review_comments": {"href": f"{url}/comments"},
                "review_comment": {"href": f"{base}/pulls/comments{{/number}}"},
                "commits": {"href": f"{url}/commits"},
                "statuses": {"href": f"{base}/statuses/{head_sha}"},
            },
            "author_association": self._association(repo, issue.user),
            "auto_merge": None,
            "draft": pull.draft,
        }
        if simple:
            return data
        commits, additions, deletions, changed = self._diff_stats(repo, base_sha, head_sha)
        data.update(
            {
                "merged": False,
                "mergeable": None,
                "rebaseable": None,
                "mergeable_state": "unknown",
                "merged_by": None,
                "comments": sum(1 for c in repo.comments.values() if c.number == issue.number),
                "review_comments": 0,
                "maintainer_can_modify": pull.maintainer_can_modify,
                "commits": commits,
                "additions": additions,
                "deletions": deletions,
                "changed_files": changed,
            }
        )
        return data

    def _diff_stats(self, repo: _Repo, base_sha: str, head_sha: str) -> tuple[int, int, int, int]:
        """Commits, additions, deletions and changed files of head against the merge base."""
        base_history = set(self._ancestors(repo, base_sha))
        head_history = self._ancestors(repo, head_sha)
        merge_base = next((s for s in head_history if s in base_history), base_sha)
        commits = sum(1 for s in head_history if s not in base_history)
        old = self._flatten(repo, repo.commits[merge_base].tree)
        new = self._flatten(repo, repo.commits[head_sha].tree)
        additions = deletions = changed = 0
        for path in old.keys() | new.keys():
            a, b = old.get(path), new.get(path)
            if a == b:
                continue
            changed += 1
            before = repo.blobs[a[2]].decode(errors="replace").splitlines() if a else []
            after = repo.blobs[b[2]].decode(errors="replace").splitlines() if b else []
            for line in difflib.unified_diff(before, after, lineterm="", n=0):
                if line.startswith(("+++", "---")):
                    continue
                additions += line.startswith("+")
                deletions += line.startswith("-")
        return commits, additions, deletions, changed

    def _check_run_json(self, repo: _Repo, run: _CheckRun) -> dict[str, Any]:
        base = f"{self._api}/repos/{repo.full_name}"
        html = f"{HTML_URL}/{repo.full_name}/runs/{run.id}"
        pulls = [
            {
                "id": i.pull.id,
                "number": i.number,
                "url": f"{base}/pulls/{i.number}",
                "head": {
                    "ref": i.pull.head,
                    "sha": self._pull_head_sha(repo, i.pull),
                    "repo": {"id": repo.id, "url": base, "name": repo.name},
                },
                "base": {
                    "ref": i.pull.base,
                    "sha": repo.refs.get(f"refs/heads/{i.pull.base}", ""),
                    "repo": {"id": repo.id, "url": base, "name": repo.name},
                },
            }
            for i in repo.issues.values()
            if i.pull and i.state == "open" and self._pull_head_sha(repo, i.pull) == run.head_sha
        ]
        return {
            "id": run.id,
            "head_sha": run.head_sha,
            "node_id": f"CR_kwDO{run.id:08d}",
            "external_id": run.external_id or "",
            "url": f"{base}/check-runs/{run.id}",
            "html_url": html,
            "details_url": run.details_url or html,
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": _iso(run.started_at) if run.started_at else None,
            "completed_at": _iso(run.completed_at) if run.completed_at else None,
            "output": {
                "title": run.output.get("title"),
                "summary": run.output.get("summary"),
                "text": run.output.get("text"),
                "annotations_count": 0,
                "annotations_url": f"{base}/check-runs/{run.id}/annotations",
            },
            "name": run.name,
            "check_suite": {"id": run.suite_id},
            "app": self._integration_json(),
            "pull_requests": pulls,
        }

    # -- routes ----------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        r = "/repos/{owner}/{repo}"
        table: list[tuple[str, str, Literal["jwt", "installation", "none"], bool, Handler]] = [
            ("GET", "/app", "jwt", False, self._get_app),
            ("POST", "/app/installations/{id}/access_tokens", "jwt", False, self._create_token),
            ("GET", f"{r}/installation", "jwt", False, self._get_repo_installation),
            ("POST", "/app-manifests/{code}/conversions", "none", False, self._convert_manifest),
            ("GET", r, "installation", False, self._get_repository),
            ("GET", f"{r}/contents/{{path:path}}", "installation", False, self._get_content),
            ("GET", f"{r}/contents", "installation", False, self._get_content),
            ("GET", f"{r}/git/ref/{{ref:path}}", "installation", False, self._get_ref),
            ("GET", f"{r}/git/matching-refs/{{ref:path}}", "installation", False, self._match_refs),
            ("POST", f"{r}/git/refs", "installation", True, self._create_ref),
            ("PATCH", f"{r}/git/refs/{{ref:path}}", "installation", True, self._update_ref),
            ("POST", f"{r}/git/blobs", "installation", True, self._create_blob),
            ("GET", f"{r}/git/blobs/{{sha}}", "installation", False, self._get_blob),
            ("POST", f"{r}/git/trees", "installation", True, self._create_tree),
            ("GET", f"{r}/git/trees/{{sha}}", "installation", False, self._get_tree),
            ("POST", f"{r}/git/commits", "installation", True, self._create_commit),
            ("GET", f"{r}/git/commits/{{sha}}", "installation", False, self._get_commit),
            ("GET", f"{r}/pulls", "installation", False, self._list_pulls),
            ("POST", f"{r}/pulls", "installation", True, self._post_pull),
            ("GET", f"{r}/pulls/{{number}}", "installation", False, self._get_pull),
            ("PATCH", f"{r}/pulls/{{number}}", "installation", True, self._patch_pull),
            ("GET", f"{r}/issues/comments/{{id}}", "installation", False, self._get_comment),
            ("PATCH", f"{r}/issues/comments/{{id}}", "installation", True, self._patch_comment),
            (
                "POST",
                f"{r}/issues/comments/{{id}}/reactions",
                "installation",
                True,
                self._react_to_comment,
            ),
            ("GET", f"{r}/issues/{{number}}", "installation", False, self._get_issue),
            ("GET", f"{r}/issues/{{number}}/comments", "installation", False, self._list_comments),
            ("POST", f"{r}/issues/{{number}}/comments", "installation", True, self._post_comment),
            (
                "POST",
                f"{r}/issues/{{number}}/reactions",
                "installation",
                True,
                self._react_to_issue,
            ),
            ("POST", f"{r}/check-runs", "installation", True, self._create_check_run),
            ("GET", f"{r}/check-runs/{{id}}", "installation", False, self._get_check_run),
            ("PATCH", f"{r}/check-runs/{{id}}", "installation", True, self._update_check_run),
            (
                "GET",
                f"{r}/commits/{{ref:path}}/check-runs",
                "installation",
                False,
                self._list_check_runs,
            ),
            (
                "GET",
                f"{r}/collaborators/{{username}}/permission",
                "installation",
                False,
                self._get_permission,
            ),
        ]
        return [_Route(m, compile_path(p), a, w, h) for m, p, a, w, h in table]

    # apps

    def _get_app(self, req: _Req) -> _Reply:
        return _Reply(200, self._integration_json())

    def _create_token(self, req: _Req) -> _Reply:
        raw = req.params["id"]
        if not raw.isdigit() or int(raw) not in self._installations:
            raise _fail(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b")[:36]
        self._tokens[token] = int(raw)
        body = {
            "token": token,
            "expires_at": self._token_expires_at,
            "permissions": dict(APP_PERMISSIONS),
            "repository_selection": "all",
        }
        return _Reply(201, body)

    def _get_repo_installation(self, req: _Req) -> _Reply:
        return _Reply(200, self._installation_json(self._repo(req).installation_id))

    def _convert_manifest(self, req: _Req) -> _Reply:
        # Codes are single-use on GitHub; a replayed code is unknown.
        payload = self._manifest_codes.pop(req.params["code"], None)
        if payload is None:
            raise _fail(404, "Not Found")
        return _Reply(201, payload)

    # repository and contents

    def _get_repository(self, req: _Req) -> _Reply:
        return _Reply(200, self._repo_json(self._repo(req)))

    def _get_content(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        ref = req.query.get("ref") or repo.default_branch
        sha = self._resolve(repo, ref)
        if sha is None:
            raise _fail(404, f"No commit found for the ref {ref}")
        path = req.params.get("path", "").strip("/")
        flat = self._flatten(repo, repo.commits[sha].tree)
        base = f"{self._api}/repos/{repo.full_name}"

        def item(p: str, kind: str, obj_sha: str, size: int) -> dict[str, Any]:
            url = f"{base}/contents/{p}?ref={ref}"
            git_url = f"{base}/git/{'trees' if kind == 'dir' else 'blobs'}/{obj_sha}"
            html = f"{HTML_URL}/{repo.full_name}/{'tree' if kind == 'dir' else 'blob'}/{ref}/{p}"
            raw_url = f"https://raw.githubusercontent.com/{repo.full_name}/{ref}/{p}"
            return {
                "type": kind,
                "size": size,
                "name": p.rsplit("/", 1)[-1],
                "path": p,
                "sha": obj_sha,
                "url": url,
                "git_url": git_url,
                "html_url": html,
                "download_url": raw_url if kind == "file" else None,
                "_links": {"self": url, "git": git_url, "html": html},
            }

        if path in flat:
            _, _, blob_sha = flat[path]
            data = repo.blobs[blob_sha]
            body = item(path, "file", blob_sha, len(data))
            body.update({"encoding": "base64", "content": _b64_lines(data)})
            return _Reply(200, body)
        tree_sha = repo.commits[sha].tree
        for part in [p for p in path.split("/") if p]:
            entry = next((e for e in repo.trees[tree_sha] if e.name == part), None)
            if entry is None or entry.type != "tree":
                raise _fail(404, "Not Found")
            tree_sha = entry.sha
        listing = [
            item(
                f"{path}/{e.name}" if path else e.name,
                "dir" if e.type == "tree" else "file",
                e.sha,
                len(repo.blobs[e.sha]) if e.type == "blob" else 0,
            )
            for e in repo.trees[tree_sha]
        ]
        return _Reply(200, listing)

    # git data

    def _get_ref(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        name = "refs/" + req.params["ref"]
        if name not in repo.refs:
            raise _fail(404, "Not Found")
        return _Reply(200, self._ref_json(repo, name))

    def _match_refs(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        prefix = "refs/" + req.params["ref"]
        return _Reply(
            200, [self._ref_json(repo, n) for n in sorted(repo.refs) if n.startswith(prefix)]
        )

    def _create_ref(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        name, sha = body.get("ref"), body.get("sha")
        if not isinstance(name, str) or not name.startswith("refs/") or name.count("/") < 2:
            raise _fail(
                422, "Reference name must start with 'refs/' and have at least two slashes."
            )
        if not isinstance(sha, str) or sha not in repo.commits:
            raise _fail(422, "Object does not exist")
        if name in repo.refs:
            raise _fail(422, "Reference already exists")
        repo.refs[name] = sha
        headers = {"location": f"{self._api}/repos/{repo.full_name}/git/{name}"}
        return _Reply(201, self._ref_json(repo, name), headers)

    def _update_ref(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        name = "refs/" + req.params["ref"]
        sha = body.get("sha")
        if name not in repo.refs:
            raise _fail(422, "Reference does not exist")
        if not isinstance(sha, str) or sha not in repo.commits:
            raise _fail(422, "Object does not exist")
        fast_forward = repo.refs[name] in self._ancestors(repo, sha)
        if not fast_forward and not body.get("force"):
            raise _fail(422, "Update is not a fast forward")
        repo.refs[name] = sha
        return _Reply(200, self._ref_json(repo, name))

    def _create_blob(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        content, encoding = body.get("content"), body.get("encoding", "utf-8")
        if not isinstance(content, str):
            raise _invalid("Blob", "content", "missing_field")
        if encoding in ("utf-8", "utf8"):
            data = content.encode()
        elif encoding == "base64":
            try:
                data = base64.b64decode(content)
            except ValueError as e:
                raise _invalid("Blob", "content", "invalid") from e
        else:
            raise _fail(422, f"encoding must be either 'utf-8' or 'base64'; got {encoding!r}")
        sha = self._write_blob(repo, data)
        url = f"{self._api}/repos/{repo.full_name}/git/blobs/{sha}"
        return _Reply(201, {"sha": sha, "url": url}, {"location": url})

    def _get_blob(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        sha = req.params["sha"]
        if sha not in repo.blobs:
            raise _fail(404, "Not Found")
        data = repo.blobs[sha]
        return _Reply(
            200,
            {
                "sha": sha,
                "node_id": f"B_kwDO{sha[:16]}",
                "size": len(data),
                "url": f"{self._api}/repos/{repo.full_name}/git/blobs/{sha}",
                "content": _b64_lines(data),
                "encoding": "base64",
            },
        )

    def _create_tree(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        entries = body.get("tree")
        if not isinstance(entries, list):
            raise _invalid("Tree", "tree", "missing_field")
        flat: dict[str, tuple[str, str, str]] = {}
        base_tree = body.get("base_tree")
        if base_tree is not None:
            if base_tree not in repo.trees:
                raise _fail(422, "base_tree is not a valid tree oid")
            flat = self._flatten(repo, base_tree)
        for entry in entries:
            path = str(entry.get("path") or "").strip("/")
            mode, kind = entry.get("mode", "100644"), entry.get("type", "blob")
            if not path:
                raise _fail(422, "tree.path is missing")
            if "sha" in entry and entry["sha"] is None and "content" not in entry:
                removed = [k for k in flat if k == path or k.startswith(path + "/")]
                if not removed:
                    raise _fail(422, "GitRPC::BadObjectState")
                for key in removed:
                    del flat[key]
            elif isinstance(entry.get("content"), str):
                sha = self._write_blob(repo, entry["content"].encode())
                self._put_flat(flat, path, (mode, "blob", sha))
            elif kind == "tree" and entry.get("sha") in repo.trees:
                for sub, value in self._flatten(repo, entry["sha"]).items():
                    self._put_flat(flat, f"{path}/{sub}", value)
            elif kind == "blob" and entry.get("sha") in repo.blobs:
                self._put_flat(flat, path, (mode, "blob", entry["sha"]))
            else:
                raise _fail(422, f"tree.sha {entry.get('sha')} is not a valid {kind}")
        sha = self._tree_from_flat(repo, flat)
        url = f"{self._api}/repos/{repo.full_name}/git/trees/{sha}"
        return _Reply(201, self._tree_json(repo, sha, recursive=False), {"location": url})

    def _get_tree(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        sha = req.params["sha"]
        # GitHub also accepts a commit SHA or branch name and shows its root tree.
        if sha not in repo.trees:
            commit = self._resolve(repo, sha)
            if commit is None:
                raise _fail(404, "Not Found")
            sha = repo.commits[commit].tree
        recursive = req.query.get("recursive") not in (None, "", "0", "false")
        return _Reply(200, self._tree_json(repo, sha, recursive=recursive))

    def _create_commit(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        message, tree = body.get("message"), body.get("tree")
        parents = body.get("parents") or []
        if not isinstance(message, str):
            raise _invalid("Commit", "message", "missing_field")
        if tree not in repo.trees:
            raise _fail(422, "Tree SHA does not exist")
        for parent in parents:
            if parent not in repo.commits:
                raise _fail(422, "Parent SHA does not exist or is not a commit object")
        bot = {
            "name": self.bot_login,
            "email": f"{self._user_id(self.bot_login)}+{self.bot_login}@users.noreply.github.com",
        }
        author = body.get("author") or None
        committer = body.get("committer") or author
        # Without author or committer GitHub commits and signs as the app.
        sha = self._write_commit(
            repo,
            tree,
            list(parents),
            message,
            author or bot,
            committer or bot,
            verified=author is None and committer is None,
        )
        url = f"{self._api}/repos/{repo.full_name}/git/commits/{sha}"
        return _Reply(201, self._commit_json(repo, sha), {"location": url})

    def _get_commit(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        if req.params["sha"] not in repo.commits:
            raise _fail(404, "Not Found")
        return _Reply(200, self._commit_json(repo, req.params["sha"]))

    # pulls

    def _list_pulls(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        state = req.query.get("state", "open")
        head = req.query.get("head")
        base = req.query.get("base")
        found = []
        for issue in repo.issues.values():
            if issue.pull is None or (state != "all" and issue.state != state):
                continue
            # GitHub ignores a head filter without the "owner:" prefix.
            if head and ":" in head and head != f"{repo.owner}:{issue.pull.head}":
                continue
            if base and base != issue.pull.base:
                continue
            found.append(issue)
        reverse = req.query.get("direction", "desc") == "desc"
        found.sort(key=lambda i: i.number, reverse=reverse)
        return self._page(req, [self._pull_json(repo, i, simple=True) for i in found])

    def _post_pull(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        head, base = body.get("head"), body.get("base")
        if not isinstance(head, str):
            raise _invalid("PullRequest", "head", "missing_field")
        if not isinstance(base, str):
            raise _invalid("PullRequest", "base", "missing_field")
        owner, _, branch = head.rpartition(":")
        if owner and owner.lower() != repo.owner.lower():
            raise _invalid("PullRequest", "head", "invalid")
        issue = self._create_pull(
            repo,
            title=body.get("title"),
            head=branch,
            base=base,
            body=body.get("body"),
            draft=bool(body.get("draft")),
            user=self.bot_login,
            maintainer_can_modify=bool(body.get("maintainer_can_modify", False)),
        )
        url = f"{self._api}/repos/{repo.full_name}/pulls/{issue.number}"
        return _Reply(201, self._pull_json(repo, issue), {"location": url})

    def _create_pull(
        self,
        repo: _Repo,
        *,
        title: Any,
        head: str,
        base: str,
        body: Any,
        draft: bool,
        user: str,
        maintainer_can_modify: bool,
    ) -> _Issue:
        if not isinstance(title, str) or not title:
            raise _invalid("PullRequest", "title", "missing_field")
        head_sha = repo.refs.get(f"refs/heads/{head}")
        if head_sha is None:
            raise _invalid("PullRequest", "head", "invalid")
        base_sha = repo.refs.get(f"refs/heads/{base}")
        if base_sha is None:
            raise _invalid("PullRequest", "base", "invalid")
        _check_body_length("PullRequest", body)
        for other in repo.issues.values():
            if (
                other.pull
                and other.state == "open"
                and other.pull.head == head
                and other.pull.base == base
            ):
                message = f"A pull request already exists for {repo.owner}:{head}."
                raise _invalid("PullRequest", None, "custom", message)
        if head_sha in self._ancestors(repo, base_sha):
            raise _invalid("PullRequest", None, "custom", f"No commits between {base} and {head}")
        now = self._clock()
        number = self._next_number(repo)
        issue = _Issue(
            number=number,
            id=next(self._ids),
            title=title,
            body=body,
            user=user,
            labels=[],
            state="open",
            created_at=now,
            updated_at=now,
            pull=_Pull(next(self._ids), head, base, draft, maintainer_can_modify, head_sha),
        )
        repo.issues[number] = issue
        return issue

    def _pull_issue(self, req: _Req) -> tuple[_Repo, _Issue]:
        repo = self._repo(req)
        issue = self._number(req, repo)
        if issue.pull is None:
            raise _fail(404, "Not Found")
        return repo, issue

    def _get_pull(self, req: _Req) -> _Reply:
        repo, issue = self._pull_issue(req)
        return _Reply(200, self._pull_json(repo, issue))

    def _patch_pull(self, req: _Req) -> _Reply:
        repo, issue = self._pull_issue(req)
        assert issue.pull is not None
        body = req.json()
        if "body" in body:
            _check_body_length("PullRequest", body["body"])
        if "state" in body and body["state"] not in ("open", "closed"):
            raise _invalid("PullRequest", "state", "invalid")
        if "base" in body and f"refs/heads/{body['base']}" not in repo.refs:
            raise _invalid("PullRequest", "base", "invalid")
        if "title" in body:
            issue.title = body["title"]
        if "body" in body:
            issue.body = body["body"]
        if "base" in body:
            issue.pull.base = body["base"]
        if "maintainer_can_modify" in body:
            issue.pull.maintainer_can_modify = bool(body["maintainer_can_modify"])
        if "state" in body and body["state"] != issue.state:
            issue.state = body["state"]
            issue.closed_at = self._clock() if issue.state == "closed" else None
        issue.updated_at = self._clock()
        return _Reply(200, self._pull_json(repo, issue))

    # issues, comments, reactions

    def _get_issue(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        return _Reply(200, self._issue_json(repo, self._number(req, repo)))

    def _list_comments(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        issue = self._number(req, repo)
        found = [
            self._comment_json(repo, c) for c in repo.comments.values() if c.number == issue.number
        ]
        return self._page(req, found)

    def _post_comment(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        issue = self._number(req, repo)
        body = req.json().get("body")
        if not isinstance(body, str) or not body:
            raise _invalid("IssueComment", "body", "missing_field")
        _check_body_length("IssueComment", body)
        comment = self._create_comment(repo, issue.number, body, self.bot_login)
        url = f"{self._api}/repos/{repo.full_name}/issues/comments/{comment.id}"
        return _Reply(201, self._comment_json(repo, comment), {"location": url})

    def _create_comment(self, repo: _Repo, number: int, body: str, user: str) -> _Comment:
        now = self._clock()
        comment = _Comment(next(self._ids), number, body, user, now, now)
        repo.comments[comment.id] = comment
        repo.issues[number].updated_at = now
        return comment

    def _comment(self, req: _Req) -> tuple[_Repo, _Comment]:
        repo = self._repo(req)
        raw = req.params["id"]
        if not raw.isdigit() or int(raw) not in repo.comments:
            raise _fail(404, "Not Found")
        return repo, repo.comments[int(raw)]

    def _get_comment(self, req: _Req) -> _Reply:
        repo, comment = self._comment(req)
        return _Reply(200, self._comment_json(repo, comment))

    def _patch_comment(self, req: _Req) -> _Reply:
        repo, comment = self._comment(req)
        body = req.json().get("body")
        if not isinstance(body, str) or not body:
            raise _invalid("IssueComment", "body", "missing_field")
        _check_body_length("IssueComment", body)
        comment.body = body
        comment.updated_at = self._clock()
        return _Reply(200, self._comment_json(repo, comment))

    def _react(self, req: _Req, repo: _Repo, subject: tuple[str, int]) -> _Reply:
        content = req.json().get("content")
        if content not in REACTION_CONTENTS:
            raise _invalid("Reaction", "content", "invalid")
        for existing in repo.reactions:
            if (existing.subject, existing.content, existing.user) == (
                subject,
                content,
                self.bot_login,
            ):
                return _Reply(200, self._reaction_json(existing))
        reaction = _Reaction(next(self._ids), content, self.bot_login, subject, self._clock())
        repo.reactions.append(reaction)
        return _Reply(201, self._reaction_json(reaction))

    def _react_to_issue(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        return self._react(req, repo, ("issue", self._number(req, repo).number))

    def _react_to_comment(self, req: _Req) -> _Reply:
        repo, comment = self._comment(req)
        return self._react(req, repo, ("comment", comment.id))

    # check runs

    def _apply_check_fields(self, run: _CheckRun, body: Mapping[str, Any]) -> None:
        output = body.get("output")
        if output is not None:
            if not isinstance(output, dict) or not output.get("title") or "summary" not in output:
                raise _fail(422, 'Invalid request.\n\n"title", "summary" weren\'t supplied.')
            for key in ("summary", "text"):
                value = output.get(key)
                if isinstance(value, str) and len(value) > MAX_CHECK_OUTPUT_CHARS:
                    raise _fail(
                        422,
                        f"Invalid request.\n\nOnly {MAX_CHECK_OUTPUT_CHARS} characters are "
                        f"allowed; {len(value)} were supplied.",
                    )
        status = body.get("status")
        conclusion = body.get("conclusion")
        if status is not None and status not in ("queued", "in_progress", "completed"):
            raise _invalid("CheckRun", "status", "invalid")
        if status == "completed" and conclusion is None and run.conclusion is None:
            raise _fail(
                422, "Invalid request.\n\n`conclusion` is required when `status` is completed."
            )
        if "name" in body:
            run.name = body["name"]
        for key in ("details_url", "external_id"):
            if key in body:
                setattr(run, key, body[key])
        if output is not None:
            run.output = {k: output.get(k) for k in ("title", "summary", "text")}
        if body.get("started_at"):
            run.started_at = datetime.fromisoformat(body["started_at"].replace("Z", "+00:00"))
        if status is not None:
            run.status = status
        if conclusion is not None:
            run.conclusion = conclusion
            run.status = "completed"
        if run.status == "completed" and run.completed_at is None:
            stamp = body.get("completed_at")
            run.completed_at = (
                datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else self._clock()
            )

    def _create_check_run(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        body = req.json()
        name, head_sha = body.get("name"), body.get("head_sha")
        if not isinstance(name, str) or not name:
            raise _invalid("CheckRun", "name", "missing_field")
        if not isinstance(head_sha, str) or head_sha not in repo.commits:
            raise _fail(422, f"No commit found for SHA: {head_sha}")
        run = _CheckRun(
            id=next(self._ids),
            name=name,
            head_sha=head_sha,
            status="queued",
            conclusion=None,
            started_at=self._clock(),
            completed_at=None,
            details_url=None,
            external_id=None,
            output={"title": None, "summary": None, "text": None},
            suite_id=int(hashlib.sha1(f"{repo.id}:{head_sha}".encode()).hexdigest()[:8], 16),
        )
        self._apply_check_fields(run, body)
        repo.check_runs[run.id] = run
        url = f"{self._api}/repos/{repo.full_name}/check-runs/{run.id}"
        return _Reply(201, self._check_run_json(repo, run), {"location": url})

    def _check_run(self, req: _Req) -> tuple[_Repo, _CheckRun]:
        repo = self._repo(req)
        raw = req.params["id"]
        if not raw.isdigit() or int(raw) not in repo.check_runs:
            raise _fail(404, "Not Found")
        return repo, repo.check_runs[int(raw)]

    def _get_check_run(self, req: _Req) -> _Reply:
        repo, run = self._check_run(req)
        return _Reply(200, self._check_run_json(repo, run))

    def _update_check_run(self, req: _Req) -> _Reply:
        repo, run = self._check_run(req)
        self._apply_check_fields(run, req.json())
        return _Reply(200, self._check_run_json(repo, run))

    def _list_check_runs(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        sha = self._resolve(repo, req.params["ref"])
        if sha is None:
            raise _fail(422, f"No commit found for SHA: {req.params['ref']}")
        runs = [c for c in repo.check_runs.values() if c.head_sha == sha]
        if "check_name" in req.query:
            runs = [c for c in runs if c.name == req.query["check_name"]]
        if "status" in req.query:
            runs = [c for c in runs if c.status == req.query["status"]]
        if req.query.get("filter", "latest") == "latest":
            latest: dict[str, _CheckRun] = {}
            for c in runs:
                latest[c.name] = c
            runs = list(latest.values())
        runs.sort(key=lambda c: c.id, reverse=True)
        page = self._page(req, [self._check_run_json(repo, c) for c in runs])
        return _Reply(200, {"total_count": len(runs), "check_runs": page.body}, page.headers)

    # collaborators

    def _get_permission(self, req: _Req) -> _Reply:
        repo = self._repo(req)
        user = req.params["username"]
        role = self._role(repo, user)
        legacy = ROLE_TO_PERMISSION[role]
        rank = ["none", "read", "triage", "write", "maintain", "admin"].index(role)
        collaborator = {
            **self._user_json(user),
            "permissions": {
                "admin": rank >= 5,
                "maintain": rank >= 4,
                "push": rank >= 3,
                "triage": rank >= 2,
                "pull": rank >= 1,
            },
            "role_name": role,
        }
        return _Reply(200, {"permission": legacy, "role_name": role, "user": collaborator})


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops SYNs under a burst of parallel calls, and the
    # client's retransmit then costs a full second.
    request_queue_size = 128
    # Joined in stop(); every response closes its connection, so threads end promptly.
    daemon_threads = False
    block_on_close = True
    fake: FakeGitHub


class _RequestHandler(BaseHTTPRequestHandler):
    """Hands every request to the owning FakeGitHub; one response per connection."""

    server: _Server

    protocol_version = "HTTP/1.1"
    server_version = "github.com"
    sys_version = ""
    # A client that connects and never sends must not keep stop() waiting.
    timeout = 5

    def _handle(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _b64_lines(data: bytes) -> str:
    # GitHub wraps base64 content at 60 characters per line.
    encoded = base64.b64encode(data).decode()
    return "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _check_body_length(resource: str, body: Any) -> None:
    if isinstance(body, str) and len(body) > MAX_BODY_CHARS:
        message = f"body is too long (maximum is {MAX_BODY_CHARS} characters)"
        raise _invalid(resource, "body", "custom", message)


def _default_fault(status: int) -> tuple[Any, dict[str, str]]:
    if status == 403:
        return SECONDARY_RATE_LIMIT_BODY, {"retry-after": "1"}
    if status == 429:
        return RATE_LIMIT_429_BODY, {"retry-after": "1"}
    if status == 502:
        return BAD_GATEWAY_HTML, {}
    if status == 422:
        return error_body(422, "Validation Failed", errors=[]), {}
    if status >= 500:
        return error_body(status, "Server Error"), {}
    return error_body(status, HTTPStatus(status).phrase), {}


def generate_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
