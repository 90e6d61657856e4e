"""The RQ worker the Procfile runs (`rq worker -w jobs.worker.Worker -c jobs.worker_config`).

RQ's forking Worker with two faults handled:

- **A dead worker's job comes back in well under a minute.** Stock RQ blocks an idle worker
  in its dequeue for `worker_ttl - 15` = 405 s and runs maintenance (which requeues a dead
  worker's job) only between two dequeues, so `--maintenance-interval` alone changes
  nothing; and a job only looks abandoned 60 s after its last heartbeat. Here the dequeue
  wait is 5 s, maintenance runs at start-up and every 10 s, and a job's heartbeat (every
  5 s while it runs) lapses after 20 s of silence. RQ's own cleanup then retries the job
  under its `Retry`; the run resumes from its journal.
- **A Redis outage is waited out.** The worker's client retries connection errors with
  backoff, without limit, and says so once per outage; RQ's loop would otherwise quit on
  the first error that escapes its dequeue.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, worker_registration
from rq import Worker as RQWorker
from rq.defaults import DEFAULT_MAINTENANCE_TASK_INTERVAL
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import clean_registries
from rq.utils import get_connection_from_queues, now

T = TypeVar("T")

# A running job's heartbeat comes every JOB_MONITORING_INTERVAL seconds and lapses after
# HEARTBEAT_BEATS of them: three missed in a row before the job counts as abandoned.
JOB_MONITORING_INTERVAL = 5
HEARTBEAT_BEATS = 4
# How often an idle worker looks for abandoned jobs (RQ's maintenance), and the most an
# idle worker blocks waiting for a job before it looks again.
MAINTENANCE_INTERVAL = 10
DEQUEUE_WAIT = 5
# The registry cleaning lock: RQ holds it for 899 s when a pass dies half-way.
MAINTENANCE_LOCK_SECONDS = 30
# Waiting out Redis: the same backoff as the jobs' own client (bot.redis_server.connect).
RETRY_BACKOFF = ExponentialBackoff(cap=2.0, base=0.1)
SOCKET_CONNECT_TIMEOUT = 5


class Outage:
    """Says once that Redis is unreachable, and once that it is back (per process: the
    work-horse inherits a copy)."""

    def __init__(self, log: logging.Logger, where: str) -> None:
        self.log = log
        self.where = where
        self.since: float | None = None

    def failed(self, error: Exception, failures: int) -> None:
        # One failure is a dropped connection that the next try reconnects; two is an outage.
        if failures >= 2 and self.since is None:
            self.since = time.monotonic()
            self.log.warning(
                "PID %d: Redis at %s is unreachable (%s); waiting for it, retrying with backoff",
                os.getpid(),
                self.where,
                error,
            )

    def succeeded(self) -> None:
        if self.since is not None:
            self.log.warning(
                "PID %d: Redis at %s is back after %.1f s; carrying on",
                os.getpid(),
                self.where,
                time.monotonic() - self.since,
            )
            self.since = None


class PatientRetry(Retry):
    """redis-py's Retry on connection errors and timeouts, without a limit, reporting to
    an `Outage`. Shared, never copied: redis-py deep-copies `retry` into every connection."""

    def __init__(self, outage: Outage) -> None:
        super().__init__(RETRY_BACKOFF, retries=-1)
        self.outage = outage

    def __deepcopy__(self, memo: dict[int, Any]) -> PatientRetry:
        return self

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failures = 0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                self.outage.failed(error, failures)
                time.sleep(self._backoff.compute(failures))
            else:
                if failures:  # a call that failed and now went through: Redis answers again
                    self.outage.succeeded()
                return result


def ride_out_outages(client: redis.Redis, log: logging.Logger) -> None:
    """Make every command on `client` (and its queues, pipelines, pubsub) wait Redis out."""
    kwargs = client.connection_pool.connection_kwargs
    where = (
        f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        if "path" not in kwargs
        else str(kwargs["path"])
    )
    kwargs["socket_connect_timeout"] = kwargs.get("socket_connect_timeout") or (
        SOCKET_CONNECT_TIMEOUT
    )
    client.set_retry(PatientRetry(Outage(log, where)))
    # Connections made before this (the CLI's suspension check) carry the old settings.
    client.connection_pool.disconnect()


class Worker(RQWorker):
    """RQ's Worker with bounded waits, frequent maintenance and a patient Redis client.

    The CLI's `--maintenance-interval` and `--job-monitoring-interval` may lower the
    module's figures, never raise them: larger ones would break the recovery bound.
    """

    def __init__(
        self,
        queues: str | Queue | Sequence[str] | Sequence[Queue],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        connection = kwargs.get("connection") or get_connection_from_queues(queues)
        if connection is not None and kwargs.get("prepare_for_work", True):
            # Before RQ's constructor, whose first command (CLIENT SETNAME) may meet an
            # outage; not on the read-only copies RQ makes to look workers up (Worker.all).
            ride_out_outages(connection, logging.getLogger("rq.worker"))
        super().__init__(queues, *args, **kwargs)
        self.maintenance_interval = min(self.maintenance_interval, MAINTENANCE_INTERVAL)
        self.job_monitoring_interval = min(self.job_monitoring_interval, JOB_MONITORING_INTERVAL)
        self._next_group_cleaning = 0.0
        self._restart_reported: object = None

    @property
    def dequeue_timeout(self) -> int:
        # RQ's is worker_ttl - 15 (405 s): maintenance would wait that long behind a dequeue.
        return max(1, min(self.worker_ttl - 15, DEQUEUE_WAIT))

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long a running job's heartbeat (its StartedJobRegistry score) lasts."""
        beat = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            beat = int(min(job.timeout - working_time, beat))
        return max(beat, 0) + (HEARTBEAT_BEATS - 1) * self.job_monitoring_interval

    @property
    def heartbeat_ttl(self) -> int:
        return HEARTBEAT_BEATS * self.job_monitoring_interval

    def clean_registries(self) -> None:
        """RQ's maintenance pass, which retries abandoned jobs (or fails those without
        retries left), under a lock that lapses in seconds rather than RQ's 899 s."""
        if self._redis_just_restarted():
            return  # last_cleaned_at stays: the next loop tries again
        for queue in self.queues:
            if not self.connection.set(
                queue.registry_cleaning_key, self.name, nx=True, ex=MAINTENANCE_LOCK_SECONDS
            ):
                continue  # another worker is cleaning this queue
            try:
                abandoned = self._abandoned(queue)
                clean_registries(queue, self._exc_handlers)
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
            finally:
                queue.release_maintenance_lock()
            for job_id in abandoned:
                self._say_what_became_of(job_id)
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ annotates it as None

    def clean_group_registries(self) -> None:
        # RQ runs this every maintenance pass and logs each one; this app makes no groups.
        if time.monotonic() >= self._next_group_cleaning:
            self._next_group_cleaning = time.monotonic() + DEFAULT_MAINTENANCE_TASK_INTERVAL
            super().clean_group_registries()

    def _redis_just_restarted(self) -> bool:
        """True while Redis has been up for less than a heartbeat's lifetime.

        Nobody could renew a heartbeat while it was down, so every job running across the
        restart looks abandoned until its worker's next beat: wait for that beat.
        """
        info = self.connection.info("server")
        uptime = int(info.get("uptime_in_seconds", 0))
        if uptime >= self.heartbeat_ttl:
            return False
        if info.get("run_id") != self._restart_reported:
            self._restart_reported = info.get("run_id")
            self.log.info(
                "Redis started %d s ago: looking for abandoned jobs once running jobs have "
                "had %d s to send a heartbeat",
                uptime,
                self.heartbeat_ttl,
            )
        return True

    def _abandoned(self, queue: Queue) -> list[str]:
        """Jobs still marked as running whose heartbeat lapsed: RQ's cleanup takes them."""
        lapsed = queue.started_job_registry.get_expired_job_ids()
        jobs = self.job_class.fetch_many(lapsed, self.connection, self.serializer)
        return [j.id for j in jobs if j is not None and j.get_status(refresh=False) == "started"]

    def _say_what_became_of(self, job_id: str) -> None:
        try:
            job = self.job_class.fetch(job_id, self.connection, self.serializer)
        except NoSuchJobError:
            return
        status = job.get_status(refresh=False)
        self.log.warning(
            "Worker %s: job %s lost its worker %s (no heartbeat for %d s): now %s, %s retries left",
            self.name,
            job_id,
            job.worker_name,
            self.heartbeat_ttl,
            getattr(status, "value", status),
            job.retries_left,
        )
