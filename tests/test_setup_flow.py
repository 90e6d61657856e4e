"""The manifest set-up flow against the fake GitHub over real HTTP, mounted on a bare app."""

from __future__ import annotations

import json
import logging
import stat
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bot.config import Settings, load_settings, process_environ
from bot.errors import ConfigError
from bot.github.setup_flow import (
    APP_YML,
    STATE_TTL_SECONDS,
    MemoryStateStore,
    RedisStateStore,
    load_manifest,
    render_env,
    setup_router,
)
from bot.wiring import private_key
from tests.fakes.github import FakeGitHub
from tests.support import free_port

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bot.example.org"}
CREDENTIAL_VARS = ("APP_ID", "PRIVATE_KEY", "PRIVATE_KEY_PATH", "WEBHOOK_SECRET")


class _Forms(HTMLParser):
    """Collects each form's action and its inputs' values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": values.get("action", ""), "method": values["method"]})
        elif tag == "input" and self.forms:
            self.forms[-1][values["name"]] = values.get("value", "")


def forms_of(page: str) -> list[dict[str, str]]:
    parser = _Forms()
    parser.feed(page)
    return parser.forms


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        yield server


def unconfigured(fake: FakeGitHub, **overrides: object) -> Settings:
    values: dict[str, object] = {"github_api_url": fake.url, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def client_for(
    settings: Settings,
    env_path: Path,
    *,
    store: MemoryStateStore | RedisStateStore | None = None,
    prefix: str = "",
    **kwargs: object,
) -> TestClient:
    app = FastAPI()
    router = setup_router(settings=settings, env_path=env_path, state_store=store, **kwargs)  # type: ignore[arg-type]
    app.include_router(router, prefix=prefix)
    return TestClient(app)


def start_setup(client: TestClient, path: str = "/") -> tuple[dict[str, str], str]:
    """GET the set-up page; returns its one form and the state it carries."""
    page = client.get(path, headers=FORWARDED)
    assert page.status_code == 200, page.text
    (form,) = forms_of(page.text)
    state = parse_qs(urlsplit(form["action"]).query)["state"][0]
    return form, state


# -- app.yml -----------------------------------------------------------------------------------


def test_app_yml_is_the_bots_manifest() -> None:
    manifest = load_manifest(APP_YML)
    assert manifest["name"] == "tdd-agent"
    assert manifest["public"] is False
    assert manifest["default_events"] == ["issues", "issue_comment"]
    assert manifest["default_permissions"] == {
        "metadata": "read",
        "issues": "write",
        "pull_requests": "write",
        "contents": "write",
        "checks": "write",
    }
    assert set(manifest) >= {"url", "hook_attributes", "redirect_url"}
    assert manifest["hook_attributes"]["active"] is True


def test_an_invalid_manifest_is_a_clear_configuration_error(tmp_path: Path) -> None:
    broken = tmp_path / "app.yml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_manifest(broken)
    broken.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_manifest(broken)
    with pytest.raises(ConfigError, match=r"reinstall tdd-agent"):
        load_manifest(tmp_path / "missing.yml")


# -- GET / -------------------------------------------------------------------------------------


def test_setup_page_posts_the_filled_manifest_to_github(fake: FakeGitHub, tmp_path: Path) -> None:
    client = client_for(unconfigured(fake), tmp_path / ".env")
    form, state = start_setup(client)

    assert form["method"] == "post"
    assert form["action"] == f"https://github.com/settings/apps/new?state={state}"
    assert len(state) >= 20
    manifest = json.loads(form["manifest"])
    assert manifest["url"] == "https://bot.example.org/"
    assert manifest["hook_attributes"] == {
        "url": "https://bot.example.org/api/github/webhooks",
        "active": True,
    }
    assert manifest["redirect_url"] == "https://bot.example.org/setup/callback"
    assert manifest["default_events"] == ["issues", "issue_comment"]
    assert manifest["default_permissions"]["contents"] == "write"
    assert manifest["public"] is False


def test_setup_page_uses_webhook_path_mount_prefix_and_plain_host(
    fake: FakeGitHub, tmp_path: Path
) -> None:
    settings = unconfigured(fake, webhook_path="/hooks/gh")
    client = client_for(settings, tmp_path / ".env", prefix="/github-app")

    page = client.get("/github-app/")
    (form,) = forms_of(page.text)

    manifest = json.loads(form["manifest"])
    assert manifest["hook_attributes"]["url"] == "http://testserver/hooks/gh"
    assert manifest["redirect_url"] == "http://testserver/github-app/setup/callback"
    assert manifest["url"] == "http://testserver/github-app/"


def test_setup_page_for_an_organisation(fake: FakeGitHub, tmp_path: Path) -> None:
    client = client_for(unconfigured(fake), tmp_path / ".env")

    page = client.get("/", params={"org": "acme-corp"})
    (form,) = forms_of(page.text)
    assert form["action"].startswith(
        "https://github.com/organizations/acme-corp/settings/apps/new?state="
    )

    bad = client.get("/", params={"org": "acme/../evil"})
    assert bad.status_code == 400
    assert forms_of(bad.text) == []


def test_configured_server_shows_status_not_a_form(fake: FakeGitHub, tmp_path: Path) -> None:
    settings = unconfigured(fake, app_id=77, private_key="-----BEGIN KEY-----\nx\n")
    client = client_for(settings, tmp_path / ".env")

    page = client.get("/", headers=FORWARDED)

    assert page.status_code == 200
    assert "tdd-agent is running" in page.text
    assert "install it on a repository" in page.text.lower()
    assert "https://github.com/settings/apps" in page.text
    assert "<form" not in page.text
    assert "BEGIN KEY" not in page.text


# -- GET /setup/callback -----------------------------------------------------------------------


@pytest.mark.parametrize("query", [{"code": "abc"}, {"code": "abc", "state": "made-up"}])
def test_callback_without_a_known_state_is_refused(
    fake: FakeGitHub, tmp_path: Path, query: dict[str, str]
) -> None:
    fake.add_manifest_code("abc")
    client = client_for(unconfigured(fake), tmp_path / ".env")

    reply = client.get("/setup/callback", params=query, follow_redirects=False)

    assert reply.status_code == 400
    assert "state" in reply.text
    assert fake.calls_to("POST", "/app-manifests/{code}/conversions") == []
    assert not (tmp_path / ".env").exists()


def test_callback_with_an_expired_state_is_refused(fake: FakeGitHub, tmp_path: Path) -> None:
    fake.add_manifest_code("abc")
    clock = Clock()
    client = client_for(unconfigured(fake), tmp_path / ".env", store=MemoryStateStore(clock=clock))
    _, state = start_setup(client)

    clock.now += STATE_TTL_SECONDS + 1
    reply = client.get("/setup/callback", params={"code": "abc", "state": state})

    assert reply.status_code == 400
    assert "expired" in reply.text


def test_callback_writes_credentials_and_sends_the_browser_to_install(
    fake: FakeGitHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "# local settings\n"
        "GROQ_API_KEY=gsk_keep_me\n"
        "APP_ID=\n"
        'WEBHOOK_SECRET="old"\n'
        "REDIS_URL=redis://127.0.0.1:6379/0",
        encoding="utf-8",
    )
    env.chmod(0o644)
    conversion = fake.add_manifest_code("code-1")
    client = client_for(unconfigured(fake), env)
    _, state = start_setup(client)

    with caplog.at_level(logging.INFO, logger="tdd_agent.setup"):
        reply = client.get(
            "/setup/callback", params={"code": "code-1", "state": state}, follow_redirects=False
        )

    assert reply.status_code in (302, 303)
    assert reply.headers["location"] == f"{conversion['html_url']}/installations/new"
    (call,) = fake.calls_to("POST", "/app-manifests/{code}/conversions")
    assert call.path == "/app-manifests/code-1/conversions"
    assert call.auth == "none"
    assert call.headers["accept"] == "application/vnd.github+json"

    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text(encoding="utf-8")
    assert text.startswith("# local settings\nGROQ_API_KEY=gsk_keep_me\n")
    assert "REDIS_URL=redis://127.0.0.1:6379/0\n" in text
    for key in ("APP_ID", "PRIVATE_KEY", "WEBHOOK_SECRET", "GITHUB_CLIENT_ID"):
        assert text.count(f"\n{key}=") == 1, key
    assert "GITHUB_CLIENT_SECRET=" in text
    # One line per key: the PEM's newlines are escaped inside double quotes.
    assert 'PRIVATE_KEY="-----BEGIN RSA PRIVATE KEY-----\\nMII' in text

    loaded = load_settings(process_environ(env, environ={}))
    assert loaded.app_id == conversion["id"]
    assert loaded.private_key is not None
    assert loaded.private_key.get_secret_value() == conversion["pem"]
    assert private_key(loaded) == conversion["pem"]
    assert loaded.webhook_secret is not None
    assert loaded.webhook_secret.get_secret_value() == conversion["webhook_secret"]
    assert loaded.groq_api_key is not None
    assert loaded.groq_api_key.get_secret_value() == "gsk_keep_me"

    assert "restart" in caplog.text.lower()
    for secret in ("pem", "webhook_secret", "client_secret"):
        assert conversion[secret] not in caplog.text
        assert conversion[secret] not in reply.text

    # The state is spent, and the page now asks for a restart instead of a second app.
    again = client.get("/setup/callback", params={"code": "code-1", "state": state})
    assert again.status_code == 400
    page = client.get("/")
    assert "Restart" in page.text
    assert forms_of(page.text) == []


def test_callback_refuses_to_overwrite_written_credentials(
    fake: FakeGitHub, tmp_path: Path
) -> None:
    env = tmp_path / ".env"
    env.write_text('APP_ID=5\nPRIVATE_KEY="-----BEGIN KEY-----\\nold\\n"\n', encoding="utf-8")
    fake.add_manifest_code("code-2")
    store = MemoryStateStore()
    store.put("planted", 60)
    client = client_for(unconfigured(fake), env, store=store)

    reply = client.get("/setup/callback", params={"code": "code-2", "state": "planted"})

    assert reply.status_code == 409
    assert "APP_ID" in reply.text
    assert "old" in env.read_text(encoding="utf-8")
    assert fake.calls_to("POST", "/app-manifests/{code}/conversions") == []


def test_unknown_code_shows_how_to_start_again(fake: FakeGitHub, tmp_path: Path) -> None:
    client = client_for(unconfigured(fake), tmp_path / ".env")
    _, state = start_setup(client)

    reply = client.get("/setup/callback", params={"code": "never-issued", "state": state})

    assert reply.status_code == 400
    assert "expires after one hour" in reply.text
    assert 'href="http://testserver/"' in reply.text
    assert not (tmp_path / ".env").exists()
    # The state was spent on the failed attempt.
    fake.add_manifest_code("never-issued")
    assert client.get("/setup/callback", params={"code": "x", "state": state}).status_code == 400


def test_github_5xx_keeps_the_state_so_a_reload_retries(fake: FakeGitHub, tmp_path: Path) -> None:
    conversion = fake.add_manifest_code("code-3")
    fake.inject("POST", "/app-manifests/{code}/conversions", status=502)
    client = client_for(unconfigured(fake), tmp_path / ".env")
    _, state = start_setup(client)
    params = {"code": "code-3", "state": state}

    failed = client.get("/setup/callback", params=params, follow_redirects=False)
    assert failed.status_code == 502
    assert "Reload this page" in failed.text

    retried = client.get("/setup/callback", params=params, follow_redirects=False)
    assert retried.status_code == 302
    assert retried.headers["location"] == f"{conversion['html_url']}/installations/new"


def test_unreachable_api_is_a_502_page(fake: FakeGitHub, tmp_path: Path) -> None:
    settings = unconfigured(fake, github_api_url=f"http://127.0.0.1:{free_port()}")
    client = client_for(settings, tmp_path / ".env")
    _, state = start_setup(client)

    reply = client.get("/setup/callback", params={"code": "c", "state": state})

    assert reply.status_code == 502
    assert "Could not reach GitHub" in reply.text


def test_injected_http_client_is_used(fake: FakeGitHub, tmp_path: Path) -> None:
    conversion = fake.add_manifest_code("code-4")
    with httpx.Client(headers={"X-Test": "injected"}) as http:
        client = client_for(unconfigured(fake), tmp_path / ".env", http=http)
        _, state = start_setup(client)
        reply = client.get(
            "/setup/callback", params={"code": "code-4", "state": state}, follow_redirects=False
        )
    assert reply.headers["location"] == f"{conversion['html_url']}/installations/new"
    (call,) = fake.calls_to("POST", "/app-manifests/{code}/conversions")
    assert call.headers["x-test"] == "injected"


def test_github_enterprise_urls_come_from_settings(fake: FakeGitHub, tmp_path: Path) -> None:
    # The fake has no /api/v3 prefix: it answers 404, but it records where the call went.
    settings = unconfigured(
        fake, github_url="https://ghe.example.com", github_api_url=fake.url + "api/v3"
    )
    client = client_for(settings, tmp_path / ".env")

    form, state = start_setup(client)
    assert form["action"].startswith("https://ghe.example.com/settings/apps/new?state=")
    org_form = forms_of(client.get("/", params={"org": "acme"}).text)[0]
    assert org_form["action"].startswith(
        "https://ghe.example.com/organizations/acme/settings/apps/new?state="
    )

    reply = client.get("/setup/callback", params={"code": "ghe-code", "state": state})
    assert reply.status_code == 400
    assert [c.path for c in fake.calls] == ["/api/v3/app-manifests/ghe-code/conversions"]


# -- pieces ------------------------------------------------------------------------------------


def test_render_env_replaces_multiline_values_and_keeps_the_rest() -> None:
    existing = 'A=1\nPRIVATE_KEY="-----BEGIN\nold\n-----END"\n# note\nexport APP_ID=3\nB=2'

    text = render_env(existing, {"APP_ID": "9", "PRIVATE_KEY": 'x"y\\z\n'})

    assert text == 'A=1\n# note\nB=2\nAPP_ID="9"\nPRIVATE_KEY="x\\"y\\\\z\\n"\n'


def test_memory_state_store_is_single_use_and_bounded() -> None:
    clock = Clock()
    store = MemoryStateStore(clock=clock, limit=2)
    store.put("a", 10)
    store.put("b", 10)
    store.put("c", 10)  # evicts the oldest

    assert not store.take("a")
    assert store.take("b")
    assert not store.take("b")
    clock.now += 11
    assert not store.take("c")


def test_redis_state_store_is_single_use_and_expires(redis_client: redis.Redis) -> None:
    store = RedisStateStore(redis_client)
    store.put("s1", 60)
    store.put("s2", 0.05)

    assert store.take("s1")
    assert not store.take("s1")
    time.sleep(0.15)
    assert not store.take("s2")
