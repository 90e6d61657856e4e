"""The composition root: web, worker and CLI build every client from `Settings` here, and
settings become domain values (budget, context policy, run deadline) in one place."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import redis
from githubkit import GitHub
from githubkit.cache import MemCacheStrategy
from platformdirs import user_data_dir

from bot.agent.context import ContextPolicy
from bot.agent.loop import Budget
from bot.agent.model import GroqModel, ModelClient
from bot.config import SERVER_REDIS_URL, Settings
from bot.errors import ConfigError
from bot.github.api import RepoApi, app_client
from bot.github.webhooks import Repo
from bot.journal import Lease
from bot.keys import daily_cost_key, issue_lock_key, issue_run_key, replied_key, run_key
from bot.pricing import price_table
from bot.redis_server import connect, ensure_embedded_redis, reachable, redact
from bot.run import Executor, RunConfig
from bot.sandbox.base import Sandbox
from bot.sandbox.pytest_run import PytestConfig

# -- settings → domain values ------------------------------------------------------------------


def budget(settings: Settings) -> Budget:
    return Budget(
        max_iterations=settings.max_iterations,
        max_total_tokens=settings.max_total_tokens,
        max_wall_seconds=settings.max_wall_seconds,
        max_invalid_replies=settings.max_invalid_replies,
        max_cost_usd=settings.max_cost_usd,
    )


def context_policy(settings: Settings) -> ContextPolicy:
    return ContextPolicy(
        keep_full=settings.keep_full_observations, observation_chars=settings.observation_chars
    )


def run_deadline(settings: Settings) -> float:
    """Seconds a whole run may take, GitHub calls and lease waits included.

    The wall budget counts only model and test time; twice that plus ten minutes covers the
    rest. It bounds the RQ job and the lifetime of a remote sandbox should we die.
    """
    return settings.max_wall_seconds * 2 + 600


def run_config(settings: Settings) -> RunConfig:
    return RunConfig(
        budget=budget(settings),
        policy=context_policy(settings),
        model=model_name(settings),
        max_tokens=model_max_tokens(settings),
        temperature=settings.model_temperature,
        lease_seconds=settings.lease_seconds,
        shadowed=installed_modules(),
        price=price_table(settings.model_prices).get(model_name(settings)),
        sandbox_usd_per_second=(
            settings.e2b_usd_per_second if sandbox_backend(settings) == "e2b" else 0.0
        ),
    )


@functools.cache
def installed_modules() -> frozenset[str]:
    """Top-level import names of the packages the (local) test environment holds."""
    return frozenset(importlib.metadata.packages_distributions())


# -- clients -------------------------------------------------------------------------------------


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle costs ~20 ms per HTTP client,
    and a worker builds several clients per job (the worker's parent warms this)."""
    return ssl.create_default_context(cafile=certifi.where())


def redis_client(settings: Settings, *, embedded: bool, patience: float = 30.0) -> redis.Redis:
    """REDIS_URL's Redis (checked once, quickly); without it, the embedded one in the data
    directory (`embedded`, the CLI) or the conventional local server (web and worker)."""
    if settings.redis_url:
        if not reachable(settings.redis_url):
            raise ConfigError(
                f"cannot reach Redis at REDIS_URL={redact(settings.redis_url)}; start it, fix "
                "the URL, or unset REDIS_URL to use an embedded Redis"
            )
        return connect(settings.redis_url, patience=patience)
    if embedded:
        data_dir = settings.data_dir or Path(user_data_dir("tdd-agent"))
        return connect(ensure_embedded_redis(data_dir), patience=patience)
    return connect(SERVER_REDIS_URL, patience=patience)


# Local servers are slow: turns of a small model on two cores took up to 90 s.
OPENAI_DEFAULT_TIMEOUT = 300.0


def model_name(settings: Settings) -> str:
    """MODEL, else GROQ_MODEL (or its default) for Groq; MODEL_PROVIDER=openai needs MODEL."""
    if settings.model:
        return settings.model
    if settings.model_provider == "openai":
        raise ConfigError(
            "MODEL_PROVIDER=openai needs MODEL, the name the server knows the model by "
            "(e.g. MODEL=qwen2.5-coder:7b for Ollama; GET <OPENAI_BASE_URL>/models lists them)"
        )
    return settings.groq_model


def model_max_tokens(settings: Settings) -> int:
    """MODEL_MAX_TOKENS, else MAX_COMPLETION_TOKENS (its older name, default 4096)."""
    if settings.model_max_tokens is not None:
        return settings.model_max_tokens
    return settings.max_completion_tokens


