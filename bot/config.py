"""Settings: read once at the edge from the mapping it is given (never behind its back)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.errors import ConfigError

DEFAULT_MODEL = "openai/gpt-oss-120b"
# The web app and the worker share one Redis; without REDIS_URL they use a local one.
SERVER_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """Every knob of the bot. Env var names are the field names in upper case."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: the edge decides which environment counts.
        return (init_settings,)

    # Model, any provider (resolved in bot/wiring.py: model_name, model_max_tokens, model_timeout)
    model_provider: Literal["groq", "openai"] = "groq"
    model: str | None = None  # wins over GROQ_MODEL; required for MODEL_PROVIDER=openai
    model_temperature: float = 0.2
    model_max_tokens: int | None = None  # wins over MAX_COMPLETION_TOKENS, its older name
    model_timeout: float | None = None  # default: GROQ_TIMEOUT for groq, 300 s for openai

    # Model (Groq)
    groq_api_key: SecretStr | None = None
    groq_base_url: str | None = None
    groq_model: str = DEFAULT_MODEL
    groq_timeout: float = 60.0
    groq_max_retries: int = 4
    max_completion_tokens: int = 4096

    # Model (any OpenAI-compatible server: Ollama, vLLM, llama.cpp's server, LM Studio, ...)
    openai_base_url: str | None = None  # with /v1, e.g. http://localhost:11434/v1
    openai_api_key: SecretStr | None = None  # local servers need none
    openai_max_retries: int = 2  # of 429 and 5xx; a timeout is never retried
    # How tool calls are obtained; `auto` probes the server once per model.
    openai_tool_mode: Literal["auto", "native", "json_schema", "text"] = "auto"

    # Budget: enforced by the loop, never by the model.
    max_iterations: int = 8
    max_total_tokens: int = 200_000
    max_wall_seconds: float = 600.0
    max_invalid_replies: int = 3
    max_cost_usd: float | None = None  # per run, checked against the next call's worst case
    daily_cost_usd: float | None = None  # per installation and UTC day (the GitHub App)
    # Prices per million tokens on top of the shipped table: JSON, or a JSON file's path.
    model_prices: str | None = None
    # How many recent test outputs stay in full; older ones shrink to a one-line summary.
    keep_full_observations: int = 2
    observation_chars: int = 4000

    # Journal
    redis_url: str | None = None
    data_dir: Path | None = None
    lease_seconds: float = 10.0

    # Sandbox
    sandbox: Literal["auto", "local", "e2b"] = "auto"
    e2b_api_key: SecretStr | None = None
    # The template must provide python3 with pytest, and coreutils' timeout.
    e2b_template: str = "base"
    # What E2B bills per sandbox second (2 vCPUs at its published rate); counted in a run's cost.
    e2b_usd_per_second: float = 0.000028
    test_timeout: float = 60.0
    # One pytest server per run, a fork per test run: ~0.2x the time of a cold run.
    warm_runner: bool = True

    # GitHub App (Probot's names)
    app_id: int | None = None
    private_key: SecretStr | None = None
    private_key_path: Path | None = None
    webhook_secret: SecretStr | None = None
    webhook_path: str = "/api/github/webhooks"
    github_api_url: str = "https://api.github.com"
    github_url: str = "https://github.com"
    port: int = 3000
    trigger_label: str = "agent:tdd"
    queue_name: str = "tdd-agent"

    @field_validator("model_provider", "openai_tool_mode", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("model", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `MODEL=` in a .env file means "not set", not the empty model name.
        return None if isinstance(value, str) and not value.strip() else value

    def require_groq_key(self) -> str:
        if self.groq_api_key is None or not self.groq_api_key.get_secret_value():
            raise ConfigError(
                "GROQ_API_KEY is not set. Create a key at https://console.groq.com/keys and "
                "export GROQ_API_KEY=gsk_... (or put it in .env)."
            )
        return self.groq_api_key.get_secret_value()


def process_environ(
    env_file: Path | None = Path(".env"), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The edge's view of the environment: `.env` values under `environ` (the process's)."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return values


def load_settings(environ: Mapping[str, str], **overrides: object) -> Settings:
    """Build settings from `environ` alone (plus typed overrides, e.g. command-line flags)."""
    values: dict[str, object] = {
        k.lower(): v for k, v in environ.items() if k.lower() in Settings.model_fields
    }
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
