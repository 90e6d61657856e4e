"""RQ entry points: thin. They take ids, build services from the environment, call bot/."""

from __future__ import annotations

import logging
from collections.abc import Callable

from rq import get_current_job

from bot.config import load_settings
from bot.github import flow
from bot.services import Services

log = logging.getLogger("tdd_agent.jobs")


def _services() -> Services:
    return Services.from_settings(load_settings())


def _reporting_failure(
    services: Services,
    work: Callable[[], str],
    *,
    owner: str,
    repo: str,
    installation_id: int | None,
    number: int,
    run_id: str,
    on_pull_request: bool = False,
) -> str:
    """Run `work`; when it fails for the last time, say so on issue or PR `number`."""
    try:
        return work()
    except Exception as exc:
        log.exception("run %s failed", run_id)
        job = get_current_job()
        if job is not None and job.retries_left:
            raise  # RQ runs it again and the run resumes from its journal
        flow.report_failure(
            services,
            owner=owner,
            repo=repo,
            installation_id=installation_id,
            number=number,
            run_id=run_id,
            reason=str(exc)[:500],
            on_pull_request=on_pull_request,
        )
        raise


def run_issue(
    *,
    owner: str,
    repo: str,
    installation_id: int | None,
    issue_number: int,
    sender: str,
    run_id: str,
) -> str:
    """A labeled issue → a run → a pull request. Re-running the job resumes the run."""
    services = _services()
    return _reporting_failure(
        services,
        lambda: flow.handle_issue(
            services,
            owner=owner,
            repo=repo,
            installation_id=installation_id,
            issue_number=issue_number,
            sender=sender,
            run_id=run_id,
        ),
        owner=owner,
        repo=repo,
        installation_id=installation_id,
        number=issue_number,
        run_id=run_id,
    )


def retry_pr(
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
    """`/retry` on a PR the app opened → a new run that updates that PR."""
    services = _services()
    return _reporting_failure(
        services,
        lambda: flow.handle_retry(
            services,
            owner=owner,
            repo=repo,
            installation_id=installation_id,
            pr_number=pr_number,
            comment_id=comment_id,
            sender=sender,
            guidance=guidance,
            run_id=run_id,
        ),
        owner=owner,
        repo=repo,
        installation_id=installation_id,
        number=pr_number,
        run_id=run_id,
        on_pull_request=True,
    )
