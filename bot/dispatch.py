"""Turning a routed webhook action into an RQ job with a deterministic id."""

from __future__ import annotations

import re

from rq import Queue, Retry

from bot.config import Settings
from bot.github.webhooks import Action, RetryRun, StartRun

# A worker killed mid-run makes RQ run the job again (same id, same run id), and the run
# resumes from its journal. No interval on purpose: an interval needs RQ's scheduler, whose
# lock a dead worker keeps for minutes; the journal's lease already spaces the attempts.
JOB_RETRY = Retry(max=3)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def job_id_for(action: StartRun | RetryRun, delivery: str) -> str:
    repo = f"{_slug(action.repo.owner)}-{_slug(action.repo.name)}"
    if isinstance(action, StartRun):
        return f"issue-{repo}-{action.issue_number}-{_slug(delivery)[:36]}"
    return f"retry-{repo}-{action.pr_number}-{action.comment_id}"


def enqueue(queue: Queue, action: Action, *, delivery: str, settings: Settings) -> str:
    """Enqueue the job for `action` in one Redis round trip; returns its id.

    Deduplication is the caller's (by delivery id); the deterministic job id means a
    re-enqueued job overwrites itself rather than adding a second record.
    """
    if not isinstance(action, StartRun | RetryRun):
        raise ValueError(f"nothing to enqueue for {action!r}")
    job_id = job_id_for(action, delivery)
    kwargs: dict[str, object] = {
        "owner": action.repo.owner,
        "repo": action.repo.name,
        "installation_id": action.repo.installation_id,
        "sender": action.sender,
        "run_id": job_id,
    }
    if isinstance(action, StartRun):
        func = "jobs.tdd.run_issue"
        kwargs["issue_number"] = action.issue_number
        description = f"tdd run for {action.repo.full_name}#{action.issue_number}"
    else:
        func = "jobs.tdd.retry_pr"
        kwargs.update(
            pr_number=action.pr_number, comment_id=action.comment_id, guidance=action.guidance
        )
        description = f"/retry on {action.repo.full_name}#{action.pr_number}"
    with queue.connection.pipeline() as pipe:
        queue.enqueue(
            func,
            kwargs=kwargs,
            job_id=job_id,
            retry=JOB_RETRY,
            job_timeout=int(settings.max_wall_seconds * 2 + 600),
            description=description,
            pipeline=pipe,
        )
        pipe.execute()
    return job_id
