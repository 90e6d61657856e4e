"""RQ worker settings: `rq worker -c jobs.worker_config` (see Procfile).

RQ forks a work-horse per job from the worker's parent process, so whatever the parent
loads here every job inherits for free: the job code and its heavy imports (githubkit,
groq), the TLS context, and the local sandbox's one-time probe (≈ 0.5 s). A broken
sandbox also stops the worker at start-up with the fix in its message, instead of
failing every job.
"""

from __future__ import annotations

import jobs.tdd  # noqa: F401 - imported once in the parent, inherited by every job
from bot.config import load_settings
from bot.sandbox.factory import backend_name
from bot.services import tls_context

_settings = load_settings()

REDIS_URL = _settings.server_redis_url
QUEUES = [_settings.queue_name]

tls_context()  # the CA bundle, loaded once for every job's HTTP clients

if backend_name(_settings) == "local":
    from bot.sandbox.local import LocalSandbox

    LocalSandbox().check()
