"""The GitHub calls the bot makes, over githubkit, with a retry policy safe for POSTs.

githubkit's default retry also retries 5xx on POST, which can create a second PR or
comment when the first attempt did succeed. Here rate limits are retried for every call
(GitHub did not apply the request), server errors only for idempotent methods; callers
make creation idempotent by looking for what they may already have created.
"""

from __future__ import annotations

import base64
import logging
import ssl
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import GitHubException, RateLimitExceeded, RequestFailed
from githubkit.typing import RetryOption

log = logging.getLogger("tdd_agent.github")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
Reaction = Literal["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"]
Conclusion = Literal["success", "failure", "neutral", "cancelled", "timed_out", "action_required"]
# githubkit sends X-GitHub-Api-Version 2026-03-10, the version its bundled models describe;
# we keep that on purpose so that responses and models agree.


class SafeRetry:
    """Retry rate limits (bounded wait) always; 5xx only on idempotent methods."""

    def __init__(
        self, *, rate_limit_retries: int = 3, server_retries: int = 3, max_wait: float = 60
    ):
        self.rate_limit_retries = rate_limit_retries
        self.server_retries = server_retries
        self.max_wait = max_wait

    def __call__(self, exc: GitHubException, retry_count: int) -> RetryOption:
        if isinstance(exc, RateLimitExceeded) and retry_count < self.rate_limit_retries:
            wait = min(exc.retry_after.total_seconds(), self.max_wait)
            return RetryOption(True, timedelta(seconds=max(wait, 0.0)))
        if (
            isinstance(exc, RequestFailed)
            and exc.response.status_code >= 500
            and exc.request.method in IDEMPOTENT
            and retry_count < self.server_retries
        ):
            return RetryOption(True, timedelta(seconds=0.2 * (retry_count + 1) ** 2))
        return RetryOption(False)


def app_client(
    *,
    app_id: int,
    private_key: str,
    base_url: str,
    cache: MemCacheStrategy | None = None,
    retry: SafeRetry | None = None,
    tls: ssl.SSLContext | bool = True,
) -> GitHub[Any]:
    """The App-level client (JWT auth); installation clients derive from it (`with_auth`).

    `http_cache=False`: with hishel's cache on, githubkit requests lose their timeout.
    """
    return GitHub(
        AppAuthStrategy(str(app_id), private_key),
        base_url=base_url.rstrip("/") + "/",
        cache_strategy=cache or MemCacheStrategy(),
        auto_retry=retry or SafeRetry(),
        http_cache=False,
        ssl_verify=tls,
    )


