"""The GitHub fake answers like GitHub: driven through the real githubkit client, App auth."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    RequestError,
    RequestFailed,
    RequestTimeout,
    SecondaryRateLimitExceeded,
)
from githubkit.utils import UNSET

from tests.fakes.github import FakeGitHub

APP_ID = 4242
REPO = "octo/demo"
OWNER, NAME = REPO.split("/")
BRANCH = "agent-tdd/issue-1"
# httpx loads the CA bundle for every client it builds (~50 ms); share one context.
TLS = ssl.create_default_context()
README = "# demo\n"
ROMAN = "def roman(n: int) -> str:\n    return ''\n"


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fake(app_key: rsa.RSAPrivateKey) -> Iterator[FakeGitHub]:
    with FakeGitHub(app_id=APP_ID, public_key=app_key.public_key()) as f:
        f.add_repo(REPO, files={"README.md": README, "src/roman.py": ROMAN})
        yield f


def installation_client(fake: FakeGitHub, key: rsa.RSAPrivateKey, **options: Any) -> GitHub:
    """A client of one installation with its own token cache, so tests do not share tokens."""
    auth = AppAuthStrategy(APP_ID, _pem(key)).as_installation(fake.installation_id)
    return GitHub(
        auth, base_url=fake.url, cache_strategy=MemCacheStrategy(), ssl_verify=TLS, **options
    )


def app_client(fake: FakeGitHub, key: rsa.RSAPrivateKey) -> GitHub:
    auth = AppAuthStrategy(APP_ID, _pem(key))
    return GitHub(auth, base_url=fake.url, cache_strategy=MemCacheStrategy(), ssl_verify=TLS)


@pytest.fixture
def gh(fake: FakeGitHub, app_key: rsa.RSAPrivateKey) -> Iterator[GitHub]:
    # Inside `with`, githubkit reuses one httpx client instead of building one per call.
    with installation_client(fake, app_key, auto_retry=False) as client:
        yield client


def status_of(exc: pytest.ExceptionInfo[RequestFailed]) -> int:
    return exc.value.response.status_code


# -- apps and auth -----------------------------------------------------------------------


def test_app_endpoints_use_a_jwt(fake: FakeGitHub, app_key: rsa.RSAPrivateKey) -> None:
    app = app_client(fake, app_key)

    me = app.rest.apps.get_authenticated().parsed_data
    installation = app.rest.apps.get_repo_installation(OWNER, NAME).parsed_data
    token = app.rest.apps.create_installation_access_token(fake.installation_id).parsed_data

    assert me is not None and (me.id, me.slug) == (APP_ID, "tdd-agent")
    assert (installation.id, installation.app_id, installation.account.login) == (1, APP_ID, OWNER)
    assert token.expires_at == "2099-01-01T00:00:00Z"
    assert token.token in fake.issued_tokens()
    assert {c.auth for c in fake.calls} == {"jwt"}


def test_installation_token_is_exchanged_once_and_used(gh: GitHub, fake: FakeGitHub) -> None:
    first = gh.rest.repos.get(OWNER, NAME).parsed_data
    gh.rest.repos.get(OWNER, NAME)

    assert (first.full_name, first.default_branch, first.private) == (REPO, "main", False)
    assert [(c.method, c.path, c.auth, c.status) for c in fake.calls] == [
        ("POST", "/app/installations/1/access_tokens", "jwt", 201),
        ("GET", "/repos/octo/demo", "installation", 200),
        ("GET", "/repos/octo/demo", "installation", 200),
    ]
    token = fake.calls[1].headers["authorization"].removeprefix("token ")
    assert fake.issued_tokens() == {token: 1}
    assert fake.calls[1].headers["x-github-api-version"] == "2026-03-10"


def test_unknown_installation_is_404(fake: FakeGitHub, app_key: rsa.RSAPrivateKey) -> None:
    app = app_client(fake, app_key)
    with pytest.raises(RequestFailed) as exc:
        app.rest.apps.create_installation_access_token(99)
    assert status_of(exc) == 404


def test_jwt_signed_by_another_key_is_refused(fake: FakeGitHub) -> None:
    stranger = app_client(fake, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(RequestFailed) as exc:
        stranger.rest.apps.get_authenticated()
    assert status_of(exc) == 401
    assert fake.calls[-1].auth == "invalid"


def test_bad_or_missing_token_is_401(fake: FakeGitHub) -> None:
    for auth in ("ghs_not_issued_by_the_fake", None):
        client = GitHub(auth, base_url=fake.url, auto_retry=False, ssl_verify=TLS)
        with pytest.raises(RequestFailed) as exc:
            client.rest.repos.get(OWNER, NAME)
        assert status_of(exc) == 401
        assert exc.value.response.json()["message"] == "Bad credentials"
    assert [c.auth for c in fake.calls] == ["invalid", "none"]


def test_installation_token_cannot_call_app_endpoints(gh: GitHub, fake: FakeGitHub) -> None:
    gh.rest.repos.get(OWNER, NAME)
    token = fake.calls[-1].headers["authorization"].removeprefix("token ")
    as_token = GitHub(token, base_url=fake.url, ssl_verify=TLS)
    with pytest.raises(RequestFailed) as exc:
        as_token.rest.apps.get_authenticated()
    assert status_of(exc) == 401


def test_manifest_code_converts_once(fake: FakeGitHub) -> None:
    seeded = fake.add_manifest_code("abc123", webhook_secret="s3cret")
    unauthenticated = GitHub(base_url=fake.url, auto_retry=False, ssl_verify=TLS)

    app = unauthenticated.rest.apps.create_from_manifest("abc123").parsed_data

    assert (app.id, app.webhook_secret, app.pem) == (APP_ID, "s3cret", seeded["pem"])
    assert app.pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert app.client_secret == seeded["client_secret"]
    assert fake.calls[-1].auth == "none"
    with pytest.raises(RequestFailed) as exc:
        unauthenticated.rest.apps.create_from_manifest("abc123")
    assert status_of(exc) == 404


def test_unknown_path_is_404_with_github_body(gh: GitHub, fake: FakeGitHub) -> None:
    with pytest.raises(RequestFailed) as exc:
        gh.request("GET", "/repos/octo/demo/no-such-endpoint")
    assert status_of(exc) == 404
    assert exc.value.response.json()["message"] == "Not Found"
    assert exc.value.response.json()["documentation_url"].startswith("https://docs.github.com")
    with pytest.raises(RequestFailed) as exc:
        gh.rest.repos.get(OWNER, "missing")
    assert status_of(exc) == 404


def test_responses_carry_github_headers(gh: GitHub) -> None:
    headers = gh.rest.repos.get(OWNER, NAME).headers
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert int(headers["x-ratelimit-remaining"]) < int(headers["x-ratelimit-limit"]) == 5000
    assert int(headers["x-ratelimit-reset"]) > 0
    assert headers["x-github-request-id"].count(":") == 4


# -- contents and git data ---------------------------------------------------------------


def test_contents_file_directory_and_missing(gh: GitHub) -> None:
    file = gh.rest.repos.get_content(OWNER, NAME, "src/roman.py", ref="main").parsed_data
    listing = gh.rest.repos.get_content(OWNER, NAME, "src").parsed_data

    assert not isinstance(file, list) and file.type == "file"
    assert base64.b64decode(file.content).decode() == ROMAN
    assert file.sha == hashlib.sha1(b"blob %d\0" % len(ROMAN) + ROMAN.encode()).hexdigest()
    assert isinstance(listing, list) and [i.path for i in listing] == ["src/roman.py"]
    with pytest.raises(RequestFailed) as exc:
        gh.rest.repos.get_content(OWNER, NAME, "nope.py")
    assert status_of(exc) == 404


def test_git_data_flow_builds_a_branch(gh: GitHub, fake: FakeGitHub) -> None:
    git = gh.rest.git
    main = git.get_ref(OWNER, NAME, "heads/main").parsed_data
    base = git.get_commit(OWNER, NAME, main.object_.sha).parsed_data
    text_blob = git.create_blob(OWNER, NAME, content="hello\n", encoding="utf-8").parsed_data
    b64_blob = git.create_blob(
        OWNER, NAME, content=base64.b64encode(b"x = 1\n").decode(), encoding="base64"
    ).parsed_data
    tree = git.create_tree(
        OWNER,
        NAME,
        base_tree=base.tree.sha,
        tree=[
            {"path": "hello.txt", "mode": "100644", "type": "blob", "sha": text_blob.sha},
            {"path": "tests/test_x.py", "mode": "100644", "type": "blob", "sha": b64_blob.sha},
            {"path": "src/roman.py", "mode": "100644", "type": "blob", "content": "ROMAN = 1\n"},
            {"path": "README.md", "mode": "100644", "type": "blob", "sha": None},
        ],
    ).parsed_data
    commit = git.create_commit(
        OWNER, NAME, message="Solve #1", tree=tree.sha, parents=[base.sha]
    ).parsed_data
    ref = git.create_ref(OWNER, NAME, ref=f"refs/heads/{BRANCH}", sha=commit.sha).parsed_data

    # Real git object ids: `git hash-object` of "hello\n".
    assert text_blob.sha == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert git.get_blob(OWNER, NAME, b64_blob.sha).parsed_data.size == 6
    assert [t.path for t in tree.tree] == ["hello.txt", "src", "tests"]
    listing = git.get_tree(OWNER, NAME, tree.sha, recursive="1").parsed_data
    assert {t.path for t in listing.tree} == {
        "hello.txt",
        "src",
        "src/roman.py",
        "tests",
        "tests/test_x.py",
    }
    assert commit.verification.verified and commit.author.name == "tdd-agent[bot]"
    assert [p.sha for p in commit.parents] == [base.sha]
    assert (ref.ref, ref.object_.sha) == (f"refs/heads/{BRANCH}", commit.sha)
    assert fake.files_at(REPO, BRANCH) == {
        "hello.txt": "hello\n",
        "src/roman.py": "ROMAN = 1\n",
        "tests/test_x.py": "x = 1\n",
    }
    assert fake.files_at(REPO, "main") == {"README.md": README, "src/roman.py": ROMAN}


def test_empty_tree_has_gits_well_known_sha(gh: GitHub) -> None:
    tree = gh.rest.git.create_tree(OWNER, NAME, tree=[]).parsed_data
    assert tree.sha == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def test_deleting_a_missing_path_is_422(gh: GitHub) -> None:
    with pytest.raises(RequestFailed) as exc:
        gh.rest.git.create_tree(
            OWNER, NAME, tree=[{"path": "ghost.py", "mode": "100644", "type": "blob", "sha": None}]
        )
    assert status_of(exc) == 422


def test_refs_refuse_duplicates_and_non_fast_forward(gh: GitHub, fake: FakeGitHub) -> None:
    main_sha = fake.ref_sha(REPO, "main")
    assert main_sha is not None
    git = gh.rest.git
    git.create_ref(OWNER, NAME, ref=f"refs/heads/{BRANCH}", sha=main_sha)
    ahead = fake.commit_files(REPO, BRANCH, {"a.py": "a = 1\n"})
    tree = git.get_commit(OWNER, NAME, main_sha).parsed_data.tree.sha
    sibling = git.create_commit(OWNER, NAME, message="redo", tree=tree, parents=[main_sha])

    with pytest.raises(RequestFailed) as dup:
        git.create_ref(OWNER, NAME, ref=f"refs/heads/{BRANCH}", sha=main_sha)
    with pytest.raises(RequestFailed) as non_ff:
        git.update_ref(OWNER, NAME, f"heads/{BRANCH}", sha=sibling.parsed_data.sha)
    forced = git.update_ref(
        OWNER, NAME, f"heads/{BRANCH}", sha=sibling.parsed_data.sha, force=True
    ).parsed_data

    assert (status_of(dup), dup.value.response.json()["message"]) == (
        422,
        "Reference already exists",
    )
    assert non_ff.value.response.json()["message"] == "Update is not a fast forward"
    assert fake.ref_sha(REPO, BRANCH) == forced.object_.sha == sibling.parsed_data.sha != ahead
    assert "a.py" not in fake.files_at(REPO, BRANCH)
    with pytest.raises(RequestFailed) as missing:
        git.get_ref(OWNER, NAME, "heads/nope")
    assert status_of(missing) == 404
    matching = git.list_matching_refs(OWNER, NAME, "heads/agent-tdd/").parsed_data
    assert [r.ref for r in matching] == [f"refs/heads/{BRANCH}"]


# -- pull requests -----------------------------------------------------------------------


def test_pull_request_lifecycle(gh: GitHub, fake: FakeGitHub) -> None:
    issue = fake.add_issue(REPO, number=1, title="Roman numerals", labels=["agent-tdd"])
    head_sha = fake.commit_files(REPO, BRANCH, {"src/roman.py": "def roman(n):\n    return 'I'\n"})
    pulls = gh.rest.pulls

    created = pulls.create(
        OWNER, NAME, title="Fix #1", head=f"{OWNER}:{BRANCH}", base="main", body="Closes #1"
    ).parsed_data
    with pytest.raises(RequestFailed) as dup:
        pulls.create(OWNER, NAME, title="again", head=BRANCH, base="main")
    by_head = pulls.list(OWNER, NAME, head=f"{OWNER}:{BRANCH}", state="open").parsed_data
    by_other_head = pulls.list(OWNER, NAME, head=f"{OWNER}:other").parsed_data
    patched = pulls.update(OWNER, NAME, created.number, title="Fix #1!", body="new").parsed_data
    closed = pulls.update(OWNER, NAME, created.number, state="closed").parsed_data
    as_issue = gh.rest.issues.get(OWNER, NAME, created.number).parsed_data
    open_after = pulls.list(OWNER, NAME).parsed_data
    all_after = pulls.list(OWNER, NAME, state="all").parsed_data

    assert created.number == issue + 1  # issues and PRs share one numbering
    assert (created.head.ref, created.head.sha, created.base.ref) == (BRANCH, head_sha, "main")
    assert (created.user.login, created.commits, created.changed_files) == ("tdd-agent[bot]", 1, 1)
    assert (created.additions, created.deletions) == (2, 2)
    assert dup.value.response.json()["errors"][0]["message"] == (
        "A pull request already exists for octo:agent-tdd/issue-1."
    )
    assert [p.number for p in by_head] == [created.number] and by_other_head == []
    assert (patched.title, patched.body, patched.state) == ("Fix #1!", "new", "open")
    assert closed.state == "closed" and closed.closed_at is not None
    assert as_issue.pull_request is not None and as_issue.state == "closed"
    assert open_after == [] and [p.number for p in all_after] == [created.number]
    assert fake.pulls(REPO)[0]["title"] == "Fix #1!"
    got = pulls.get(OWNER, NAME, created.number).parsed_data
    assert got.head.sha == head_sha


def test_pull_head_filter_needs_owner_prefix(gh: GitHub, fake: FakeGitHub) -> None:
    fake.commit_files(REPO, "one", {"one.py": "1\n"})
    fake.commit_files(REPO, "two", {"two.py": "2\n"})
    fake.add_pull(REPO, head="one", title="one")
    fake.add_pull(REPO, head="two", title="two")
    # Like GitHub, a head without "owner:" filters nothing.
    assert len(gh.rest.pulls.list(OWNER, NAME, head="one").parsed_data) == 2
    assert len(gh.rest.pulls.list(OWNER, NAME, head=f"{OWNER}:one").parsed_data) == 1


def test_pull_request_validation_errors(gh: GitHub, fake: FakeGitHub) -> None:
    fake.commit_files(REPO, BRANCH, {"x.py": "x\n"})
    old_main = fake.ref_sha(REPO, "main")
    gh.rest.git.create_ref(OWNER, NAME, ref="refs/heads/empty", sha=str(old_main))
    fake.commit_files(REPO, "main", {"later.py": "later\n"})  # "empty" is now behind main

    cases = {
        "missing head": {"title": "t", "head": "nope", "base": "main"},
        "missing base": {"title": "t", "head": BRANCH, "base": "nope"},
        "body too long": {"title": "t", "head": BRANCH, "base": "main", "body": "x" * 65537},
        "no commits": {"title": "t", "head": "empty", "base": "main"},
    }
    fields = {}
    for name, body in cases.items():
        with pytest.raises(RequestFailed) as exc:
            gh.rest.pulls.create(OWNER, NAME, data=body)  # type: ignore[arg-type]
        assert status_of(exc) == 422, name
        fields[name] = exc.value.response.json()["errors"][0]
    assert fields["missing head"]["field"] == "head"
    assert fields["missing base"]["field"] == "base"
    assert fields["body too long"]["field"] == "body"
    assert fields["no commits"]["message"] == "No commits between main and empty"
    assert fake.pulls(REPO) == []
    ok = gh.rest.pulls.create(OWNER, NAME, title="t", head=BRANCH, base="main", body="x" * 65536)
    assert ok.status_code == 201


# -- issues, comments, reactions ----------------------------------------------------------


def test_issue_and_comments(gh: GitHub, fake: FakeGitHub) -> None:
    number = fake.add_issue(REPO, title="Roman", body="Write roman()", labels=["agent-tdd"])
    issues = gh.rest.issues

    issue = issues.get(OWNER, NAME, number).parsed_data
    posted = issues.create_comment(OWNER, NAME, number, body="Working on it").parsed_data
    listed = issues.list_comments(OWNER, NAME, number).parsed_data
    edited = issues.update_comment(OWNER, NAME, posted.id, body="Done").parsed_data
    fetched = issues.get_comment(OWNER, NAME, posted.id).parsed_data

    assert (issue.title, issue.body, issue.user and issue.user.login) == (
        "Roman",
        "Write roman()",
        "alice",
    )
    assert [getattr(label, "name", label) for label in issue.labels] == ["agent-tdd"]
    assert issue.pull_request is UNSET  # the key is absent on plain issues
    assert posted.user is not None and posted.user.login == "tdd-agent[bot]"
    assert [c.id for c in listed] == [posted.id]
    assert edited.body == fetched.body == "Done"
    assert [c["body"] for c in fake.comments(REPO, number)] == ["Done"]
    with pytest.raises(RequestFailed) as too_long:
        issues.create_comment(OWNER, NAME, number, body="x" * 65537)
    assert too_long.value.response.json()["errors"][0]["field"] == "body"
    with pytest.raises(RequestFailed) as missing:
        issues.create_comment(OWNER, NAME, 404, body="hi")
    assert (status_of(too_long), status_of(missing)) == (422, 404)


def test_comments_paginate_with_link_headers(gh: GitHub, fake: FakeGitHub) -> None:
    number = fake.add_issue(REPO, title="busy")
    ids = [fake.add_comment(REPO, number, body=f"c{i}", user="bob") for i in range(31)]

    first_page = gh.rest.issues.list_comments(OWNER, NAME, number)
    every = list(
        gh.rest.paginate(gh.rest.issues.list_comments, owner=OWNER, repo=NAME, issue_number=number)
    )

    assert len(first_page.parsed_data) == 30 and 'rel="next"' in first_page.headers["link"]
    assert [c.id for c in every] == ids


def test_reactions_are_created_once(gh: GitHub, fake: FakeGitHub) -> None:
    number = fake.add_issue(REPO, title="react")
    comment = fake.add_comment(REPO, number, body="/retry", user="alice")
    reactions = gh.rest.reactions

    first = reactions.create_for_issue(OWNER, NAME, number, content="eyes")
    again = reactions.create_for_issue(OWNER, NAME, number, content="eyes")
    on_comment = reactions.create_for_issue_comment(OWNER, NAME, comment, content="rocket")

    assert (first.status_code, again.status_code, on_comment.status_code) == (201, 200, 201)
    assert first.parsed_data.id == again.parsed_data.id
    assert on_comment.parsed_data.content == "rocket"
    assert fake.reactions(REPO) == [
        {
            "id": first.parsed_data.id,
            "content": "eyes",
            "user": "tdd-agent[bot]",
            "issue_number": number,
            "comment_id": None,
        },
        {
            "id": on_comment.parsed_data.id,
            "content": "rocket",
            "user": "tdd-agent[bot]",
            "issue_number": None,
            "comment_id": comment,
        },
    ]
    assert gh.rest.issues.get(OWNER, NAME, number).parsed_data.reactions.eyes == 1


def test_unknown_reaction_is_422(fake: FakeGitHub, app_key: rsa.RSAPrivateKey) -> None:
    number = fake.add_issue(REPO, title="react")
    raw = installation_client(fake, app_key, auto_retry=False, rest_api_validate_body=False)
    with pytest.raises(RequestFailed) as exc:
        raw.rest.reactions.create_for_issue(OWNER, NAME, number, data={"content": "party"})  # type: ignore[typeddict-item]
    assert status_of(exc) == 422


# -- check runs --------------------------------------------------------------------------


def test_check_run_lifecycle(gh: GitHub, fake: FakeGitHub) -> None:
    sha = fake.commit_files(REPO, BRANCH, {"x.py": "x\n"})
    checks = gh.rest.checks

    created = checks.create(
        OWNER,
        NAME,
        name="tdd-agent",
        head_sha=sha,
        status="in_progress",
        output={"title": "Running", "summary": "attempt 1"},
    ).parsed_data
    done = checks.update(
        OWNER,
        NAME,
        created.id,
        conclusion="success",
        output={"title": "Passed", "summary": "3 passed", "text": "log"},
    ).parsed_data
    by_branch = checks.list_for_ref(OWNER, NAME, BRANCH).parsed_data
    by_sha = checks.list_for_ref(OWNER, NAME, sha, check_name="tdd-agent").parsed_data

    assert (created.status, created.conclusion, created.head_sha) == ("in_progress", None, sha)
    assert (done.status, done.conclusion, done.output.summary) == (
        "completed",
        "success",
        "3 passed",
    )
    assert done.completed_at is not None and done.app is not None and done.app.id == APP_ID
    assert by_branch.total_count == by_sha.total_count == 1
    assert by_branch.check_runs[0].output.text == "log"
    assert fake.check_runs(REPO)[0]["conclusion"] == "success"
    assert checks.get(OWNER, NAME, created.id).parsed_data.conclusion == "success"


def test_check_run_output_limits(fake: FakeGitHub, app_key: rsa.RSAPrivateKey) -> None:
    sha = fake.ref_sha(REPO, "main")
    assert sha is not None
    unchecked = installation_client(fake, app_key, auto_retry=False, rest_api_validate_body=False)
    checked = installation_client(fake, app_key, auto_retry=False)
    too_long = "x" * 65536

    for key in ("summary", "text"):
        output = {"title": "t", "summary": "s", key: too_long}
        with pytest.raises(RequestFailed) as exc:
            unchecked.rest.checks.create(OWNER, NAME, name="c", head_sha=sha, output=output)
        assert status_of(exc) == 422
        assert (
            "Only 65535 characters are allowed; 65536 were supplied."
            in exc.value.response.json()["message"]
        )
    # githubkit itself refuses the oversized body before sending anything.
    sent = len(fake.calls)
    with pytest.raises(pydantic.ValidationError):
        checked.rest.checks.create(
            OWNER, NAME, name="c", head_sha=sha, output={"title": "t", "summary": too_long}
        )
    assert len(fake.calls) == sent
    ok = checked.rest.checks.create(
        OWNER, NAME, name="c", head_sha=sha, output={"title": "t", "summary": "x" * 65535}
    )
    assert ok.status_code == 201 and fake.check_runs(REPO)[0]["output"]["summary"] == "x" * 65535


# -- permissions -------------------------------------------------------------------------


def test_collaborator_permission(gh: GitHub, fake: FakeGitHub) -> None:
    fake.set_permission(REPO, "alice", "write")
    fake.set_permission(REPO, "mia", "maintain")
    fake.set_permission(REPO, "tom", "triage")

    def permission(user: str) -> tuple[str, str]:
        data = gh.rest.repos.get_collaborator_permission_level(OWNER, NAME, user).parsed_data
        assert data.user is not None and data.user.login == user
        return data.permission, data.role_name

    assert permission("alice") == ("write", "write")
    assert permission("mia") == ("write", "maintain")
    assert permission("tom") == ("read", "triage")
    assert permission("stranger") == ("read", "read")
    assert permission(OWNER) == ("admin", "admin")


def test_other_installations_repo_is_read_only(gh: GitHub, fake: FakeGitHub) -> None:
    fake.add_repo("someone/else", files={"a": "a"}, installation_id=7)
    assert gh.rest.repos.get("someone", "else").parsed_data.full_name == "someone/else"
    with pytest.raises(RequestFailed) as exc:
        gh.rest.git.create_blob("someone", "else", content="x")
    assert status_of(exc) == 403
    assert exc.value.response.json()["message"] == "Resource not accessible by integration"


# -- fault injection ---------------------------------------------------------------------


def test_injected_502_then_recovers(gh: GitHub, fake: FakeGitHub) -> None:
    fake.commit_files(REPO, BRANCH, {"x.py": "x\n"})
    fault = fake.inject("POST", "/repos/{owner}/{repo}/pulls", status=502)

    with pytest.raises(RequestFailed) as exc:
        gh.rest.pulls.create(OWNER, NAME, title="t", head=BRANCH, base="main")
    retried = gh.rest.pulls.create(OWNER, NAME, title="t", head=BRANCH, base="main")

    assert status_of(exc) == 502 and "Bad Gateway" in exc.value.response.text
    assert exc.value.response.headers["content-type"].startswith("text/html")
    assert retried.status_code == 201 and fault.hits == 1
    assert [(c.status, c.injected) for c in fake.calls_to("POST", "/repos/octo/demo/pulls")] == [
        (502, True),
        (201, False),
    ]
    assert len(fake.pulls(REPO)) == 1


def test_injected_422_with_custom_body(gh: GitHub, fake: FakeGitHub) -> None:
    body = {"message": "Validation Failed", "errors": [{"code": "custom", "message": "nope"}]}
    fake.inject("POST", "/repos/{owner}/{repo}/issues/{number}/comments", status=422, body=body)
    number = fake.add_issue(REPO, title="t")
    with pytest.raises(RequestFailed) as exc:
        gh.rest.issues.create_comment(OWNER, NAME, number, body="hi")
    assert status_of(exc) == 422 and exc.value.response.json() == body
    assert fake.comments(REPO) == []


@pytest.mark.parametrize("status", [403, 429])
def test_injected_rate_limits(gh: GitHub, fake: FakeGitHub, status: int) -> None:
    fake.inject("GET", "/repos/{owner}/{repo}", status=status)
    with pytest.raises(SecondaryRateLimitExceeded) as exc:
        gh.rest.repos.get(OWNER, NAME)
    assert exc.value.retry_after.total_seconds() == 1
    assert exc.value.response.status_code == status
    if status == 403:
        assert "secondary rate limit" in exc.value.response.json()["message"]
    assert gh.rest.repos.get(OWNER, NAME).status_code == 200


def test_after_apply_models_a_write_that_landed(gh: GitHub, fake: FakeGitHub) -> None:
    number = fake.add_issue(REPO, title="t")
    fake.inject(
        "POST", "/repos/{owner}/{repo}/issues/{number}/comments", status=502, after_apply=True
    )
    with pytest.raises(RequestFailed):
        gh.rest.issues.create_comment(OWNER, NAME, number, body="hello")
    assert [c["body"] for c in fake.comments(REPO, number)] == ["hello"]
    assert fake.calls[-1].status == 502 and fake.calls[-1].injected


def test_githubkit_default_retry_duplicates_a_landed_post(
    fake: FakeGitHub, app_key: rsa.RSAPrivateKey
) -> None:
    """Why the app must not let githubkit retry POSTs on 5xx (see NOTES.md)."""
    number = fake.add_issue(REPO, title="t")
    retrying = installation_client(fake, app_key)  # default auto_retry; sleeps 1 s once
    fake.inject(
        "POST", "/repos/{owner}/{repo}/issues/{number}/comments", status=500, after_apply=True
    )
    retrying.rest.issues.create_comment(OWNER, NAME, number, body="hello")
    assert [c["body"] for c in fake.comments(REPO, number)] == ["hello", "hello"]


def test_dropped_connection_after_apply(gh: GitHub, fake: FakeGitHub) -> None:
    fake.commit_files(REPO, BRANCH, {"x.py": "x\n"})
    fake.inject("POST", "/repos/{owner}/{repo}/pulls", status=502, after_apply=True, drop=True)
    with pytest.raises(RequestError) as exc:
        gh.rest.pulls.create(OWNER, NAME, title="t", head=BRANCH, base="main")
    assert not isinstance(exc.value, RequestFailed)
    assert len(fake.pulls(REPO)) == 1
    # The retry meets GitHub's duplicate answer: the app should then reuse the PR.
    with pytest.raises(RequestFailed) as dup:
        gh.rest.pulls.create(OWNER, NAME, title="t", head=BRANCH, base="main")
    assert "already exists" in dup.value.response.json()["errors"][0]["message"]


def test_failed_token_exchange_is_a_wrapped_request_error(
    fake: FakeGitHub, app_key: rsa.RSAPrivateKey
) -> None:
    """The exchange runs inside httpx's auth flow: githubkit wraps its error and never retries."""
    fake.inject("POST", "/app/installations/{id}/access_tokens", status=502)
    default_retry = installation_client(fake, app_key)
    with pytest.raises(RequestError) as exc:
        default_retry.rest.repos.get(OWNER, NAME)
    assert not isinstance(exc.value, RequestFailed)
    assert isinstance(exc.value.exc, RequestFailed)
    assert exc.value.exc.response.status_code == 502
    assert [(c.path, c.status) for c in fake.calls] == [("/app/installations/1/access_tokens", 502)]


