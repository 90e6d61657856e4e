"""What the worker does for a labeled issue or a `/retry`: check, run, publish, report.

The use cases take the narrow things they use (a repository API, the run executor, the
issue locks) and return a `JobStatus`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, cast

from githubkit.exception import GitHubException

from bot.agent.loop import Budget, Iteration, Outcome, OutcomeKind, Reporter
from bot.errors import GitHubError, IssueError, NoTests, PublishFailed
from bot.github.api import Conclusion, RepoApi, message_of
from bot.github.webhooks import Repo, RetryRun, StartRun
from bot.issue import build_task, no_tests_message, parse_issue
from bot.journal import Lease, digest
from bot.pytest_config import repository_pytest_config
from bot.report import (
    CHECK_RUN_NAME,
    PROGRESS_MARKER,
    RUNNING,
    already_running_message,
    daily_cap_message,
    failure_message,
    issue_problem_message,
    parse_pr_marker,
    permission_denied_message,
    render_check_run,
    render_pr_body,
    render_progress,
    retry_started_message,
)
from bot.run import RunRequest

log = logging.getLogger("tdd_agent.flow")
WRITERS = frozenset({"admin", "maintain", "write"})
ISSUE_MARKER = "<!-- tdd-agent:issue -->"


class NoRun(StrEnum):
    """Why a job started no run."""

    REFUSED = "refused"
    BUSY = "busy"
    NO_TASK = "no-task"
    NOT_OURS = "not-ours"
    DAILY_CAP = "daily-cap"


# How a job ended: no run (and why), or the run's outcome.
JobStatus = NoRun | OutcomeKind


class RunExecutor(Protocol):
    """What the flow needs of `bot.run.Executor`."""

    @property
    def budget(self) -> Budget: ...

    @property
    def installed(self) -> frozenset[str]: ...

    def run(self, request: RunRequest, *, reporter: Reporter | None = None) -> Outcome: ...


class Locks(Protocol):
    def lease(self, repo: Repo, issue_number: int, run_id: str) -> Lease: ...


class Runs(Protocol):
    """Which run of an issue still waits to be published (`bot.wiring.RunIndex`)."""

    def resumable(self, repo: Repo, issue_number: int, task_digest: str) -> str | None: ...

    def started(self, repo: Repo, issue_number: int, run_id: str) -> None: ...

    def published(self, repo: Repo, issue_number: int) -> None: ...


class Throttle(Protocol):
    def first(self, repo: Repo, number: int, user: str) -> bool: ...


class Spend(Protocol):
    """Money spent per installation and UTC day (`bot.wiring.DailySpend`)."""

    def spent(self, repo: Repo) -> float: ...

    def add(self, repo: Repo, amount: float, *, run_id: str) -> None: ...

    def seconds_to_midnight(self) -> float: ...


@dataclass(frozen=True)
class Context:
    """What a use case works with: the repository, the executor and the shared state."""

    api: RepoApi
    executor: RunExecutor
    locks: Locks
    runs: Runs
    throttle: Throttle
    trigger_label: str
    spend: Spend | None = None
    daily_cost_usd: float | None = None  # per installation and UTC day; None: no cap


def branch_for(issue_number: int) -> str:
    return f"agent-tdd/issue-{issue_number}"


class ProgressComment:
    """The issue's progress comment, edited in place; a GitHub hiccup never stops the run."""

    def __init__(self, api: RepoApi, issue_number: int, run_id: str, budget: Budget) -> None:
        self.api = api
        self.issue_number = issue_number
        self.run_id = run_id
        self.budget = budget
        self.iterations: list[Iteration] = []
        self.comment_id: int | None = None

    def show(
        self,
        status: str,
        *,
        detail: str = "",
        pr_url: str | None = None,
        last_output: str | None = None,
    ) -> None:
        body = render_progress(
            run_id=self.run_id,
            iterations=self.iterations,
            budget=self.budget,
            status=status,
            detail=detail,
            pr_url=pr_url,
            last_output=last_output,
        )
        try:
            self.comment_id = self.api.upsert_comment(
                self.issue_number, PROGRESS_MARKER, body, known_id=self.comment_id
            )
        except GitHubException as exc:
            log.warning("could not update the progress comment: %s", message_of(exc))

    def iteration_started(self, number: int, budget: Budget) -> None:
        pass

    def iteration_done(self, iteration: Iteration, budget: Budget) -> None:
        self.iterations.append(iteration)
        self.show(RUNNING)


@dataclass(frozen=True)
class Published:
    pr_url: str
    pr_number: int
    created: bool


