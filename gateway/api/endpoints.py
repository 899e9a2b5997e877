"""The API's small endpoints beside the hot path: count_tokens, models, health, metrics,
the remote-control WebSocket, and the one table mounting every API route."""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from gateway import paths
from gateway.accounting.keycache import KEY_CACHE, api_key_from
from gateway.api.messages import FORWARDED_HEADERS, handle_messages, parse_request
from gateway.api.middleware import wants_openai_shape
from gateway.api.openai_ingress import handle_chat_completions, handle_responses
from gateway.config import CONFIG
from gateway.errors import ApiError
from gateway.ids import REQUEST_ID
from gateway.lifecycle import LIFECYCLE
from gateway.metrics import METRICS
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.providers.base import PROVIDERS, Call
from gateway.relay.routing import listed_models, plan_route
from gateway.remote.hub import REMOTE_HUB
from gateway.reports.health import dependency_report, health_snapshot


def add_api_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(paths.MESSAGES, handle_messages)
    r.add_post(paths.COUNT_TOKENS, handle_count_tokens)
    r.add_post(paths.CHAT_COMPLETIONS, handle_chat_completions)
    r.add_post(paths.RESPONSES, handle_responses)
    r.add_get(paths.MODELS, handle_models)
    r.add_get(paths.MODELS + "/{model_id}", handle_model)
    r.add_get(paths.HEALTH, handle_health)
    r.add_get(paths.HEALTH_READY, handle_ready)
    r.add_get(paths.METRICS, handle_metrics)
    r.add_get(paths.REMOTE_WS, handle_remote_ws)


async def handle_count_tokens(request: web.Request) -> web.Response:
    """The first routed provider's own count when it offers one, else our estimate
    (method and measured error: gateway/protocol/token_estimate.py)."""
    app = request.app
    await app[KEY_CACHE].authenticate(api_key_from(request))
    body = parse_request(await request.read(), count_only=True)
    config = app[CONFIG]
    count: int | None = None
    for option in plan_route(config.routing, config.providers, body, body["model"])[:1]:
        call = Call(body=body, client_model=body["model"], upstream_model=option.upstream_model,
                    stream=False, request_id=request[REQUEST_ID], message_id="",
                    headers={h: request.headers[h] for h in FORWARDED_HEADERS
                             if h in request.headers})
        count = await app[PROVIDERS][option.provider.name].count_tokens(call)
    if count is None:
        count = estimate_input_tokens(body)
    return web.Response(body=orjson.dumps({"input_tokens": count}),
                        content_type="application/json")


MODEL_CREATED = "2025-01-01T00:00:00Z"


def model_object(name: str) -> dict[str, str]:
    return {"type": "model", "id": name, "display_name": name, "created_at": MODEL_CREATED}


async def handle_model(request: web.Request) -> web.Response:
    """`GET /v1/models/{id}` (Anthropic API; the SDK's `models.retrieve`): any model name
    some provider serves, listed or not (routing also matches family words and `default`)."""
    await request.app[KEY_CACHE].authenticate(api_key_from(request))
    config = request.app[CONFIG]
    name = request.match_info["model_id"]
    if not plan_route(config.routing, config.providers, {"messages": []}, name):
        raise ApiError("not_found_error", f"model: {name}")
    return web.json_response(model_object(name))


MODELS_CREATED = 1735689600  # 2025-01-01, the same moment the Anthropic shape states


async def handle_models(request: web.Request) -> web.Response:
    """Anthropic's list to Anthropic clients, OpenAI's to OpenAI clients. The Anthropic SDKs
    and Claude Code always send `anthropic-version` (and often `x-api-key`); the OpenAI SDKs,
    Codex, Cursor, Cline, Continue and Aider send neither, only `Authorization: Bearer`."""
    await request.app[KEY_CACHE].authenticate(api_key_from(request))
    names = listed_models(request.app[CONFIG].providers)
    if wants_openai_shape(request):
        return web.json_response({"object": "list", "data": [
            {"id": n, "object": "model", "created": MODELS_CREATED, "owned_by": "llmapi"}
            for n in names]})
    data = [model_object(n) for n in names]
    return web.json_response({
        "data": data, "has_more": False,
        "first_id": names[0] if names else None, "last_id": names[-1] if names else None,
    })


async def handle_health(request: web.Request) -> web.Response:
    """Providers (200 while one is usable, else 503), plus `database` and `redis` (when
    configured): reachable or not, and the round-trip latency. A store that is down makes
    the status "degraded" but keeps 200: the instance still serves (usage rows queue, the
    Redis policy applies), and every instance sees the same outage. `draining` is true
    from SIGTERM on (readiness, /health/ready, is what a balancer should check)."""
    app = request.app
    snapshot = health_snapshot(app)
    stores = await dependency_report(app)
    snapshot.update(stores)
    snapshot["draining"] = app[LIFECYCLE].draining
    if snapshot["status"] == "ok" and not all(d["ok"] for d in stores.values()):
        snapshot["status"] = "degraded"
    return web.json_response(snapshot, status=503 if snapshot["status"] == "unavailable"
                             else 200, headers={"Cache-Control": "no-store"})


async def handle_ready(request: web.Request) -> web.Response:
    """Readiness for a balancer: 200 while this instance takes new requests, 503 from
    SIGTERM on (draining). It asks nothing of the database or the providers on purpose: an
    outage there is the same for every instance, and taking them all out of the balancer
    would turn a degraded service into none (usage rows queue meanwhile)."""
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.draining:
        return web.json_response({"status": "draining"}, status=503,
                                 headers={"Cache-Control": "no-store"})
    return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})


def metrics_allowed(request: web.Request, token: str) -> bool:
    """`Authorization: Bearer <[server] metrics_token>`, compared in constant time (as
    bytes: `hmac.compare_digest` refuses non-ASCII text, and a header may hold any byte).
    The scheme is case-insensitive (RFC 9110, 11.1)."""
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                               token.encode("utf-8"))


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus text. With `[server] metrics_token` set, only for its bearer: the figures
    name providers, models and load, which is nobody else's business."""
    token = request.app[CONFIG].server.metrics_token
    if token and not metrics_allowed(request, token):
        raise ApiError("authentication_error",
                       "/metrics needs Authorization: Bearer <[server] metrics_token>",
                       headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return web.Response(text=request.app[METRICS].render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def handle_remote_ws(request: web.Request) -> web.StreamResponse:
    if not request.app[CONFIG].remote.enabled:
        raise web.HTTPNotFound(text="remote control is disabled")
    return await request.app[REMOTE_HUB].handle(request)
