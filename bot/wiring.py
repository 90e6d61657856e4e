"""The composition root: web, worker and CLI build every client from `Settings` here, and
settings become domain values (budget, context policy, run deadline) in one place."""

from __future__ import annotations

import functools
import importlib.metadata
import ssl
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
from bot.keys import issue_lock_key
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
        model=settings.groq_model,
        max_tokens=settings.max_completion_tokens,
        lease_seconds=settings.lease_seconds,
        shadowed=installed_modules(),
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


def redis_client(settings: Settings, *, embedded: bool) -> redis.Redis:
    """REDIS_URL's Redis (checked once, quickly); without it, the embedded one in the data
    directory (`embedded`, the CLI) or the conventional local server (web and worker)."""
    if settings.redis_url:
        if not reachable(settings.redis_url):
            raise ConfigError(
                f"cannot reach Redis at REDIS_URL={redact(settings.redis_url)}; start it, fix "
                "the URL, or unset REDIS_URL to use an embedded Redis"
            )
        return connect(settings.redis_url)
    if embedded:
        data_dir = settings.data_dir or Path(user_data_dir("tdd-agent"))
        return connect(ensure_embedded_redis(data_dir))
    return connect(SERVER_REDIS_URL)


def model_client(settings: Settings) -> ModelClient:
    return GroqModel.build(
        api_key=settings.require_groq_key(),
        base_url=settings.groq_base_url,
        timeout=settings.groq_timeout,
        max_retries=settings.groq_max_retries,
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


def executor(settings: Settings, client: redis.Redis) -> Executor:
    """Runs tasks under their journal with this process's model and a sandbox per run."""
    return Executor(
        redis=client,
        model=model_client(settings),
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
