"""Putting an action on the RQ queue: one entry point, a deterministic job id."""

from __future__ import annotations

import re

from rq import Queue, Retry

from bot.github.webhooks import Job, StartRun

# A worker killed mid-run makes RQ run the job again (same id, same run id), and the run
# resumes from its journal. No interval on purpose: an interval needs RQ's scheduler, whose
# lock a dead worker keeps for minutes; the journal's lease already spaces the attempts.
JOB_RETRY = Retry(max=3)
ENTRY_POINT = "jobs.tdd.handle"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def job_id_for(action: Job, delivery: str) -> str:
    """Also the run id: a job RQ runs again resumes the same run."""
    repo = f"{_slug(action.repo.owner)}-{_slug(action.repo.name)}"
    if isinstance(action, StartRun):
        return f"issue-{repo}-{action.issue_number}-{_slug(delivery)[:36]}"
    return f"retry-{repo}-{action.pr_number}-{action.comment_id}"


def describe(action: Job) -> str:
    if isinstance(action, StartRun):
        return f"tdd run for {action.repo.full_name}#{action.issue_number}"
    return f"/retry on {action.repo.full_name}#{action.pr_number}"


def enqueue(queue: Queue, action: Job, *, delivery: str, timeout: float) -> str:
    """Enqueue the job for `action` in one Redis round trip; returns its id.

    Deduplication is the caller's (by delivery id); the deterministic job id means a
    re-enqueued job overwrites itself rather than adding a second record.
    """
    job_id = job_id_for(action, delivery)
    with queue.connection.pipeline() as pipe:
        queue.enqueue(
            ENTRY_POINT,
            args=(action.to_json(), job_id),
            job_id=job_id,
            retry=JOB_RETRY,
            job_timeout=int(timeout),
            description=describe(action),
            pipeline=pipe,
        )
        pipe.execute()
    return job_id