def _our_commit(api: RepoApi, branch: str, run_id: str) -> str | None:
    """The commit an earlier attempt of this run left on `branch`, if the branch points to it."""
    sha = api.branch_sha(branch)
    if sha is not None and api.commit_message(sha).endswith(f"; run {run_id}"):
        return sha
    return None


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    """Name the publishing step that failed: the result itself is safe in the journal."""
    try:
        yield
    except GitHubException as exc:
        raise PublishFailed(name, message_of(exc)) from exc


def publish(
    api: RepoApi,
    *,
    outcome: Outcome,
    issue_number: int,
    title: str,
    run_id: str,
    budget: Budget,
    base_branch: str,
    base_sha: str,
    branch: str,
    tests: dict[str, str],
) -> Published | None:
    """One commit with the code and the issue's own `tests` on `branch`, the PR, and the
    check run with full logs. Idempotent per run: an attempt that runs again reuses the
    commit and the check run the earlier one made."""
    if not outcome.files:
        return None
    verdict = "passes its tests" if outcome.passed else "best candidate, tests do not pass"
    with _step("commit the code"):
        sha = _our_commit(api, branch, run_id)
        fresh = sha is None
        if sha is None:
            sha = api.commit_files(
                branch=branch,
                base_sha=base_sha,
                files={**outcome.files, **tests},
                message=f"tdd-agent: {title} (#{issue_number})\n\n{verdict}; run {run_id}",
            )
    body = render_pr_body(
        issue_number=issue_number, run_id=run_id, outcome=outcome, budget=budget, title=title
    )
    pr_title = title if outcome.passed else f"[tests failing] {title}"
    with _step("open the pull request"):
        pr, created = api.upsert_pull(
            branch=branch, base=base_branch, title=pr_title, body=body, draft=not outcome.passed
        )
    check = render_check_run(outcome=outcome)
    with _step("create the check run"):
        api.check_run(
            name=CHECK_RUN_NAME,
            head_sha=sha,
            conclusion=cast(Conclusion, check["conclusion"]),
            output={k: check[k] for k in ("title", "summary", "text")},
            fresh=fresh,
        )
    return Published(pr.url, pr.number, created)


def _explain(api: RepoApi, number: int, text: str) -> JobStatus:
    """Why no run starts, in the one comment kept for that (edited on a later trigger)."""
    api.upsert_comment(number, ISSUE_MARKER, f"{ISSUE_MARKER}\n{text}")
    return NoRun.NO_TASK


def _solve_and_publish(
    ctx: Context,
    repo: Repo,
    *,
    issue_number: int,
    report_on: int,
    run_id: str,
    guidance: str | None,
) -> JobStatus:
    api, executor, trigger_label = ctx.api, ctx.executor, ctx.trigger_label
    budget = executor.budget
    issue = api.issue(issue_number)
    spec = parse_issue(issue.title, issue.body)
    if not spec.has_tests:  # said before reading the whole repository
        return _explain(api, report_on, no_tests_message(trigger_label))
    base_branch = api.default_branch()
    base_sha = api.branch_sha(base_branch)
    if base_sha is None:
        raise GitHubError(f"the default branch {base_branch} has no commits")
    repo_files = api.read_tree(base_sha)
    try:
        task = build_task(spec, repo_files, guidance=guidance, installed=executor.installed)
    except NoTests:
        return _explain(api, report_on, no_tests_message(trigger_label))
    except IssueError as exc:
        return _explain(api, report_on, issue_problem_message(str(exc), trigger_label))
    if ctx.spend is not None and ctx.daily_cost_usd is not None:
        spent = ctx.spend.spent(repo)
        if spent >= ctx.daily_cost_usd:
            api.comment(
                report_on,
                daily_cap_message(
                    spent=spent,
                    cap=ctx.daily_cost_usd,
                    seconds_left=ctx.spend.seconds_to_midnight(),
                    trigger_label=trigger_label,
                ),
            )
            return NoRun.DAILY_CAP
    # A finished run of the same task whose publishing failed resumes from its journal: it
    # publishes without asking the model again.
    run_id = ctx.runs.resumable(repo, issue_number, digest(task.to_dict())) or run_id
    ctx.runs.started(repo, issue_number, run_id)
    progress = ProgressComment(api, report_on, run_id, budget)
    progress.show(RUNNING)
    try:
        outcome = executor.run(
            RunRequest(
                run_id=run_id,
                task=task,
                source="github",
                # An existing target module is the starting point the model edits.
                initial_files={task.target: repo_files[task.target]}
                if task.target in repo_files
                else None,
                pytest_config=repository_pytest_config(repo_files),
            ),
            reporter=progress,
        )
    except Exception as exc:
        progress.show("error", detail=str(exc)[:300])
        raise
    progress.iterations = list(outcome.iterations)
    if ctx.spend is not None:
        ctx.spend.add(repo, outcome.cost, run_id=run_id)
    if outcome.kind is OutcomeKind.NOTHING_TO_DO:
        ctx.runs.published(repo, issue_number)
        progress.show(outcome.kind.value)
        return outcome.kind
    try:
        published = publish(
            api,
            outcome=outcome,
            issue_number=issue_number,
            title=issue.title,
            run_id=run_id,
            budget=budget,
            base_branch=base_branch,
            base_sha=base_sha,
            branch=branch_for(issue_number),
            tests={p: task.tests[p] for p in task.new_tests},
        )
    except PublishFailed as exc:
        # The run itself is safe in the journal: a retry replays it and publishes again.
        progress.show("error", detail=str(exc))
        raise
    ctx.runs.published(repo, issue_number)
    last = outcome.last_result.output if outcome.last_result else None
    progress.show(
        outcome.kind.value,
        detail="" if outcome.passed else outcome.reason,
        pr_url=published.pr_url if published else None,
        last_output=last,
    )
    return outcome.kind


