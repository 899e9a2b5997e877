"""POST /v1/messages: the hot path, from socket to upstream and back, in one readable place.

    auth (memory) -> parse once + validate -> limits (memory) -> route -> failover
    -> provider.send -> write the reply -> account (queued, written behind)

`handle_messages` is the whole story; `relay` (route onwards) is shared with the OpenAI
ingress routes; the helpers below them are small. Errors before the
first byte become Anthropic error responses (middleware); after it, the reply itself ends
the stream with an `error` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.access_log import ACCESS_LOG
from gateway.accounting.keycache import KEY_CACHE, KeyInfo, api_key_from
from gateway.accounting.limits import LIMITS
from gateway.accounting.usage import RECORDER, UsageRecord
from gateway.config import CONFIG
from gateway.errors import ApiError, invalid_request
from gateway.ids import REQUEST_ID, new_id
from gateway.metrics import METRICS
from gateway.protocol.openai_request import validate_anthropic_request
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.protocol.usage import Usage
from gateway.providers.base import PROVIDERS, Call, Reply
from gateway.relay.breaker import BREAKERS
from gateway.relay.failover import SendFn, send_with_failover
from gateway.relay.routing import base_model_name, plan_route
from gateway.remote.sessions import create_session
from gateway.remote.trigger import is_trigger, message_json, message_sse, reply_content
from gateway.store.base import DATABASE
from gateway.streams import STREAMS

log = logging.getLogger("llmapi.relay")

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


async def handle_messages(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    config = app[CONFIG]
    key = await app[KEY_CACHE].authenticate(api_key_from(request))
    body = parse_request(await request.read())
    estimate = estimate_input_tokens(body)
    limits = app[LIMITS]
    rate_headers = await limits.admit(key, estimate) if limits else {}
    call = Call(
        body=body, client_model=body["model"], upstream_model="",
        stream=body.get("stream") is True, request_id=request[REQUEST_ID],
        message_id=new_id("msg"),
        headers={h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers},
        input_estimate=estimate,
    )
    if config.remote.enabled and is_trigger(body, config.remote.triggers):
        return await answer_remote_control(app, key, call, rate_headers)
    return await relay(request, key, call, rate_headers, started)


async def relay(request: web.Request, key: KeyInfo, call: Call,
                rate_headers: dict[str, str], started: float, ingress: str = "anthropic",
                send: SendFn | None = None) -> web.StreamResponse:
    """route -> failover -> write the reply -> account: the flow every ingress shares.

    `send` lets an ingress that is not Anthropic (gateway/api/openai_ingress.py) talk to each
    provider in its own way and hand back a reply already in the client's format; the
    default is the provider's own Anthropic `send`.
    """
    app = request.app
    config = app[CONFIG]
    trip = Trip(app, key, call, started, ingress)
    try:
        options = plan_route(config.routing, config.providers, call.body, call.client_model)
        served = await send_with_failover(call, options, app[PROVIDERS], app[BREAKERS],
                                          config.routing, app[METRICS], send)
    except ApiError as exc:
        exc.headers.update(rate_headers)
        trip.finish("error", None, exc.error_type, exc.status)
        raise
    trip.provider = served.candidate.provider.name
    reply = served.reply
    status = "client_disconnect"
    try:
        if not reply.stream:
            response = web.Response(body=reply.body, headers=rate_headers,
                                    content_type="application/json")
            trip.first_byte()
            status = "success"
            return response
        await stream_reply(request, reply, rate_headers, trip)
        status = "error" if reply.failed else "success"
        return trip.response
    finally:
        await reply.close()
        failed = reply.failed
        trip.finish(status, reply.usage, failed[0] if failed else None, 200)


async def stream_reply(request: web.Request, reply: Reply, rate_headers: dict[str, str],
                       trip: Trip) -> None:
    """Write the reply's SSE bytes as they arrive; a broken upstream ends in `error`."""
    response = trip.response = web.StreamResponse(
        headers={**SSE_HEADERS, **rate_headers, "request-id": trip.call.request_id})
    await response.prepare(request)
    streams = request.app[STREAMS]
    streams.opened(response)
    try:
        chunks = reply.chunks()
        first = await anext(chunks, b"")
        await response.write(first)
        trip.first_byte()
        async for chunk in chunks:
            await response.write(chunk)
            streams.wrote(response)
    except (asyncio.CancelledError, ConnectionError):
        raise  # the client went away: `finally` in handle_messages records it
    except Exception as exc:
        log.exception("stream failed after the first byte (request %s)", trip.call.request_id)
        tail = reply.abort("api_error", f"the gateway failed mid-answer: {type(exc).__name__}")
        if tail:
            await response.write(tail)
    finally:
        streams.closed(response)
    await response.write_eof()


