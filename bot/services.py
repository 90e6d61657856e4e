"""The one place that builds real clients from settings (worker and web start-up)."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from typing import Any

import certifi
import redis
from githubkit import GitHub
from githubkit.cache import MemCacheStrategy

from bot.agent.model import GroqModel, ModelClient
from bot.config import Settings
from bot.errors import ConfigError
from bot.github.api import RepoApi, app_client
from bot.redis_server import connect
from bot.sandbox.base import Sandbox
from bot.sandbox.factory import build_sandbox


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle costs ~20 ms per HTTP client,
    and a worker builds several clients per job (the worker's parent warms this)."""
    return ssl.create_default_context(cafile=certifi.where())


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
class Services:
    settings: Settings
    redis: redis.Redis
    _app: GitHub[Any] | None = None
    _cache: MemCacheStrategy = field(default_factory=MemCacheStrategy)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        return cls(settings=settings, redis=connect(settings.server_redis_url))

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

    def repo_api(self, installation_id: int | None, owner: str, repo: str) -> RepoApi:
        app = self.app()
        if installation_id is None:
            installation_id = app.rest.apps.get_repo_installation(owner, repo).parsed_data.id
        auth = app.auth.as_installation(installation_id)  # type: ignore[attr-defined]
        return RepoApi(app.with_auth(auth), owner, repo)

    def model(self) -> ModelClient:
        return GroqModel.build(
            api_key=self.settings.require_groq_key(),
            base_url=self.settings.groq_base_url,
            timeout=self.settings.groq_timeout,
            max_retries=self.settings.groq_max_retries,
            tls=tls_context(),
        )

    def sandbox(self) -> Sandbox:
        return build_sandbox(self.settings)