def message_of(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        try:
            data = exc.response.json()
        except ValueError:
            data = {}
        msg = data.get("message") if isinstance(data, dict) else None
        errors = data.get("errors") if isinstance(data, dict) else None
        detail = f" ({errors})" if errors else ""
        return f"{exc.response.status_code} {msg or exc.response.text[:200]}{detail}"
    return str(exc)


@dataclass(frozen=True)
class PullRef:
    number: int
    url: str
    head_sha: str
    body: str
    draft: bool
    state: str


class RepoApi:
    """One repository, through an installation-authenticated client."""

    def __init__(self, gh: GitHub[Any], owner: str, repo: str) -> None:
        self.gh = gh
        self.owner = owner
        self.repo = repo
        self._trees: dict[str, str] = {}

    def __enter__(self) -> RepoApi:
        """One HTTP client (and connection) for everything until `__exit__`."""
        self.gh.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gh.__exit__(*exc)  # type: ignore[arg-type]

    # -- reading ----------------------------------------------------------------------------

    def default_branch(self) -> str:
        return self.gh.rest.repos.get(self.owner, self.repo).parsed_data.default_branch

    def branch_sha(self, branch: str) -> str | None:
        try:
            ref = self.gh.rest.git.get_ref(self.owner, self.repo, f"heads/{branch}")
        except RequestFailed as exc:
            if exc.response.status_code == 404:
                return None
            raise
        return ref.parsed_data.object_.sha

    def commit_message(self, commit_sha: str) -> str:
        return self.gh.rest.git.get_commit(self.owner, self.repo, commit_sha).parsed_data.message

    def commit_tree(self, commit_sha: str) -> str:
        """The tree of a commit (cached: commits never change)."""
        if commit_sha not in self._trees:
            commit = self.gh.rest.git.get_commit(self.owner, self.repo, commit_sha).parsed_data
            self._trees[commit_sha] = commit.tree.sha
        return self._trees[commit_sha]

    def read_tree(self, commit_sha: str, *, max_bytes: int = 2_000_000) -> dict[str, str]:
        """The text files at a commit (binary and oversized files skipped)."""
        tree = self.gh.rest.git.get_tree(
            self.owner, self.repo, self.commit_tree(commit_sha), recursive="1"
        ).parsed_data
        files: dict[str, str] = {}
        total = 0
        for entry in tree.tree:
            if entry.type != "blob" or not entry.path or not entry.sha:
                continue
            size = entry.size or 0
            if size > 200_000 or total + size > max_bytes:
                continue
            blob = self.gh.rest.git.get_blob(self.owner, self.repo, entry.sha).parsed_data
            raw = (
                base64.b64decode(blob.content)
                if blob.encoding == "base64"
                else blob.content.encode()
            )
            try:
                files[entry.path] = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            total += size
        return files

    def issue(self, number: int) -> Any:
        return self.gh.rest.issues.get(self.owner, self.repo, number).parsed_data

    def permission(self, username: str) -> str:
        """`admin`, `maintain`, `write`, `triage`, `read` or `none`."""
        try:
            data = self.gh.rest.repos.get_collaborator_permission_level(
                self.owner, self.repo, username
            ).parsed_data
        except RequestFailed as exc:
            if exc.response.status_code in (403, 404):
                return "none"
            raise
        role = getattr(data, "role_name", None)
        return str(role if role in {"maintain", "triage"} else data.permission)

    # -- comments and reactions ------------------------------------------------------------

    def find_comment(self, issue_number: int, marker: str) -> tuple[int, str] | None:
        """The first comment containing `marker` (ours), as (id, body)."""
        page = 1
        while True:
            # githubkit's lazy list type is not iterable for mypy; the value is a list.
            comments: list[Any] = self.gh.rest.issues.list_comments(
                self.owner, self.repo, issue_number, per_page=100, page=page
            ).parsed_data
            for c in comments:
                if c.body and marker in c.body:
                    return c.id, c.body
            if len(comments) < 100:
                return None
            page += 1

    def upsert_comment(
        self, issue_number: int, marker: str, body: str, *, known_id: int | None = None
    ) -> int:
        """Edit our marked comment, or create it; a failed create is looked up, not repeated."""
        if known_id is None:
            found = self.find_comment(issue_number, marker)
            known_id = found[0] if found else None
        if known_id is not None:
            self.gh.rest.issues.update_comment(self.owner, self.repo, known_id, body=body)
            return known_id
        try:
            return self.gh.rest.issues.create_comment(
                self.owner, self.repo, issue_number, body=body
            ).parsed_data.id
        except RequestFailed as exc:
            if exc.response.status_code < 500:
                raise
            found = self.find_comment(issue_number, marker)
            if found is None:
                raise
            self.gh.rest.issues.update_comment(self.owner, self.repo, found[0], body=body)
            return found[0]

    def comment(self, issue_number: int, body: str) -> int:
        return self.gh.rest.issues.create_comment(
            self.owner, self.repo, issue_number, body=body
        ).parsed_data.id

    def react(
        self, issue_number: int, content: Reaction = "eyes", *, comment_id: int | None = None
    ) -> None:
        """Acknowledge with a reaction; best effort (the comment may be gone already)."""
        try:
            self._react(issue_number, content, comment_id)
        except RequestFailed as exc:
            if exc.response.status_code >= 500 or exc.response.status_code in (403, 404, 410):
                log.warning("could not add a reaction: %s", message_of(exc))
                return
            raise

    def _react(self, issue_number: int, content: Reaction, comment_id: int | None) -> None:
        # Reactions are idempotent on GitHub's side (200 for an existing one).
        if comment_id:
            self.gh.rest.reactions.create_for_issue_comment(
                self.owner, self.repo, comment_id, content=content
            )
        else:
            self.gh.rest.reactions.create_for_issue(
                self.owner, self.repo, issue_number, content=content
            )

    # -- git data: one commit with all files -----------------------------------------------

    def commit_files(
        self, *, branch: str, base_sha: str, files: dict[str, str], message: str
    ) -> str:
        """Commit `files` on top of `base_sha` and point `branch` at it (force); returns the sha."""
        entries: list[Any] = [
            {"path": path, "mode": "100644", "type": "blob", "content": content}
            for path, content in sorted(files.items())
        ]
        tree = self.gh.rest.git.create_tree(
            self.owner, self.repo, base_tree=self.commit_tree(base_sha), tree=entries
        ).parsed_data.sha
        # Author and committer left out: GitHub then attributes the commit to the app.
        commit = self.gh.rest.git.create_commit(
            self.owner, self.repo, message=message, tree=tree, parents=[base_sha]
        ).parsed_data.sha
        self.point_branch(branch, commit)
        return commit

    def point_branch(self, branch: str, sha: str) -> None:
        """Create `branch` at `sha`, or force-move it there when it exists."""
        try:
            self.gh.rest.git.create_ref(self.owner, self.repo, ref=f"refs/heads/{branch}", sha=sha)
            return
        except RequestFailed as exc:
            # 422: it exists (an earlier run or /retry); 5xx: the create may have landed.
            if exc.response.status_code != 422 and exc.response.status_code < 500:
                raise
            if exc.response.status_code >= 500 and self.branch_sha(branch) is None:
                raise
        self.gh.rest.git.update_ref(self.owner, self.repo, f"heads/{branch}", sha=sha, force=True)

    # -- pull requests ---------------------------------------------------------------------

    def _pull(self, pr: Any) -> PullRef:
        return PullRef(
            number=pr.number,
            url=pr.html_url,
            head_sha=pr.head.sha,
            body=pr.body or "",
            draft=bool(getattr(pr, "draft", False)),
            state=pr.state,
        )

    def find_pull(self, branch: str) -> PullRef | None:
        pulls = self.gh.rest.pulls.list(
            self.owner, self.repo, head=f"{self.owner}:{branch}", state="open"
        ).parsed_data
        return self._pull(pulls[0]) if pulls else None

    def get_pull(self, number: int) -> PullRef:
        return self._pull(self.gh.rest.pulls.get(self.owner, self.repo, number).parsed_data)

    def upsert_pull(
        self, *, branch: str, base: str, title: str, body: str, draft: bool
    ) -> tuple[PullRef, bool]:
        """The open PR for `branch`, updated, or a new one; True when it was created."""
        existing = self.find_pull(branch)
        if existing is None:
            try:
                pr = self.gh.rest.pulls.create(
                    self.owner,
                    self.repo,
                    title=title,
                    head=branch,
                    base=base,
                    body=body,
                    draft=draft,
                ).parsed_data
                return self._pull(pr), True
            except RequestFailed as exc:
                # 422 "already exists", or a 5xx after which the PR may exist: look it up.
                if exc.response.status_code != 422 and exc.response.status_code < 500:
                    raise
                existing = self.find_pull(branch)
                if existing is None:
                    raise
        pr = self.gh.rest.pulls.update(
            self.owner, self.repo, existing.number, title=title, body=body
        ).parsed_data
        return self._pull(pr), False

    # -- check runs ------------------------------------------------------------------------

    def check_run(
        self,
        *,
        name: str,
        head_sha: str,
        conclusion: Conclusion,
        output: dict[str, str],
        fresh: bool = True,
    ) -> int:
        """The completed check run `name` on `head_sha`. On a commit made by an earlier attempt
        (`fresh=False`) an existing one is updated: a retry never adds a second."""
        if not fresh:
            found: list[Any] = self.gh.rest.checks.list_for_ref(
                self.owner, self.repo, head_sha, check_name=name
            ).parsed_data.check_runs
            if found:
                self.gh.rest.checks.update(  # type: ignore[call-overload]
                    self.owner,
                    self.repo,
                    found[0].id,
                    status="completed",
                    conclusion=conclusion,
                    output=output,
                )
                return int(found[0].id)
        # `output` is githubkit's TypedDict of three strings; a plain dict has the same shape.
        return self.gh.rest.checks.create(  # type: ignore[call-overload]
            self.owner,
            self.repo,
            name=name,
            head_sha=head_sha,
            status="completed",
            conclusion=conclusion,
            output=output,
        ).parsed_data.id
