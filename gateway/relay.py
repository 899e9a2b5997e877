"""POST /v1/messages: the hot path, from socket to upstream and back, in one readable place.

    auth (memory) -> parse once + validate -> pick candidates -> provider.send -> write

Read top to bottom: `handle_messages` is the whole story; the helpers below it are small.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import ApiError, invalid_request
from gateway.keycache import KeyInfo
from gateway.protocol.openai_request import validate_anthropic_request
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.providers.base import Call, Reply, UpstreamError
from gateway.routing import candidates
from gateway.state import REQUEST_ID, STATE, GatewayState

log = logging.getLogger("llmapi.relay")

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


def api_key_from(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


async def handle_messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    key = await state.keys.authenticate(api_key_from(request))
    raw = await request.read()
    body = parse_request(raw)
    call = Call(
        body=body, raw=raw, client_model=body["model"], upstream_model="",
        stream=bool(body.get("stream")), request_id=request[REQUEST_ID],
        message_id="msg_" + secrets.token_hex(12),
        headers={h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers},
        input_estimate=estimate_input_tokens(body),
    )
    reply = await send_with_failover(state, call)
    try:
        if not reply.stream:
            return web.Response(body=reply.body, content_type="application/json")
        return await stream_reply(request, reply)
    finally:
        await reply.close()
        _ = key  # accounting hooks in here (limits issue)


async def send_with_failover(state: GatewayState, call: Call) -> Reply:
    """Try each candidate provider in order until one starts a reply."""
    options = candidates(state.config.providers, call.client_model)
    if not options:
        raise ApiError("not_found_error", f"model: no provider serves {call.client_model!r}")
    last: UpstreamError | None = None
    for option in options:
        call.upstream_model = option.upstream_model
        provider = state.providers[option.provider.name]
        try:
            return await provider.send(call)
        except UpstreamError as exc:
            last = exc
            log.warning("provider %s failed: %s", exc.provider, exc.reason)
            if not exc.retryable:
                break
    assert last is not None
    raise ApiError(last.error_type, last.message, status=last.client_status)


async def stream_reply(request: web.Request, reply: Reply) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, "request-id": request[REQUEST_ID]})
    await response.prepare(request)
    try:
        async for chunk in reply.chunks():
            await response.write(chunk)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        log.exception("stream failed after the first byte")
        tail = reply.abort("api_error", f"the upstream stream failed: {type(exc).__name__}")
        if tail:
            await response.write(tail)
    await response.write_eof()
    return response


def parse_request(raw: bytes, count_only: bool = False) -> dict[str, Any]:
    """Decode the JSON body once and check the fields every provider relies on."""
    if not raw:
        raise invalid_request("request body is empty; send a JSON Messages request")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"malformed JSON body: {exc}") from None
    if count_only and isinstance(body, dict) and "max_tokens" not in body:
        body = {**body, "max_tokens": 1}  # count_tokens takes no max_tokens
    problem = validate_anthropic_request(body)
    if problem:
        raise invalid_request(problem)
    return body  # type: ignore[no-any-return]


def now_ms() -> float:
    return time.perf_counter() * 1000.0


__all__ = ["KeyInfo", "handle_messages"]
