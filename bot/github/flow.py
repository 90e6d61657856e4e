"""What the worker does for a labeled issue or a `/retry`: check, run, publish, report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from githubkit.exception import GitHubException

from bot.agent.loop import Budget, Iteration, Outcome
from bot.errors import GitHubError
from bot.github.api import RepoApi, message_of
from bot.issue import IssueError, NoTests, build_task, no_tests_message, parse_issue
from bot.report import (
    CHECK_RUN_NAME,
    PROGRESS_MARKER,
    RUNNING,
    already_running_message,
    failure_message,
    issue_problem_message,
    parse_pr_marker,
    permission_denied_message,
    render_check_run,
    render_pr_body,
    render_progress,
    retry_started_message,
)
from bot.run import RunRequest, budget_from, execute
from bot.services import Services

log = logging.getLogger("tdd_agent.flow")
WRITERS = frozenset({"admin", "maintain", "write"})
ISSUE_MARKER = "<!-- tdd-agent:issue -->"


def branch_for(issue_number: int) -> str:
    return f"agent-tdd/issue-{issue_number}"


class ActiveRun:
    """One active run per issue: a Redis key naming the run that holds it."""

    def __init__(self, services: Services, key: str, run_id: str, ttl: int) -> None:
        self.redis = services.redis
        self.key = f"tdd:active:{key}"
        self.run_id = run_id
        self.ttl = ttl

    def acquire(self) -> str | None:
        """None when acquired (or already ours: RQ re-running our job); else the holder."""
        if self.redis.set(self.key, self.run_id, nx=True, ex=self.ttl):
            return None
        holder = self.redis.get(self.key)
        holder_id = holder.decode() if isinstance(holder, bytes) else holder
        if holder_id in (None, self.run_id):
            self.redis.set(self.key, self.run_id, ex=self.ttl)
            return None
        return str(holder_id)

    def release(self) -> None:
        holder = self.redis.get(self.key)
        if holder is not None and holder.decode() == self.run_id:
            self.redis.delete(self.key)


class ProgressComment:
    """The issue's progress comment, edited in place; a GitHub hiccup never stops the run."""

    def __init__(self, api: RepoApi, issue_number: int, run_id: str, budget: Budget) -> None:
        self.api = api
        self.issue_number = issue_number
        self.run_id = run_id
        self.budget = budget
        self.iterations: list[Iteration] = []
        self.comment_id: int | None = None

    def show(self, status: str, **kw: object) -> None:
        body = render_progress(
            run_id=self.run_id, iterations=self.iterations, budget=self.budget, status=status, **kw
        )  # type: ignore[arg-type]
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
) -> Published | None:
    """One commit with every file on `branch`, the PR, and the check run with full logs."""
    if not outcome.files:
        return None
    verdict = "passes its tests" if outcome.passed else "best candidate, tests do not pass"
    sha = api.commit_files(
        branch=branch,
        base_sha=base_sha,
        files=outcome.files,
        message=f"tdd-agent: {title} (#{issue_number})\n\n{verdict}; run {run_id}",
    )
    body = render_pr_body(
        issue_number=issue_number, run_id=run_id, outcome=outcome, budget=budget, title=title
    )
    pr_title = title if outcome.passed else f"[tests failing] {title}"
    pr, created = api.upsert_pull(
        branch=branch, base=base_branch, title=pr_title, body=body, draft=not outcome.passed
    )
    check = render_check_run(outcome=outcome)
    api.check_run(
        name=CHECK_RUN_NAME,
        head_sha=sha,
        conclusion=check["conclusion"],
        output={k: check[k] for k in ("title", "summary", "text")},
    )
    return Published(pr.url, pr.number, created)


def _explain(api: RepoApi, number: int, text: str) -> str:
    """Why no run starts, in the one comment kept for that (edited on a later trigger)."""
    api.upsert_comment(number, ISSUE_MARKER, f"{ISSUE_MARKER}\n{text}")
    return "no-task"


