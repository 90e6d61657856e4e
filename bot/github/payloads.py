"""The few webhook fields the router reads, as strict pydantic models (no coercion).

Only these fields: githubkit's full webhook models reject some real payloads, and a field the
router never reads cannot break it. Strict, because `true` is an int to Python and `"7"`
would become 7: a job must not start from a payload GitHub would never send.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# GitHub's ids are 64-bit, and its issue numbers start at 1.
GitHubId = Annotated[int, Field(gt=0, le=2**63 - 1)]
# Names end up in API paths: GitHub's own character set, never `/`, never only dots.
RepoName = Annotated[
    str, Field(max_length=100, pattern=r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
]
Login = Annotated[
    str,
    Field(max_length=100, pattern=r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*(\[bot\])?$"),
]


class _Fields(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class User(_Fields):
    login: Login


class Repository(_Fields):
    name: RepoName
    owner: User


class Installation(_Fields):
    id: GitHubId | None = None


class Issue(_Fields):
    number: GitHubId
    state: str | None = None
    pull_request: dict[str, Any] | None = None


class Label(_Fields):
    name: str | None = None


class LabeledGate(_Fields):
    """What decides whether `issues.labeled` is a trigger: the label."""

    label: Label | None = None


class IssueTrigger(_Fields):
    """An `issues.labeled` trigger: everything a `StartRun` is made of."""

    repository: Repository
    installation: Installation | None = None
    issue: Issue
    sender: User


class Author(_Fields):
    # Lenient on purpose: a comment by nobody or by a bot is ignored before it is checked.
    login: str | None = None
    type: str | None = None


class CommentHead(_Fields):
    body: str | None = None
    user: Author | None = None


class CommentGate(_Fields):
    """What decides whether `issue_comment.created` is a `/retry`: author and text."""

    comment: CommentHead


class IssueHead(_Fields):
    pull_request: dict[str, Any] | None = None


class PullRequestGate(_Fields):
    """`/retry` only counts on a pull request."""

    issue: IssueHead


class Comment(_Fields):
    id: GitHubId
    user: User


class RetryTrigger(_Fields):
    """A `/retry` trigger: everything a `RetryRun` is made of."""

    repository: Repository
    installation: Installation | None = None
    issue: Issue
    comment: Comment