def model_timeout(settings: Settings) -> float:
    """MODEL_TIMEOUT, else GROQ_TIMEOUT (60 s) for Groq, 300 s for an OpenAI-compatible server."""
    if settings.model_timeout is not None:
        return settings.model_timeout
    if settings.model_provider == "openai":
        return OPENAI_DEFAULT_TIMEOUT
    return settings.groq_timeout


def model_client(settings: Settings) -> ModelClient:
    """The client of the provider MODEL_PROVIDER names; a missing setting fails here, with the
    fix, rather than at the first turn."""
    if settings.model_provider == "openai":
        return openai_client(settings)
    return GroqModel.build(
        api_key=settings.require_groq_key(),
        base_url=settings.groq_base_url,
        timeout=model_timeout(settings),
        max_retries=settings.groq_max_retries,
        tls=tls_context(),
    )


def openai_client(settings: Settings) -> ModelClient:
    """An OpenAICompatibleModel for OPENAI_BASE_URL; `openai` is imported only when chosen
    (it takes ~0.6 s)."""
    base_url = (settings.openai_base_url or "").strip()
    if not base_url:
        raise ConfigError(
            "MODEL_PROVIDER=openai needs OPENAI_BASE_URL, e.g. http://localhost:11434/v1 for "
            "Ollama, http://localhost:8000/v1 for vLLM, http://localhost:8080/v1 for llama.cpp's "
            "server, http://localhost:1234/v1 for LM Studio"
        )
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"OPENAI_BASE_URL={base_url!r} is not an http(s) URL; "
            "e.g. http://localhost:11434/v1 for Ollama"
        )
    model_name(settings)  # fail at start-up, not at the first turn
    from bot.agent.openai_model import Mode, OpenAICompatibleModel

    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    mode = None if settings.openai_tool_mode == "auto" else Mode(settings.openai_tool_mode)
    return OpenAICompatibleModel.build(
        base_url=base_url,
        api_key=key or None,
        timeout=model_timeout(settings),
        max_retries=settings.openai_max_retries,
        mode=mode,
        tls=tls_context(),
    )


def sandbox_backend(settings: Settings) -> str:
    """`e2b` when chosen or when E2B_API_KEY is set under `auto`; `local` otherwise."""
    if settings.sandbox == "auto":
        return "e2b" if settings.e2b_api_key is not None else "local"
    return settings.sandbox


def sandbox(
    settings: Settings, *, warm: bool | None = None, pytest_config: PytestConfig | None = None
) -> Sandbox:
    """A new sandbox for one run (the caller closes it); `warm` overrides WARM_RUNNER."""
    warm = settings.warm_runner if warm is None else warm
    if sandbox_backend(settings) == "e2b":
        if settings.e2b_api_key is None or not settings.e2b_api_key.get_secret_value():
            raise ConfigError(
                "SANDBOX=e2b needs E2B_API_KEY. Get a key at https://e2b.dev/dashboard, "
                "or set SANDBOX=local to use the local bubblewrap sandbox."
            )
        from bot.sandbox.e2b import E2BSandbox

        return E2BSandbox(
            api_key=settings.e2b_api_key.get_secret_value(),
            template=settings.e2b_template,
            # The sandbox never outlives the run by much, even if we die.
            sandbox_timeout=int(run_deadline(settings)),
            test_timeout=settings.test_timeout,
            warm=warm,
            pytest_config=pytest_config,
        )
    from bot.sandbox.jail import SandboxLimits

    limits = SandboxLimits(wall_seconds=settings.test_timeout)
    if warm:
        from bot.sandbox.warm import WarmLocalSandbox

        return WarmLocalSandbox(limits=limits, pytest_config=pytest_config)
    from bot.sandbox.local import LocalSandbox

    return LocalSandbox(limits=limits, pytest_config=pytest_config)


def check_sandbox(settings: Settings) -> None:
    """Fail at start-up, with the fix, when the local sandbox cannot run here."""
    if sandbox_backend(settings) == "local":
        from bot.sandbox.local import LocalSandbox

        LocalSandbox().check()


def executor(settings: Settings, client: redis.Redis, model: ModelClient | None = None) -> Executor:
    """Runs tasks under their journal with this process's model and a sandbox per run."""
    return Executor(
        redis=client,
        model=model or model_client(settings),
        new_sandbox=lambda config: sandbox(settings, pytest_config=config),
        config=run_config(settings),
        # Cold on purpose: a fresh process tree that no earlier run of the loop touched.
        new_verifier=lambda config: sandbox(settings, warm=False, pytest_config=config),
    )


