"""Register the GitHub App from `app.yml` with GitHub's manifest flow, as Probot does.

`GET /` on a server without credentials shows a button that posts the manifest (app.yml with
this server's public URLs filled in) to `{github_url}/settings/apps/new?state=...`. GitHub
creates the app and sends the browser to `GET /setup/callback?code=...&state=...`; the code is
exchanged at `POST {github_api_url}/app-manifests/{code}/conversions` and the credentials are
written to `.env` (APP_ID, PRIVATE_KEY, WEBHOOK_SECRET, GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET,
mode 0600). The browser then goes on to `{html_url}/installations/new`.

Decisions:
- No in-process reload. The worker is another process and `create_app` closed over its
  `Settings`, so swapping them under running requests would be neither cheap nor safe. The
  success path logs a warning that the web app and the worker must be restarted, and until
  then `GET /` shows a "restart" page (never a second form) because `.env` already holds
  credentials the process did not load. The callback refuses to overwrite them for the same
  reason: to register another app, remove APP_ID and PRIVATE_KEY from `.env` first.
- The `state` is random, single-use and expires after `STATE_TTL_SECONDS`. It lives in a
  `StateStore`: `MemoryStateStore` for one web process, `RedisStateStore` when several
  processes serve the web app. A state is put back only when the exchange failed on GitHub's
  side (5xx, network), so reloading the callback page retries with the same code.
- Secrets (pem, webhook secret, client secret) are never logged or rendered.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
import redis
import yaml
from dotenv import dotenv_values
from dotenv.parser import parse_stream
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bot.config import Settings
from bot.errors import ConfigError, ConversionFailed
from bot.keys import SETUP_STATE_PREFIX

log = logging.getLogger("tdd_agent.setup")

# Package data: an installed wheel carries it next to this module.
APP_YML = Path(__file__).with_name("app.yml")
# Long enough to sign in to GitHub (with 2FA) and pick a free app name; short enough that a
# leaked set-up page is soon useless.
STATE_TTL_SECONDS = 15 * 60
PAGE_ROUTE = "tdd_setup_page"
CALLBACK_ROUTE = "tdd_setup_callback"
# GitHub's REST headers; 2022-11-28 is the version every GitHub Enterprise Server still serves.
CONVERSION_HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
    "User-Agent": "tdd-agent-setup",
}
ENV_KEYS = ("APP_ID", "PRIVATE_KEY", "WEBHOOK_SECRET", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")
_ORG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


# -- app.yml -----------------------------------------------------------------------------------


def load_manifest(path: Path) -> dict[str, Any]:
    """Read the manifest template (Probot's app.yml) as a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the app manifest {path}: {exc}; "
            "reinstall tdd-agent (app.yml ships in bot/github/)"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a YAML mapping (name, url, hook_attributes, ...)")
    return data


def build_manifest(
    template: Mapping[str, Any], *, home_url: str, webhook_url: str, redirect_url: str
) -> dict[str, Any]:
    """app.yml with this server's URLs in place of the placeholders."""
    manifest = dict(template)
    hook = manifest.get("hook_attributes") or {}
    if not isinstance(hook, Mapping):
        raise ConfigError("app.yml: hook_attributes must be a mapping (url, active)")
    manifest["url"] = home_url
    manifest["hook_attributes"] = {**hook, "url": webhook_url}
    manifest["redirect_url"] = redirect_url
    return manifest


# -- state -------------------------------------------------------------------------------------


class StateStore(Protocol):
    """Server-side memory of the `state` values handed out, each usable once."""

    def put(self, state: str, ttl: float) -> None: ...

    def take(self, state: str) -> bool:
        """Forget `state`; True only if it was known and had not expired."""
        ...


class MemoryStateStore:
    """States in this process's memory; enough for a single web process."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, limit: int = 1000) -> None:
        self._clock = clock
        # GET / is unauthenticated on an unconfigured server: bound what it can make us hold.
        self._limit = limit
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def put(self, state: str, ttl: float) -> None:
        now = self._clock()
        with self._lock:
            for old in [s for s, at in self._expiry.items() if at <= now]:
                del self._expiry[old]
            while len(self._expiry) >= self._limit:
                del self._expiry[next(iter(self._expiry))]
            self._expiry[state] = now + ttl

    def take(self, state: str) -> bool:
        with self._lock:
            expires_at = self._expiry.pop(state, None)
        return expires_at is not None and expires_at > self._clock()


class RedisStateStore:
    """States in Redis, shared by every web process; Redis expires them."""

    def __init__(self, client: redis.Redis, *, prefix: str = SETUP_STATE_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    def put(self, state: str, ttl: float) -> None:
        self._client.set(self._prefix + state, "1", px=max(1, int(ttl * 1000)))

    def take(self, state: str) -> bool:
        # DEL is atomic, so of two concurrent callbacks with one state only one wins.
        return bool(self._client.delete(self._prefix + state))


# -- .env --------------------------------------------------------------------------------------


def format_env_value(value: str) -> str:
    """Double-quote `value` with escapes python-dotenv (pydantic-settings' reader) decodes."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{escaped}"'


def render_env(existing: str, values: Mapping[str, str]) -> str:
    """`existing` .env text with `values` set: other lines kept verbatim, old copies dropped."""
    kept = [
        binding.original.string
        for binding in parse_stream(io.StringIO(existing))
        if binding.key not in values
    ]
    text = "".join(kept)
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(f"{key}={format_env_value(value)}\n" for key, value in values.items())


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Set `values` in the .env file at `path` atomically, leaving it readable by owner only."""
    target = Path(os.path.realpath(path))
    try:
        existing = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = ""
    content = render_env(existing, values)
    fd, tmp_name = tempfile.mkstemp(prefix=".env.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates the file 0600, so the secrets are never readable by others.
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def env_has_credentials(path: Path) -> bool:
    """True when the .env file at `path` already holds an app id and a private key."""
    try:
        values = dotenv_values(path, interpolate=False)
    except OSError:
        return False
    return bool(values.get("APP_ID")) and bool(
        values.get("PRIVATE_KEY") or values.get("PRIVATE_KEY_PATH")
    )


def settings_have_credentials(settings: Settings) -> bool:
    has_key = (
        settings.private_key is not None and bool(settings.private_key.get_secret_value().strip())
    ) or settings.private_key_path is not None
    return settings.app_id is not None and has_key


# -- the code exchange -------------------------------------------------------------------------


@dataclass(frozen=True)
class AppCredentials:
    """What GitHub returns for a new app; `repr` keeps the secrets out of logs."""

    app_id: int
    slug: str
    html_url: str
    pem: str
    webhook_secret: str | None
    client_id: str | None
    client_secret: str | None

    def __repr__(self) -> str:
        return f"AppCredentials(app_id={self.app_id}, slug={self.slug!r}, html_url=...)"

    def env_values(self) -> dict[str, str]:
        values = {"APP_ID": str(self.app_id), "PRIVATE_KEY": self.pem}
        optional = {
            "WEBHOOK_SECRET": self.webhook_secret,
            "GITHUB_CLIENT_ID": self.client_id,
            "GITHUB_CLIENT_SECRET": self.client_secret,
        }
        values.update({k: v for k, v in optional.items() if v})
        return values


def convert_code(client: httpx.Client, *, api_url: str, code: str) -> AppCredentials:
    """Exchange a manifest code for the new app's credentials (no auth; single use)."""
    url = f"{api_url.rstrip('/')}/app-manifests/{quote(code, safe='')}/conversions"
    again = "Reload this page to try again (the code stays valid for one hour)."
    try:
        response = client.post(url, headers=CONVERSION_HEADERS)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ConversionFailed(
            f"Could not reach GitHub's API at {api_url} ({type(exc).__name__}: {exc}). "
            f"Check GITHUB_API_URL and the network. {again}",
            status=502,
            retry=True,
        ) from exc
    if response.status_code in (404, 422):
        raise ConversionFailed(
            "GitHub does not know this code: it was used already or has expired (the code "
            "expires after one hour).",
            status=400,
            retry=False,
        )
    if response.status_code >= 500:
        raise ConversionFailed(
            f"GitHub answered HTTP {response.status_code} to the code exchange. {again}",
            status=502,
            retry=True,
        )
    if response.status_code not in (200, 201):
        raise ConversionFailed(
            f"GitHub refused the code exchange with HTTP {response.status_code}: "
            f"{_github_message(response)}.",
            status=502,
            retry=False,
        )
    try:
        body = response.json()
        return AppCredentials(
            app_id=int(body["id"]),
            slug=str(body.get("slug") or ""),
            html_url=_http_url(body["html_url"]),
            pem=_text(body["pem"]),
            webhook_secret=body.get("webhook_secret") or None,
            client_id=body.get("client_id") or None,
            client_secret=body.get("client_secret") or None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionFailed(
            f"GitHub's answer to the code exchange lacks a field ({type(exc).__name__}: "
            f"{exc}); is GITHUB_API_URL ({api_url}) really GitHub's REST API?",
            status=502,
            retry=False,
        ) from exc


def _github_message(response: httpx.Response) -> str:
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or response.reason_phrase)[:200]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _http_url(value: Any) -> str:
    text = _text(value).rstrip("/")
    if urlsplit(text).scheme not in ("http", "https"):
        raise ValueError(f"html_url is not an http(s) URL: {text!r}")
    return text


# -- pages -------------------------------------------------------------------------------------


def _page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    document = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 42rem; margin: 3rem auto;
  padding: 0 1rem; line-height: 1.5; color: #1f2328; }}
code {{ background: #f6f8fa; padding: 0.1rem 0.3rem; border-radius: 4px; }}
button {{ font-size: 1rem; padding: 0.6rem 1.2rem; border-radius: 6px; border: 0;
  background: #1f883d; color: #fff; cursor: pointer; }}
.error {{ border-left: 4px solid #cf222e; padding-left: 1rem; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{body}
</body>
</html>
"""
    # Pages carry one-time states and setup status: never cache them.
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(document, status_code=status, headers=headers)


def _first(header: str | None) -> str:
    # Proxies append: "https, http" means the outermost hop spoke https.
    return (header or "").split(",")[0].strip()


def public_origin(request: Request) -> str:
    """scheme://host as the browser sees it, trusting X-Forwarded-Proto/-Host when sane."""
    proto = _first(request.headers.get("x-forwarded-proto")).lower()
    if proto not in ("http", "https"):
        proto = request.url.scheme
    host = _first(request.headers.get("x-forwarded-host"))
    if not _HOST.fullmatch(host):
        host = request.url.netloc
    return f"{proto}://{host}"


def _route_path(request: Request, name: str) -> str:
    # url_for knows the router's mount prefix and the ASGI root_path; keep only the path.
    return urlsplit(str(request.url_for(name))).path


def setup_router(
    *,
    settings: Settings,
    env_path: Path,
    http: httpx.Client | None = None,
    manifest_path: Path = APP_YML,
    state_store: StateStore | None = None,
) -> APIRouter:
    """Routes `GET /` (set-up or status page) and `GET /setup/callback` (GitHub's redirect)."""
    store: StateStore = state_store if state_store is not None else MemoryStateStore()
    github_url = settings.github_url.rstrip("/")
    write_lock = threading.Lock()
    router = APIRouter()

    def urls(request: Request) -> tuple[str, str, str]:
        origin = public_origin(request)
        root_path = str(request.scope.get("root_path") or "").rstrip("/")
        home = origin + _route_path(request, PAGE_ROUTE)
        webhook = origin + root_path + settings.webhook_path
        callback = origin + _route_path(request, CALLBACK_ROUTE)
        return home, webhook, callback

    def restart_page() -> HTMLResponse:
        return _page(
            "Restart tdd-agent",
            f"<p>The GitHub App's credentials are in <code>{html.escape(str(env_path))}</code>, "
            "but this process started before they were written. Restart the web app and the "
            "worker so that they load them.</p>"
            "<p>To register a different app instead, remove <code>APP_ID</code> and "
            f"<code>PRIVATE_KEY</code> from <code>{html.escape(str(env_path))}</code> and "
            "restart.</p>",
        )

    def error_page(message: str, *, status: int, home: str, retry: bool = False) -> HTMLResponse:
        advice = (
            "<p>Reload this page to try again, or start again at "
            if retry
            else "<p>Start again at "
        )
        return _page(
            "GitHub App set-up failed",
            f'<p class="error">{html.escape(message)}</p>'
            f'{advice}<a href="{html.escape(home)}">{html.escape(home)}</a>.</p>',
            status=status,
        )

    @router.get("/", name=PAGE_ROUTE, response_class=HTMLResponse)
    def setup_page(request: Request, org: str | None = None) -> Response:
        home, webhook, callback = urls(request)
        if settings_have_credentials(settings):
            return _status_page(settings, github_url=github_url, webhook_url=webhook)
        if env_has_credentials(env_path):
            return restart_page()
        if org is not None and not _ORG.fullmatch(org):
            return error_page(
                f"{org!r} is not a GitHub organisation name (letters, digits and hyphens).",
                status=400,
                home=home,
            )
        try:
            template = load_manifest(manifest_path)
            manifest = build_manifest(
                template, home_url=home, webhook_url=webhook, redirect_url=callback
            )
        except ConfigError as exc:
            return error_page(str(exc), status=500, home=home)
        state = secrets.token_urlsafe(24)
        store.put(state, STATE_TTL_SECONDS)
        owner = f"/organizations/{quote(org)}" if org else ""
        action = f"{github_url}{owner}/settings/apps/new?state={quote(state)}"
        where = f"the organisation <code>{html.escape(org)}</code>" if org else "your account"
        return _page(
            "Register tdd-agent as a GitHub App",
            "<p>This server has no GitHub App credentials yet. The button sends the app's "
            f"manifest (<code>app.yml</code>) to {html.escape(github_url)}, where you create "
            f"the app for {where}. GitHub then sends you back here, and this server stores the "
            "app's ID, private key and webhook secret in "
            f"<code>{html.escape(str(env_path))}</code>.</p>"
            f"<p>GitHub will deliver webhooks to <code>{html.escape(webhook)}</code>: it must "
            "be reachable from GitHub.</p>"
            f'<form action="{html.escape(action)}" method="post">'
            f'<input type="hidden" name="manifest" value="{html.escape(json.dumps(manifest))}">'
            '<button type="submit">Create the GitHub App</button></form>'
            "<p>To create it for an organisation, open this page with "
            "<code>?org=ORGANISATION</code>. The link above expires in "
            f"{STATE_TTL_SECONDS // 60} minutes.</p>",
        )

    @router.get("/setup/callback", name=CALLBACK_ROUTE, response_class=HTMLResponse)
    def setup_callback(
        request: Request, code: str | None = None, state: str | None = None
    ) -> Response:
        home, _, _ = urls(request)
        if not state:
            return error_page(
                "The request has no state parameter, so it did not come from this server's "
                "set-up page.",
                status=400,
                home=home,
            )
        if not store.take(state):
            return error_page(
                "Unknown or expired state: set-up links work once and expire after "
                f"{STATE_TTL_SECONDS // 60} minutes.",
                status=400,
                home=home,
            )
        if settings_have_credentials(settings) or env_has_credentials(env_path):
            return error_page(
                f"This server already has GitHub App credentials in {env_path}. To register "
                "another app, remove APP_ID and PRIVATE_KEY from it and restart first.",
                status=409,
                home=home,
            )
        if not code:
            return error_page("GitHub sent no code.", status=400, home=home)
        try:
            if http is not None:
                credentials = convert_code(http, api_url=settings.github_api_url, code=code)
            else:
                with httpx.Client(timeout=15.0) as client:
                    credentials = convert_code(client, api_url=settings.github_api_url, code=code)
        except ConversionFailed as exc:
            log.error("GitHub App set-up: code exchange failed: %s", exc)
            if exc.retry:
                store.put(state, STATE_TTL_SECONDS)
            return error_page(str(exc), status=exc.status, home=home, retry=exc.retry)
        try:
            with write_lock:
                write_env_file(env_path, credentials.env_values())
        except OSError as exc:
            log.error("GitHub App set-up: cannot write %s: %s", env_path, exc)
            return error_page(
                f"GitHub created app {credentials.app_id} but {env_path} could not be written "
                f"({exc.strerror or exc}). Fix the file's permissions, then download a private "
                f"key at {credentials.html_url} and set APP_ID, PRIVATE_KEY and WEBHOOK_SECRET "
                "yourself, or delete the app there and start again.",
                status=500,
                home=home,
            )
        if credentials.webhook_secret is None:
            log.warning("GitHub returned no webhook secret; set one in the app and WEBHOOK_SECRET")
        log.warning(
            "GitHub App %s (id %d, %s) registered; credentials written to %s. Restart the web "
            "app and the worker to load them.",
            credentials.slug or "?",
            credentials.app_id,
            credentials.html_url,
            env_path,
        )
        return RedirectResponse(f"{credentials.html_url}/installations/new", status_code=302)

    return router


def _status_page(settings: Settings, *, github_url: str, webhook_url: str) -> HTMLResponse:
    apps = f"{github_url}/settings/apps"
    return _page(
        "tdd-agent is running",
        f"<p>GitHub App ID <code>{settings.app_id}</code>; webhooks arrive at "
        f"<code>{html.escape(webhook_url)}</code>.</p>"
        "<p>Install it on a repository: open "
        f'<a href="{html.escape(apps)}">{html.escape(apps)}</a> (for an organisation\'s app: '
        "the organisation's Settings → Developer settings → GitHub Apps), choose the app, then "
        "<em>Install App</em>. Then label an issue "
        f"<code>{html.escape(settings.trigger_label)}</code>.</p>",
    )