def _exclusively(
    ctx: Context,
    *,
    repo: Repo,
    issue_number: int,
    reply_on: int,
    run_id: str,
    work: Callable[[], JobStatus],
) -> JobStatus:
    """Run `work` unless another run holds this issue; then say so on `reply_on`."""
    lease = ctx.locks.lease(repo, issue_number, run_id)
    if lease.try_acquire() is not None:
        ctx.api.comment(reply_on, already_running_message(lease.holder() or "another run"))
        return NoRun.BUSY
    try:
        return work()
    finally:
        lease.release()


def _allowed(
    ctx: Context, repo: Repo, sender: str, reply_on: int, *, comment_id: int | None = None
) -> bool:
    """Writers only. An outsider gets one polite reply per hour here, then a 👎 at most."""
    if ctx.api.permission(sender) in WRITERS:
        return True
    if ctx.throttle.first(repo, reply_on, sender):
        ctx.api.comment(reply_on, permission_denied_message(sender))
    elif comment_id is not None:
        ctx.api.react(reply_on, "-1", comment_id=comment_id)
    return False


def handle_issue(action: StartRun, ctx: Context, *, run_id: str) -> JobStatus:
    """A labeled issue: a run, then a PR (or a draft with the best candidate)."""
    number = action.issue_number
    if not _allowed(ctx, action.repo, action.sender, number):
        return NoRun.REFUSED

    def work() -> JobStatus:
        ctx.api.react(number, "eyes")
        return _solve_and_publish(
            ctx,
            action.repo,
            issue_number=number,
            report_on=number,
            run_id=run_id,
            guidance=None,
        )

    return _exclusively(
        ctx, repo=action.repo, issue_number=number, reply_on=number, run_id=run_id, work=work
    )


def handle_retry(action: RetryRun, ctx: Context, *, run_id: str) -> JobStatus:
    """`/retry` on the bot's PR: run the task again and update the same PR and branch."""
    pr = action.pr_number
    marker = parse_pr_marker(ctx.api.get_pull(pr).body)
    if marker is None:
        return NoRun.NOT_OURS
    if not _allowed(ctx, action.repo, action.sender, pr, comment_id=action.comment_id):
        return NoRun.REFUSED
    issue_number = int(marker["issue"])

    def work() -> JobStatus:
        ctx.api.react(pr, "eyes", comment_id=action.comment_id)
        ctx.api.comment(pr, retry_started_message(run_url_or_id=run_id, guidance=action.guidance))
        return _solve_and_publish(
            ctx,
            action.repo,
            issue_number=issue_number,
            report_on=pr,
            run_id=run_id,
            guidance=action.guidance,
        )

    return _exclusively(
        ctx, repo=action.repo, issue_number=issue_number, reply_on=pr, run_id=run_id, work=work
    )


def report_failure(
    api: RepoApi, *, number: int, run_id: str, reason: str, trigger_label: str | None
) -> None:
    """Last resort when a job fails for good: say so on the issue or PR, with how to retry
    there (re-label the issue: `trigger_label`; None on a PR, where `/retry` works)."""
    try:
        api.comment(
            number,
            failure_message(reason=reason, run_url_or_id=run_id, trigger_label=trigger_label),
        )
    except GitHubException as exc:
        log.error("could not report the failure of %s: %s", run_id, message_of(exc))