def private_key(settings: Settings) -> str:
    """PRIVATE_KEY (PEM text, `\\n` escapes allowed) or the file at PRIVATE_KEY_PATH."""
    if settings.private_key is not None and settings.private_key.get_secret_value().strip():
        return settings.private_key.get_secret_value().replace("\\n", "\n")
    if settings.private_key_path is not None:
        try:
            return settings.private_key_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read PRIVATE_KEY_PATH {settings.private_key_path}: {exc}"
            ) from exc
    raise ConfigError(
        "the GitHub App's private key is missing: set PRIVATE_KEY (the PEM text) or "
        "PRIVATE_KEY_PATH (the .pem file GitHub let you download), or open the web app's "
        "/ page to register the app"
    )


@dataclass
class GitHubApp:
    """The App's client (JWT), built on first use; installation clients derive from it."""

    settings: Settings
    _app: GitHub[Any] | None = None
    _cache: MemCacheStrategy = field(default_factory=MemCacheStrategy)

    def app(self) -> GitHub[Any]:
        if self._app is None:
            if self.settings.app_id is None:
                raise ConfigError("APP_ID is not set (the GitHub App's numeric id)")
            self._app = app_client(
                app_id=self.settings.app_id,
                private_key=private_key(self.settings),
                base_url=self.settings.github_api_url,
                cache=self._cache,
                tls=tls_context(),
            )
        return self._app

    def repo_api(self, repo: Repo) -> RepoApi:
        app = self.app()
        installation_id = repo.installation_id
        if installation_id is None:
            found = app.rest.apps.get_repo_installation(repo.owner, repo.name)
            installation_id = found.parsed_data.id
        auth = app.auth.as_installation(installation_id)
        return RepoApi(app.with_auth(auth), repo.owner, repo.name)


class IssueLocks:
    """One active run per issue, on the journal's fenced lease (renewed while held)."""

    def __init__(self, client: redis.Redis, *, lease_seconds: float) -> None:
        self.redis = client
        self.lease_seconds = lease_seconds

    def lease(self, repo: Repo, issue_number: int, run_id: str) -> Lease:
        key = issue_lock_key(repo.full_name, issue_number)
        return Lease(
            self.redis,
            key,
            epoch_key=f"{key}:epoch",
            # The run id as owner: RQ re-running the same job takes its own lock back.
            owner=run_id,
            seconds=self.lease_seconds,
            name=f"{repo.full_name}#{issue_number}",
        )


class RunIndex:
    """Per issue, the run whose result is not published yet, so that a new trigger with the
    same task resumes it from its journal (no model call) instead of starting over."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def resumable(self, repo: Repo, issue_number: int, task_digest: str) -> str | None:
        raw = self.redis.get(issue_run_key(repo.full_name, issue_number))
        if raw is None:
            return None
        run_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        recorded = self.redis.hget(run_key(run_id, "meta"), "task_digest")
        # A changed issue (or new /retry guidance) is a new task: start a new run.
        if recorded is None or json.loads(recorded) != task_digest:
            return None
        return run_id

    def started(self, repo: Repo, issue_number: int, run_id: str) -> None:
        self.redis.set(issue_run_key(repo.full_name, issue_number), run_id, ex=30 * 24 * 3600)

    def published(self, repo: Repo, issue_number: int) -> None:
        self.redis.delete(issue_run_key(repo.full_name, issue_number))


class ReplyThrottle:
    """One polite reply per outsider per issue or PR per hour; the rest get a reaction."""

    def __init__(self, client: redis.Redis, *, seconds: int = 3600) -> None:
        self.redis = client
        self.seconds = seconds

    def first(self, repo: Repo, number: int, user: str) -> bool:
        key = replied_key(repo.full_name, number, user)
        return bool(self.redis.set(key, "1", nx=True, ex=self.seconds))


class DailySpend:
    """Money spent per installation and UTC day: a Redis counter that expires with the day."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.clock = clock

    def _key(self, repo: Repo) -> str:
        account = str(repo.installation_id) if repo.installation_id else repo.owner
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        return daily_cost_key(account, day)

    def spent(self, repo: Repo) -> float:
        raw = self.redis.get(self._key(repo))
        return float(raw) if raw is not None else 0.0

    def add(self, repo: Repo, amount: float, *, run_id: str) -> None:
        """Count a finished run's cost once, however often its job runs again."""
        if amount <= 0 or not self.redis.set(f"{run_key(run_id, 'costed')}", "1", nx=True):
            return
        key = self._key(repo)
        with self.redis.pipeline() as pipe:
            pipe.incrbyfloat(key, amount)
            pipe.expire(key, 2 * 24 * 3600)
            pipe.execute()

    def seconds_to_midnight(self) -> float:
        now = self.clock()
        return 24 * 3600 - now % (24 * 3600)
