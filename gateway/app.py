"""Build the aiohttp application: routes, middleware and every long-lived resource.

Start-up and shutdown read top to bottom in `_resources`: open and migrate the database,
sync plans from the config, start the key-cache refresher, open one client session per
provider; then the same in reverse on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from gateway.config import Config, PlanConfig, ProviderConfig
from gateway.keycache import KeyCache
from gateway.middleware import errors_middleware
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.demo import DemoProvider
from gateway.providers.openai import OpenAIProvider
from gateway.relay import api_key_from, handle_messages, parse_request
from gateway.routing import listed_models
from gateway.state import CONFIG, STATE, GatewayState
from gateway.storage import Database, open_database


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
    keys = KeyCache(db)
    state = GatewayState(config=config, db=db, keys=keys, started_at=time.time())
    state.providers = {p.name: make_provider(p) for p in config.providers}
    app[STATE] = state
    refresher = asyncio.create_task(keys.run_refresher(), name="key-cache-refresher")
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        for provider in state.providers.values():
            await provider.close()
        await db.close()


async def handle_count_tokens(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.keys.authenticate(api_key_from(request))
    body = parse_request(await request.read(), count_only=True)
    return web.json_response({"input_tokens": estimate_input_tokens(body)},
                             dumps=lambda o: orjson.dumps(o).decode())


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
    """Overall status and per-provider state (also shown on the admin page)."""
    providers = {name: {"status": "ok", "protocol": p.config.protocol}
                 for name, p in state.providers.items()}
    return {"status": "ok", "uptime_s": round(time.time() - state.started_at),
            "providers": providers}


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response(health_snapshot(request.app[STATE]))