def _solve_and_publish(
    services: Services,
    api: RepoApi,
    *,
    issue_number: int,
    report_on: int,
    run_id: str,
    guidance: str | None,
    branch: str,
) -> str:
    settings = services.settings
    budget = budget_from(settings)
    issue = api.issue(issue_number)
    spec = parse_issue(issue.title, issue.body)
    if not spec.has_tests:  # said before reading the whole repository
        return _explain(api, report_on, no_tests_message(settings.trigger_label))
    base_branch = api.default_branch()
    base_sha = api.branch_sha(base_branch)
    if base_sha is None:
        raise GitHubError(f"the default branch {base_branch} has no commits")
    repo_files = api.read_tree(base_sha)
    try:
        task = build_task(spec, repo_files, guidance=guidance)
    except NoTests:
        return _explain(api, report_on, no_tests_message(settings.trigger_label))
    except IssueError as exc:
        return _explain(api, report_on, issue_problem_message(str(exc), settings.trigger_label))
    progress = ProgressComment(api, report_on, run_id, budget)
    progress.show(RUNNING)
    sandbox = services.sandbox()
    try:
        outcome = execute(
            RunRequest(
                run_id=run_id,
                task=task,
                source="github",
                # An existing target module is the starting point the model edits.
                initial_files={task.target: repo_files[task.target]}
                if task.target in repo_files
                else None,
            ),
            client=services.redis,
            model=services.model(),
            sandbox=sandbox,
            settings=settings,
            reporter=progress,
        )
    except Exception as exc:
        progress.show("error", detail=str(exc)[:300])
        raise
    finally:
        sandbox.close()
    progress.iterations = list(outcome.iterations)
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
            branch=branch,
        )
    except GitHubException as exc:
        # The run itself is safe in the journal: a retry replays it and publishes again.
        progress.show("error", detail=f"could not publish the result: {message_of(exc)}")
        raise
    last = outcome.last_result.output if outcome.last_result else None
    progress.show(
        outcome.kind.value,
        detail="" if outcome.passed else outcome.reason,
        pr_url=published.pr_url if published else None,
        last_output=last,
    )
    return outcome.kind.value


def _exclusively(
    services: Services,
    api: RepoApi,
    *,
    issue_number: int,
    reply_on: int,
    run_id: str,
    work: Callable[[], str],
) -> str:
    """Run `work` unless another run holds this issue; then say so on `reply_on`."""
    ttl = int(services.settings.max_wall_seconds * 2 + 900)
    active = ActiveRun(services, f"{api.owner}/{api.repo}#{issue_number}", run_id, ttl)
    holder = active.acquire()
    if holder is not None:
        api.comment(reply_on, already_running_message(holder))
        return "busy"
    try:
        return work()
    finally:
        active.release()


def _allowed(api: RepoApi, sender: str, reply_on: int) -> bool:
    if api.permission(sender) in WRITERS:
        return True
    api.comment(reply_on, permission_denied_message(sender))
    return False


def handle_issue(
    services: Services,
    *,
    owner: str,
    repo: str,
    installation_id: int | None,
    issue_number: int,
    sender: str,
    run_id: str,
) -> str:
    """A labeled issue: a run, then a PR (or a draft with the best candidate)."""
    api = services.repo_api(installation_id, owner, repo)
    with api.gh:  # one HTTP client (and connection) for the whole job
        if not _allowed(api, sender, issue_number):
            return "refused"

        def work() -> str:
            api.react(issue_number, "eyes")
            return _solve_and_publish(
                services,
                api,
                issue_number=issue_number,
                report_on=issue_number,
                run_id=run_id,
                guidance=None,
                branch=branch_for(issue_number),
            )

        return _exclusively(
            services,
            api,
            issue_number=issue_number,
            reply_on=issue_number,
            run_id=run_id,
            work=work,
        )


def handle_retry(
    services: Services,
    *,
    owner: str,
    repo: str,
    installation_id: int | None,
    pr_number: int,
    comment_id: int,
    sender: str,
    guidance: str | None,
    run_id: str,
) -> str:
    """`/retry` on the bot's PR: run the task again and update the same PR and branch."""
    api = services.repo_api(installation_id, owner, repo)
    with api.gh:
        marker = parse_pr_marker(api.get_pull(pr_number).body)
        if marker is None:
            return "not-ours"
        if not _allowed(api, sender, pr_number):
            return "refused"
        issue_number = int(marker["issue"])

        def work() -> str:
            api.react(pr_number, "eyes", comment_id=comment_id)
            api.comment(pr_number, retry_started_message(run_url_or_id=run_id, guidance=guidance))
            return _solve_and_publish(
                services,
                api,
                issue_number=issue_number,
                report_on=pr_number,
                run_id=run_id,
                guidance=guidance,
                branch=branch_for(issue_number),
            )

        return _exclusively(
            services, api, issue_number=issue_number, reply_on=pr_number, run_id=run_id, work=work
        )


def report_failure(
    services: Services,
    *,
    owner: str,
    repo: str,
    installation_id: int | None,
    number: int,
    run_id: str,
    reason: str,
    on_pull_request: bool = False,
) -> None:
    """Last resort when a job fails for good: say so on the issue or PR, with how to retry
    there (re-label the issue; comment `/retry` on the PR)."""
    label = None if on_pull_request else services.settings.trigger_label
    try:
        api = services.repo_api(installation_id, owner, repo)
        api.comment(
            number, failure_message(reason=reason, run_url_or_id=run_id, trigger_label=label)
        )
    except GitHubException as exc:
        log.error("could not report the failure of %s: %s", run_id, message_of(exc))
