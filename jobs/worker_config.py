"""RQ worker settings: `rq worker -w jobs.worker.Worker -c jobs.worker_config` (see Procfile).

RQ reads the worker class only from the command line (`-w`), never from this module: the
class (jobs/worker.py) bounds the waits so a dead worker's job comes back within a minute,
and waits out a Redis outage instead of quitting.

RQ forks a work-horse per job from the worker's parent process, so whatever the parent
loads here every job inherits for free: the job code and its heavy imports (githubkit,
groq), the TLS context, and the local sandbox's one-time probe (≈ 0.5 s). A broken
sandbox also stops the worker at start-up with the fix in its message, instead of
failing every job.
"""

from __future__ import annotations

import jobs.tdd  # noqa: F401 - imported once in the parent, inherited by every job
from bot import wiring
from bot.config import SERVER_REDIS_URL, load_settings, process_environ

_settings = load_settings(process_environ())

REDIS_URL = _settings.redis_url or SERVER_REDIS_URL
QUEUES = [_settings.queue_name]

wiring.tls_context()  # the CA bundle, loaded once for every job's HTTP clients
wiring.check_sandbox(_settings)