def test_injection_by_regex_and_times(gh: GitHub, fake: FakeGitHub) -> None:
    fault = fake.inject("*", re.compile(r"/repos/octo/demo(/.*)?"), status=503, times=2)
    codes = []
    for _ in range(3):
        try:
            codes.append(gh.rest.repos.get(OWNER, NAME).status_code)
        except RequestFailed as e:
            codes.append(e.response.status_code)
    assert codes == [503, 503, 200] and fault.hits == 2


def test_injected_delay_and_githubkit_timeouts(
    fake: FakeGitHub, app_key: rsa.RSAPrivateKey
) -> None:
    """githubkit honours `timeout` only with http_cache=False: hishel drops it otherwise."""
    uncached = installation_client(fake, app_key, auto_retry=False, timeout=0.1, http_cache=False)
    cached = installation_client(fake, app_key, auto_retry=False, timeout=0.1)
    uncached.rest.repos.get(OWNER, NAME)  # tokens first, so only the slow calls are timed
    cached.rest.repos.get(OWNER, NAME)
    fake.inject("GET", "/repos/{owner}/{repo}", status=200, delay=0.5, times=2)

    with pytest.raises(RequestTimeout):
        uncached.rest.repos.get(OWNER, NAME)
    started = time.monotonic()
    slow = cached.rest.repos.get(OWNER, NAME)

    assert slow.status_code == 200 and time.monotonic() - started >= 0.45
    assert [c.injected for c in fake.calls[-2:]] == [True, True]


