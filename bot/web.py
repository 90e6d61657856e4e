"""The web app: webhook intake, health, and the GitHub App set-up flow.

The webhook handler only verifies, routes and enqueues: GitHub wants an answer within
10 seconds, and the work (minutes) happens in the RQ worker.

A request body must arrive within `body_timeout` (else 408 and the connection is closed),
and at most `max_pending_bodies` bodies may still be arriving at once (beyond that, 503 with
Retry-After). A body that came with its headers takes no such slot, so deliveries still get
through while slow clients hold them all. These limits only cover bodies: uvicorn waits for
headers without a deadline, so production should still sit behind a proxy or platform
router that times out and caps slow clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from rq import Queue
from starlette.requests import ClientDisconnect

from bot import wiring
from bot.config import Settings, load_settings, process_environ
from bot.errors import BodyTimeout, BodyTooLarge, IntakeBusy, WebhookRejected
from bot.github.setup_flow import RedisStateStore, setup_router
from bot.github.webhooks import MAX_BODY_BYTES, Ignore, parse_delivery, route
from bot.keys import delivery_key
from jobs.queue import enqueue

log = logging.getLogger("tdd_agent.web")
DELIVERY_TTL = 7 * 24 * 3600
# A body sent right behind its headers can land a moment after them; waiting this long
# for it costs no slot, so a full house of slow clients cannot turn deliveries away.
SLOTLESS_WAIT = 0.05


@dataclass
class BodySlots:
    """Bodies still arriving, capped: each holds a socket and a buffer. A plain counter:
    the check and the increment never yield to the event loop in between."""

    limit: int
    in_use: int = 0


class _BodyReader:
    """Reads one request body under a deadline; raises `WebhookRejected` subclasses, or
    `ClientDisconnect` with the byte count so far."""

    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.more = True

    async def until(self, when: float) -> None:
        """Read until the body is complete or `when` (loop time) passes (TimeoutError).
        Reading `receive()` directly: a timed-out wait must lose no bytes, and a cancelled
        `request.stream()` generator cannot be resumed."""
        async with asyncio.timeout_at(when):
            while self.more:
                message = await self.request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect(self.size)
                chunk = message.get("body", b"")
                self.size += len(chunk)
                if self.size > self.limit:
                    raise BodyTooLarge
                self.chunks.append(chunk)
                self.more = message.get("more_body", False)

    async def read(self, *, timeout: float, slots: BodySlots) -> bytes:
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise BodyTooLarge
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self.until(min(deadline, loop.time() + SLOTLESS_WAIT))
        except TimeoutError:
            if slots.in_use >= slots.limit:
                raise IntakeBusy(retry_after=math.ceil(timeout)) from None
            slots.in_use += 1
            try:
                await self.until(deadline)
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            finally:
                slots.in_use -= 1
        return b"".join(self.chunks)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    queue: Queue | None = None,
    env_path: Path = Path(".env"),
    body_timeout: float = 10.0,
    max_pending_bodies: int = 100,
) -> FastAPI:
    """Build the app; production passes nothing, tests pass settings and a Redis client.

    `body_timeout` (seconds) and `max_pending_bodies` bound slow request bodies."""
    settings = settings or load_settings(process_environ(env_path))
    if redis_client is None:
        redis_client = wiring.redis_client(settings, embedded=False)
    queue = queue or Queue(settings.queue_name, connection=redis_client)
    job_timeout = wiring.run_deadline(settings)
    app = FastAPI(title="tdd-agent", docs_url=None, redoc_url=None)
    app.include_router(
        setup_router(
            settings=settings, env_path=env_path, state_store=RedisStateStore(redis_client)
        )
    )
    app.state.settings = settings
    app.state.redis = redis_client
    app.state.queue = queue
    app.state.body_slots = slots = BodySlots(max_pending_bodies)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            redis_client.ping()
        except (redis.RedisError, OSError) as exc:
            return JSONResponse({"ok": False, "redis": f"unreachable: {exc}"}, status_code=503)
        return JSONResponse({"ok": True, "redis": "ok", "queued": queue.count})

    def accept(body: bytes, headers: dict[str, str]) -> JSONResponse:
        """Verify, route, deduplicate and enqueue (two Redis round trips)."""
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        try:
            delivery = parse_delivery(headers, body, secret=secret)
        except WebhookRejected as exc:
            return _error(exc.status, str(exc))
        if delivery.event == "ping":
            return JSONResponse({"ok": True, "pong": delivery.payload.get("zen", "")})
        try:
            action = route(delivery.event, delivery.payload, trigger_label=settings.trigger_label)
        except WebhookRejected as exc:
            # Signed, so GitHub sent it (or someone has the secret): worth a line.
            log.warning("rejected delivery %s (%s): %s", delivery.id, delivery.event, exc)
            return _error(exc.status, str(exc))
        if isinstance(action, Ignore):
            return JSONResponse({"ignored": action.reason}, status_code=202)
        if not delivery.id:
            return _error(400, "X-GitHub-Delivery header is missing")
        key = delivery_key(delivery.id)
        try:
            first_time = redis_client.set(key, delivery.event, nx=True, ex=DELIVERY_TTL)
            if not first_time:
                return JSONResponse({"duplicate": delivery.id}, status_code=200)
            job_id = enqueue(queue, action, delivery=delivery.id, timeout=job_timeout)
        except (redis.RedisError, OSError) as exc:
            # Forget the delivery so that GitHub's manual redelivery can succeed later.
            with contextlib.suppress(redis.RedisError, OSError):
                redis_client.delete(key)
            log.error("could not enqueue delivery %s: %s", delivery.id, exc)
            return _error(503, "queue unavailable; redeliver this webhook later")
        return JSONResponse({"queued": job_id}, status_code=202)

    @app.post(settings.webhook_path)
    async def webhook(request: Request) -> JSONResponse:
        try:
            body = await _BodyReader(request, MAX_BODY_BYTES).read(
                timeout=body_timeout, slots=slots
            )
        except ClientDisconnect as exc:
            # Routine on the internet: a line, not a traceback.
            log.info("webhook client disconnected after %s body bytes", exc.args[0])
            return _error(400, "client disconnected")
        except WebhookRejected as exc:
            if not isinstance(exc, BodyTooLarge):
                log.info("webhook body refused: %s", exc)
            # The rest of the body is never read, so the connection cannot carry another
            # request: close it rather than leave it to a stalled client.
            headers = {"Connection": "close"}
            if isinstance(exc, IntakeBusy):
                headers["Retry-After"] = str(exc.retry_after)
            return _error(exc.status, str(exc), headers)
        # Inline on purpose: the work is ~0.4 ms against a local Redis, and a thread hop
        # measured slower (bench/webhook.py: throughput 0.22x vs 0.33x of hello-world).
        return accept(body, dict(request.headers))

    return app
