"""Choosing the sandbox backend and reading settings: plain functions over a mapping."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from bot.config import DEFAULT_MODEL, load_settings
from bot.errors import ConfigError
from bot.sandbox.e2b import E2BSandbox
from bot.sandbox.factory import backend_name, build_sandbox
from bot.sandbox.local import LocalSandbox
from bot.sandbox.warm import WarmLocalSandbox
from bot.web import create_app


def test_backend_follows_the_e2b_key_unless_chosen() -> None:
    assert backend_name(load_settings({})) == "local"
    assert backend_name(load_settings({"E2B_API_KEY": "e2b_x"})) == "e2b"
    assert backend_name(load_settings({"E2B_API_KEY": "e2b_x", "SANDBOX": "local"})) == "local"


def test_e2b_without_a_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="SANDBOX=e2b needs E2B_API_KEY"):
        build_sandbox(load_settings({"SANDBOX": "e2b"}))


def test_builds_the_chosen_backend() -> None:
    remote = build_sandbox(load_settings({"E2B_API_KEY": "e2b_x", "MAX_WALL_SECONDS": "100"}))
    assert isinstance(remote, E2BSandbox) and remote.sandbox_id is None  # nothing created yet
    remote.close()
    warm = build_sandbox(load_settings({}))
    cold = build_sandbox(load_settings({"WARM_RUNNER": "false", "TEST_TIMEOUT": "7"}))
    try:
        assert isinstance(warm, WarmLocalSandbox)
        assert isinstance(cold, LocalSandbox) and cold.limits.wall_seconds == 7
    finally:
        warm.close()
        cold.close()


def test_settings_defaults_and_errors() -> None:
    settings = load_settings({})
    assert settings.groq_model == DEFAULT_MODEL
    assert (settings.max_iterations, settings.trigger_label) == (8, "agent:tdd")
    with pytest.raises(ConfigError, match="GROQ_API_KEY is not set"):
        settings.require_groq_key()
    with pytest.raises(ConfigError, match="MAX_ITERATIONS"):
        load_settings({"MAX_ITERATIONS": "many"})


def test_the_web_app_offers_set_up_when_unconfigured(redis_client: redis.Redis) -> None:
    app = create_app(load_settings({"WEBHOOK_SECRET": "s"}), redis_client=redis_client)
    page = TestClient(app).get("/")
    assert page.status_code == 200
    assert 'name="manifest"' in page.text and "settings/apps/new?state=" in page.text