# -- server mechanics ---------------------------------------------------------------------


def test_calls_are_recorded_under_concurrency(gh: GitHub, fake: FakeGitHub) -> None:
    number = fake.add_issue(REPO, title="t")
    gh.rest.repos.get(OWNER, NAME)  # fetch the token once, before the threads race
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda i: gh.rest.issues.create_comment(OWNER, NAME, number, body=str(i)), range(20)
            )
        )
    posts = fake.calls_to("POST", "/repos/{owner}/{repo}/issues/{number}/comments")
    assert len(posts) == 20 and {c.body["body"] for c in posts} == {str(i) for i in range(20)}
    assert sorted(c["body"] for c in fake.comments(REPO, number)) == sorted(
        str(i) for i in range(20)
    )


def test_stop_closes_the_port_and_joins_threads(app_key: rsa.RSAPrivateKey) -> None:
    before = threading.active_count()
    fake = FakeGitHub(app_id=APP_ID).start()
    fake.add_repo(REPO)
    port = int(fake.url.rsplit(":", 1)[1].strip("/"))
    assert httpx.get(f"{fake.url}repos/{REPO}").status_code == 401
    fake.stop()
    fake.stop()  # idempotent
    assert threading.active_count() == before
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_unverified_jwt_mode_checks_issuer(app_key: rsa.RSAPrivateKey) -> None:
    with FakeGitHub(app_id=APP_ID) as fake:
        expired = jwt.encode(
            {"iss": str(APP_ID), "iat": 0, "exp": 600}, _pem(app_key), algorithm="RS256"
        )
        assert (
            httpx.get(f"{fake.url}app", headers={"Authorization": f"Bearer {expired}"}).status_code
            == 401
        )
        app = app_client(fake, app_key)
        assert app.rest.apps.get_authenticated().status_code == 200
        other = AppAuthStrategy(APP_ID + 1, _pem(app_key))
        wrong_app = GitHub(
            other, base_url=fake.url, cache_strategy=MemCacheStrategy(), ssl_verify=TLS
        )
        with pytest.raises(RequestFailed) as exc:
            wrong_app.rest.apps.get_authenticated()
        assert status_of(exc) == 401
