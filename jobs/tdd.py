"""The RQ entry point: thin. It decodes the action, wires clients from the environment,
calls the use case, and reports a failure on the issue or PR once RQ gives up."""

from __future__ import annotations

import logging

import redis
from rq import get_current_job

from bot import wiring
from bot.config import Settings, load_settings, process_environ
from bot.github import flow
from bot.github.api import RepoApi
from bot.github.webhooks import Job, StartRun, action_from_json

log = logging.getLogger("tdd_agent.jobs")
JOB_REDIS_PATIENCE = 300.0


def handle(action_json: str, run_id: str) -> str:
    """A labeled issue → a run → a PR; `/retry` on a PR → a new run updating it.

    `run_id` is the job id: RQ running the job again (a dead worker) resumes the run.
    """
    action = action_from_json(action_json)
    settings = load_settings(process_environ())
    # Patient: a run in flight waits out a Redis outage of minutes (its steps' writes block
    # until Redis is back) instead of failing and costing one of the job's retries.
    client = wiring.redis_client(settings, embedded=False, patience=JOB_REDIS_PATIENCE)
    with wiring.GitHubApp(settings).repo_api(action.repo) as api:
        try:
            return run(action, api=api, settings=settings, client=client, run_id=run_id)
        except Exception as exc:
            log.exception("run %s failed", run_id)
            job = get_current_job()
            if job is not None and job.retries_left:
                raise  # RQ runs it again and the run resumes from its journal
            report(action, api=api, settings=settings, run_id=run_id, reason=str(exc))
            raise


def run(action: Job, *, api: RepoApi, settings: Settings, client: redis.Redis, run_id: str) -> str:
    ctx = flow.Context(
        api=api,
        executor=wiring.executor(settings, client),
        locks=wiring.IssueLocks(client, lease_seconds=settings.lease_seconds),
        runs=wiring.RunIndex(client),
        throttle=wiring.ReplyThrottle(client),
        trigger_label=settings.trigger_label,
        spend=wiring.DailySpend(client),
        daily_cost_usd=settings.daily_cost_usd,
    )
    if isinstance(action, StartRun):
        return flow.handle_issue(action, ctx, run_id=run_id).value
    return flow.handle_retry(action, ctx, run_id=run_id).value


def report(action: Job, *, api: RepoApi, settings: Settings, run_id: str, reason: str) -> None:
    on_issue = isinstance(action, StartRun)
    flow.report_failure(
        api,
        number=action.issue_number if isinstance(action, StartRun) else action.pr_number,
        run_id=run_id,
        reason=reason[:500],
        trigger_label=settings.trigger_label if on_issue else None,
    )