async def answer_remote_control(app: web.Application, key: KeyInfo, call: Call,
                                rate_headers: dict[str, str]) -> web.Response:
    """"remote control" typed to Claude Code: no upstream call, a session and a Bash call
    that starts the bridge (gateway/remote/trigger.py)."""
    config = app[CONFIG]
    session = await create_session(app[DATABASE], key.user_id, config.remote.session_hours)
    content = reply_content(call.body, session, config.public_url, new_id("toolu"))
    if call.stream:
        return web.Response(body=message_sse(call.client_model, call.message_id, content),
                            headers={**SSE_HEADERS, **rate_headers})
    return web.Response(body=message_json(call.client_model, call.message_id, content),
                        headers=rate_headers, content_type="application/json")


class Trip:
    """Timing and bookkeeping of one request, finished exactly once."""

    __slots__ = ("app", "call", "done", "first_byte_at", "ingress", "key", "provider",
                 "response", "started")

    def __init__(self, app: web.Application, key: KeyInfo, call: Call, started: float,
                 ingress: str = "anthropic") -> None:
        self.app = app
        self.ingress = ingress
        self.key = key
        self.call = call
        self.started = started
        self.first_byte_at: float | None = None
        self.provider = ""
        self.response = web.StreamResponse()
        self.done = False

    def first_byte(self) -> None:
        self.first_byte_at = time.perf_counter()

    def finish(self, status: str, usage: Usage | None, error_type: str | None,
               http_status: int) -> None:
        if self.done:
            return
        self.done = True
        app, call, key = self.app, self.call, self.key
        end = time.perf_counter()
        duration_ms = (end - self.started) * 1000
        ttft_ms = (self.first_byte_at - self.started) * 1000 if self.first_byte_at else None
        usage = usage or Usage()
        metrics = app[METRICS]
        model = base_model_name(call.client_model)
        metrics.requests.inc((status, model, self.provider or "none"))
        metrics.duration.observe(duration_ms, (self.provider or "none",))
        if ttft_ms is not None:
            metrics.ttft.observe(ttft_ms, (self.provider,))
        if call.sent_at:  # the gateway's own time before the (first) upstream request
            metrics.overhead.observe((call.sent_at - self.started) * 1000, ())
        if self.provider:
            app[RECORDER].record(UsageRecord(
                request_id=call.request_id, user_id=key.user_id, key_id=key.key_id,
                client_model=call.client_model, provider=self.provider,
                upstream_model=call.upstream_model, usage=usage, stream=call.stream,
                status=status, error_type=error_type, duration_ms=duration_ms,
                ttft_ms=ttft_ms, created_at=time.time(), ingress=self.ingress))
        access_log = app[ACCESS_LOG]
        if access_log is not None:
            access_log.write({
                "ts": round(time.time(), 3), "request_id": call.request_id,
                "user_id": key.user_id, "key": key.prefix, "ingress": self.ingress,
                "model": call.client_model, "provider": self.provider or None,
                "upstream_model": call.upstream_model or None, "status": status,
                "http_status": http_status, "error_type": error_type, "stream": call.stream,
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_input_tokens,
                "ttft_ms": round(ttft_ms, 2) if ttft_ms is not None else None,
                "duration_ms": round(duration_ms, 2),
            })


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
