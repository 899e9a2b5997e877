"""Build the aiohttp application: routes, middleware and every long-lived resource.

Start-up and shutdown read top to bottom in `_resources`: open and migrate the database,
sync plans from the config, start the key-cache refresher, open one client session per
provider; then the same in reverse on the way out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from gateway.access_log import AccessLog
from gateway.accounting.keycache import KeyCache
from gateway.accounting.limits import Limits
from gateway.accounting.usage import NoopRecorder, UsageRecorder
from gateway.api.messages import FORWARDED_HEADERS, api_key_from, handle_messages, parse_request
from gateway.api.middleware import errors_middleware
from gateway.billing.payments import Payments
from gateway.config import Config, PlanConfig, ProviderConfig
from gateway.metrics import Gauge
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Call, Provider
from gateway.providers.demo import DemoProvider
from gateway.providers.openai import OpenAIProvider
from gateway.relay.breaker import STATE_VALUE, Breaker
from gateway.relay.health_checks import HealthChecker, cancel
from gateway.relay.routing import listed_models, plan_route
from gateway.remote.hub import RemoteHub, ViewerAuth
from gateway.state import CONFIG, REQUEST_ID, STATE, GatewayState
from gateway.store.sqlite import Database, open_database
from web.sessions import signed_in_user
from web.site import setup_site


def build_app(config: Config) -> web.Application:
    """The whole gateway as one aiohttp application (used by `serve` and by tests)."""
    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/messages", handle_messages)
    app.router.add_post("/v1/messages/count_tokens", handle_count_tokens)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/remote-ws", handle_remote_ws)
    app.on_shutdown.append(close_websockets)
    setup_site(app, config)  # pages, /api/auth|dashboard|admin, sessions, CSRF, static files
    return app


def make_provider(config: ProviderConfig) -> Provider:
    """One provider object per protocol; vendors differ only by their config."""
    if config.protocol == "openai":
        return OpenAIProvider(config)
    if config.protocol == "anthropic":
        return AnthropicProvider(config)
    return DemoProvider(config)


async def sync_plans(db: Database, plans: tuple[PlanConfig, ...]) -> None:
    """Make the plans table match the config (built-in plans plus `[[plans]]` overrides)."""
    now = time.time()
    async with db.transaction() as tx:
        for order, plan in enumerate(plans):
            await tx.execute("plan_upsert", {
                "name": plan.name, "price_month": format_price(plan.price_month),
                "monthly_tokens": plan.monthly_tokens, "rpm": plan.rpm, "rpd": plan.rpd,
                "max_keys": plan.max_keys, "max_input_tokens": plan.max_input_tokens,
                "sort_order": order, "now": now,
            })


def format_price(value: float) -> str:
    """Money as a decimal string: 9 -> "9", 9.9 -> "9.90"."""
    return str(int(value)) if value == int(value) else f"{value:.2f}"


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    db = await open_database(config.database_path)
    await sync_plans(db, config.plans)
    routing = config.routing
    breakers = {p.name: Breaker(routing.breaker_failures, routing.breaker_cooldown)
                for p in config.providers}
    plans = {p.name: p for p in config.plans}
    limits = Limits(db, plans) if config.server.accounting else None
    recorder: UsageRecorder | NoopRecorder = (
        UsageRecorder(db, limits, {p.name: p for p in config.providers}) if limits
        else NoopRecorder())
    state = GatewayState(
        config=config, db=db, keys=KeyCache(db, on_change=limits.forget if limits else None),
        limits=limits, recorder=recorder,
        health=HealthChecker(config.providers, breakers, routing.health_interval),
        breakers=breakers, started_at=time.time())
    state.providers = {p.name: make_provider(p) for p in config.providers}
    state.remote = RemoteHub(db, state.keys, config.remote, config.public_url,
                             viewer_user=signed_in_user_id(db))
    state.payments = payments = await Payments.open(config, db, limits, state.keys)
    if config.server.access_log:
        state.access_log = AccessLog()
    register_gauges(state)
    app[STATE] = state
    recorder.start()
    tasks = [asyncio.create_task(state.keys.run_refresher(), name="key-cache-refresher"),
             asyncio.create_task(keepalive_pings(state), name="keepalive-pings")]
    tasks.append(asyncio.create_task(state.remote.run_sweeper(), name="remote-sweeper"))
    if state.access_log is not None:
        tasks.append(asyncio.create_task(state.access_log.run(), name="access-log"))
    tasks.append(asyncio.create_task(payments.run(), name="payment-reconciler"))
    if routing.health_interval > 0 and state.health.providers:
        tasks.append(asyncio.create_task(state.health.run(), name="health-checker"))
    try:
        yield
    finally:
        for task in tasks:
            await cancel(task)
        await state.remote.close_all()
        await recorder.stop()  # drains the queue: a clean shutdown loses no usage row
        for provider in state.providers.values():
            await provider.close()
        await payments.close()
        await db.close()


PING = b'event: ping\ndata: {"type":"ping"}\n\n'
PING_AFTER = 15.0  # seconds of silence before a keep-alive ping (pitfall 10)


async def keepalive_pings(state: GatewayState) -> None:
    """One task for all streams: a `ping` to any stream silent for 15 s, so proxies and
    clients keep the connection open while an upstream thinks."""
    while True:
        await asyncio.sleep(PING_AFTER / 3)
        now = time.monotonic()
        for response, last in list(state.streams.items()):
            if now - last >= PING_AFTER and response in state.streams:
                state.streams[response] = now
                try:
                    await response.write(PING)
                except (ConnectionError, RuntimeError):
                    state.streams.pop(response, None)


def register_gauges(state: GatewayState) -> None:
    state.metrics.add_gauge(Gauge("llmapi_active_streams", "Client streams open now", (),
                                  lambda: [((), len(state.streams))]))
    state.metrics.add_gauge(Gauge(
        "llmapi_breaker_state", "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
        ("provider",),
        lambda: [((name, ), STATE_VALUE[b.state]) for name, b in state.breakers.items()]))
    state.metrics.add_gauge(Gauge("llmapi_usage_queue", "Usage rows waiting to be written",
                                  (), lambda: [((), state.recorder.pending)]))


async def handle_count_tokens(request: web.Request) -> web.Response:
    """The first routed provider's own count when it offers one, else our estimate
    (method and measured error: gateway/protocol/token_estimate.py)."""
    state = request.app[STATE]
    await state.keys.authenticate(api_key_from(request))
    body = parse_request(await request.read(), count_only=True)
    count: int | None = None
    for option in plan_route(state.config.routing, state.config.providers, body,
                             body["model"])[:1]:
        call = Call(body=body, client_model=body["model"], upstream_model=option.upstream_model,
                    stream=False, request_id=request[REQUEST_ID], message_id="",
                    headers={h: request.headers[h] for h in FORWARDED_HEADERS
                             if h in request.headers})
        count = await state.providers[option.provider.name].count_tokens(call)
    if count is None:
        count = estimate_input_tokens(body)
    return web.Response(body=orjson.dumps({"input_tokens": count}),
                        content_type="application/json")


async def handle_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.keys.authenticate(api_key_from(request))
    names = listed_models(state.config.providers)
    created = "2025-01-01T00:00:00Z"
    data = [{"type": "model", "id": n, "display_name": n, "created_at": created} for n in names]
    return web.json_response({
        "data": data, "has_more": False,
        "first_id": names[0] if names else None, "last_id": names[-1] if names else None,
    })


def health_snapshot(state: GatewayState) -> dict[str, Any]:
    """Overall status and per-provider state (also shown on the admin page).

    A provider is usable while its breaker lets requests through and its last probe (if
    any) succeeded; the gateway is "ok" while at least one provider is usable.
    """
    providers: dict[str, Any] = {}
    for name, provider in state.providers.items():
        breaker = state.breakers[name]
        probe = state.health.snapshot(name)
        usable = breaker.usable and probe["probe_ok"] is not False
        providers[name] = {
            "status": "ok" if usable else "down", "protocol": provider.config.protocol,
            "breaker": breaker.state, "consecutive_failures": breaker.consecutive_failures,
            **probe,
        }
    ok = any(p["status"] == "ok" for p in providers.values())
    return {"status": "ok" if ok else "unavailable",
            "uptime_s": round(time.time() - state.started_at),
            "active_streams": len(state.streams), "providers": providers}


async def handle_health(request: web.Request) -> web.Response:
    snapshot = health_snapshot(request.app[STATE])
    return web.json_response(snapshot, status=200 if snapshot["status"] == "ok" else 503)


async def close_websockets(app: web.Application) -> None:
    """On shutdown, before in-flight requests are awaited: WebSockets never end by
    themselves, so close them (bridges reconnect to the next process)."""
    hub = app[STATE].remote if STATE in app else None
    if hub is not None:
        await hub.close_all()


async def handle_remote_ws(request: web.Request) -> web.StreamResponse:
    hub = request.app[STATE].remote
    if hub is None or not request.app[STATE].config.remote.enabled:
        raise web.HTTPNotFound(text="remote control is disabled")
    return await hub.handle(request)


def signed_in_user_id(db: Database) -> ViewerAuth:
    """The web session's user id, for the remote hub's viewer role."""
    async def load(user_id: int) -> Any:
        return await db.fetch_one("user_by_id", {"id": user_id})

    async def viewer(request: web.Request) -> int | None:
        user = await signed_in_user(request, load)
        return user.id if user is not None else None

    return viewer


async def handle_metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[STATE].metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
