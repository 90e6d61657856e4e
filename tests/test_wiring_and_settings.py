"""The composition root and settings: plain functions over the mapping they are given."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from bot import wiring
from bot.config import DEFAULT_MODEL, load_settings, process_environ
from bot.errors import ConfigError
from bot.sandbox.e2b import E2BSandbox
from bot.sandbox.local import LocalSandbox
from bot.sandbox.warm import WarmLocalSandbox
from bot.web import create_app


def test_backend_follows_the_e2b_key_unless_chosen() -> None:
    assert wiring.sandbox_backend(load_settings({})) == "local"
    assert wiring.sandbox_backend(load_settings({"E2B_API_KEY": "e2b_x"})) == "e2b"
    assert (
        wiring.sandbox_backend(load_settings({"E2B_API_KEY": "e2b_x", "SANDBOX": "local"}))
        == "local"
    )


def test_e2b_without_a_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="SANDBOX=e2b needs E2B_API_KEY"):
        wiring.sandbox(load_settings({"SANDBOX": "e2b"}))


def test_builds_the_chosen_backend() -> None:
    remote = wiring.sandbox(load_settings({"E2B_API_KEY": "e2b_x", "MAX_WALL_SECONDS": "100"}))
    assert isinstance(remote, E2BSandbox) and remote.sandbox_id is None  # nothing created yet
    remote.close()
    warm = wiring.sandbox(load_settings({}))
    cold = wiring.sandbox(load_settings({"WARM_RUNNER": "false", "TEST_TIMEOUT": "7"}))
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


def test_settings_read_only_the_mapping_given(tmp_path) -> None:
    import os

    # Whatever this process exports, a mapping passed in is the whole truth.
    exported = {"APP_ID": "999", "GROQ_API_KEY": "gsk_exported", "E2B_API_KEY": "e2b_exported"}
    saved = {k: os.environ.get(k) for k in exported}
    os.environ.update(exported)
    try:
        settings = load_settings({})
        assert settings.app_id is None
        assert settings.groq_api_key is None and settings.e2b_api_key is None
        assert wiring.sandbox_backend(settings) == "local"
        # The edge reads the process environment over .env on purpose.
        env_file = tmp_path / ".env"
        env_file.write_text("APP_ID=5\nWEBHOOK_SECRET=from-dotenv\n", encoding="utf-8")
        edge = load_settings(process_environ(env_file))
        assert edge.app_id == 999
        assert edge.webhook_secret is not None
        assert edge.webhook_secret.get_secret_value() == "from-dotenv"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_settings_become_domain_values_once() -> None:
    settings = load_settings(
        {"MAX_ITERATIONS": "3", "MAX_WALL_SECONDS": "100", "KEEP_FULL_OBSERVATIONS": "1"}
    )
    config = wiring.run_config(settings)
    assert config.budget.max_iterations == 3
    assert config.budget.max_wall_seconds == 100
    assert config.policy.keep_full == 1
    assert wiring.run_deadline(settings) == 800
    remote = wiring.sandbox(load_settings({"E2B_API_KEY": "e2b_x", "MAX_WALL_SECONDS": "100"}))
    try:
        assert remote._sandbox_timeout == 800  # type: ignore[attr-defined]
    finally:
        remote.close()


def test_a_runs_cost_counts_e2b_seconds_only_on_e2b() -> None:
    assert wiring.run_config(load_settings({})).sandbox_usd_per_second == 0
    e2b = wiring.run_config(load_settings({"E2B_API_KEY": "e2b_x", "E2B_USD_PER_SECOND": "0.5"}))
    assert e2b.sandbox_usd_per_second == 0.5
    priced = wiring.run_config(load_settings({"MODEL": "llama-3.1-8b-instant"}))
    assert priced.price is not None and priced.price.input == 0.05
    assert wiring.run_config(load_settings({"MODEL": "my-local-model"})).price is None
