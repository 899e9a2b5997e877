"""POST /v1/messages: the hot path, from socket to upstream and back, in one readable place.

    auth (memory) -> parse once + validate -> limits (memory) -> route -> failover
    -> provider.send -> write the reply -> account (queued, written behind)

`handle_messages` is the whole story; `relay` (route onwards) is shared with the OpenAI
ingress routes; the helpers below them are small. Errors before the
first byte become Anthropic error responses (middleware); after it, the reply itself ends
the stream with an `error` event. A request still running when the shutdown grace ends is
ended the same two ways (gateway/inflight.py); one refused before `relay` is logged and
counted by the middleware (gateway/api/unrelayed.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.access_log import ACCESS_LOG
from gateway.accounting.admission import ACCOUNTANT, Admission, Outcome
from gateway.accounting.keycache import KeyInfo
from gateway.accounting.usage import RECORDER
from gateway.api.unrelayed import RELAYED, authenticated
from gateway.config import CONFIG
from gateway.errors import ApiError, invalid_request
from gateway.forwarding import client_address
from gateway.ids import REQUEST_ID, new_id
from gateway.inflight import GATEWAY_SHUTDOWN, IN_FLIGHT, SHUTTING_DOWN
from gateway.metrics import METRICS
from gateway.protocol.json_depth import depth_message, too_deep
from gateway.protocol.openai_request import validate_anthropic_request
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.protocol.usage import Usage
from gateway.providers.base import PROVIDERS, Call, Reply
from gateway.relay.breaker import BREAKERS
from gateway.relay.failover import SendFn, send_with_failover
from gateway.relay.routing import plan_route
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
    key = await authenticated(request)
    body = parse_request(await request.read())
    estimate = estimate_input_tokens(body)
    stream = body.get("stream") is True
    admission = await app[ACCOUNTANT].admit(
        key, request_id=request[REQUEST_ID], client_model=body["model"], stream=stream,
        input_estimate=estimate, max_tokens=body["max_tokens"])
    call = Call(
        body=body, client_model=body["model"], upstream_model="", stream=stream,
        request_id=request[REQUEST_ID], message_id=new_id("msg"),
        headers={h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers},
        input_estimate=estimate,
    )
    if config.remote.enabled and is_trigger(body, config.remote.triggers):
        await admission.finish(Outcome("success", "", "", 0, None, None, 0.0, None))  # no row
        return await answer_remote_control(app, key, call, admission.headers)
    return await relay(request, key, call, admission, admission.headers, started)


async def relay(request: web.Request, key: KeyInfo, call: Call, admission: Admission,
                rate_headers: dict[str, str], started: float, ingress: str = "anthropic",
                send: SendFn | None = None) -> web.StreamResponse:
    """route -> failover -> write the reply -> account: the flow every ingress shares.

    `admission` (gateway/accounting/admission.py) was taken by the ingress; `relay` lowers
    `max_tokens` to what its reservation holds and finishes it exactly once, so every
    request that reached a provider leaves one usage row, whatever happened.
    `send` lets an ingress that is not Anthropic (gateway/api/openai_ingress.py) talk to each
    provider in its own way and hand back a reply already in the client's format; the
    default is the provider's own Anthropic `send`.
    """
    app = request.app
    config = app[CONFIG]
    limit = admission.max_tokens
    if limit is not None and isinstance(call.body.get("max_tokens"), int) \
            and limit < call.body["max_tokens"]:
        call.body["max_tokens"] = limit  # what the quota reservation holds
    trip = Trip(app, key, call, started, admission, ingress, client_address(request))
    request[RELAYED] = True  # the trip's `finish` writes the log line and the sample
    trip.journal_start()
    in_flight = app[IN_FLIGHT]  # the shutdown grace's end may cut it (gateway/inflight.py)
    in_flight.enter()
    reply: Reply | None = None
    status, error_type, http_status = "client_disconnect", None, 499
    try:
        options = plan_route(config.routing, config.providers, call.body, call.client_model)
        served = await send_with_failover(call, options, app[PROVIDERS], app[BREAKERS],
                                          config.routing, app[METRICS], send)
        trip.provider = served.candidate.provider.name
        reply = trip.reply = served.reply
        if not reply.stream:
            answer = web.Response(body=reply.body, headers=rate_headers,
                                  content_type="application/json")
            trip.first_byte()
            status, error_type, http_status = "success", None, 200
            return answer
        response = await stream_reply(request, reply, rate_headers, trip)
        failed = reply.failed
        status = "error" if failed else "success"
        error_type, http_status = (failed[0] if failed else None), 200
        if trip.cut:
            error_type = GATEWAY_SHUTDOWN
        return response
    except asyncio.CancelledError:
        prepared = trip.response is not None and trip.response.prepared
        if prepared or not in_flight.was_cut():
            raise  # the client went away
        status, error_type, http_status = "error", GATEWAY_SHUTDOWN, 529
        raise ApiError("overloaded_error", SHUTTING_DOWN) from None
    except ApiError as exc:
        exc.headers.update(rate_headers)
        status, error_type, http_status = "error", exc.error_type, exc.status
        raise
    except Exception:
        status, error_type, http_status = "error", "api_error", 500
        raise
    finally:
        in_flight.leave()
        if reply is not None:
            await reply.close()
        await trip.finish(status, reply.usage if reply is not None else None, error_type,
                          http_status)


async def stream_reply(request: web.Request, reply: Reply, rate_headers: dict[str, str],
                       trip: Trip) -> web.StreamResponse:
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
    except asyncio.CancelledError:
        if not request.app[IN_FLIGHT].was_cut():
            raise  # the client went away: `finally` in relay records it
        trip.cut = True  # the shutdown grace ran out: end the stream properly
        tail = reply.abort("overloaded_error", SHUTTING_DOWN)
        if tail:
            await response.write(tail)
    except ConnectionError:
        raise  # the client went away: `finally` in relay records it
    except Exception as exc:
        log.exception("stream failed after the first byte (request %s)", trip.call.request_id)
        tail = reply.abort("api_error", f"the gateway failed mid-answer: {type(exc).__name__}")
        if tail:
            await response.write(tail)
    finally:
        streams.closed(response)
    try:
        await response.write_eof()
    except ConnectionError:
        # The client hung up after the last event it needed (Codex CLI closes the
        # connection on `response.completed`) while the upstream was still ending its body:
        # every byte of the answer was written, so the request succeeded all the same.
        log.debug("client closed before the end of the body (request %s)",
                  trip.call.request_id)
    return response


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

    __slots__ = ("admission", "app", "call", "client", "cut", "done", "first_byte_at",
                 "ingress", "key", "provider", "reply", "response", "started")

    def __init__(self, app: web.Application, key: KeyInfo, call: Call, started: float,
                 admission: Admission, ingress: str = "anthropic", client: str = "") -> None:
        self.app = app
        self.client = client  # the client's address, for the access log
        self.ingress = ingress
        self.key = key
        self.call = call
        self.started = started
        self.admission = admission
        self.first_byte_at: float | None = None
        self.provider = ""
        self.reply: Reply | None = None
        self.response: web.StreamResponse | None = None  # prepared by stream_reply
        self.done = False
        self.cut = False  # ended by the shutdown grace (gateway/inflight.py)

    def first_byte(self) -> None:
        self.first_byte_at = time.perf_counter()

    def journal_start(self) -> None:
        """Write-ahead: this request is about to go upstream (gateway/accounting/journal)."""
        journal = self.app[RECORDER].journal
        if journal is None:
            return
        call, key = self.call, self.key
        journal.started(call.request_id, {
            "user_id": key.user_id, "key_id": key.key_id, "client_model": call.client_model,
            "stream": call.stream, "input_estimate": call.input_estimate, "at": time.time(),
            "ingress": self.ingress})
        journal.track(call.request_id, self._progress)

    def _progress(self) -> tuple[str, str, int, int]:
        call, reply = self.call, self.reply
        output = reply.usage.output_tokens if reply is not None else 0
        return call.provider, call.upstream_model, call.attempts, output

    async def finish(self, status: str, usage: Usage | None, error_type: str | None,
                     http_status: int) -> None:
        if self.done:
            return
        self.done = True
        app, call, key = self.app, self.call, self.key
        end = time.perf_counter()
        duration_ms = (end - self.started) * 1000
        ttft_ms = (self.first_byte_at - self.started) * 1000 if self.first_byte_at else None
        provider = self.provider or call.provider
        billed = await self.admission.finish(Outcome(
            status=status, provider=provider, upstream_model=call.upstream_model,
            attempts=call.attempts, usage=usage, error_type=error_type,
            duration_ms=duration_ms, ttft_ms=ttft_ms))
        metrics = app[METRICS]
        metrics.requests.inc((status, call.upstream_model or "none", provider or "none"))
        metrics.duration.observe(duration_ms, (provider or "none",))
        if ttft_ms is not None:
            metrics.ttft.observe(ttft_ms, (provider,))
        if call.sent_at:  # the gateway's own time before the (first) upstream request
            metrics.overhead.observe((call.sent_at - self.started) * 1000, ())
        access_log = app[ACCESS_LOG]
        if access_log is not None:
            access_log.write({
                "ts": round(time.time(), 3), "request_id": call.request_id,
                "client": self.client,
                "user_id": key.user_id, "key": key.prefix, "ingress": self.ingress,
                "model": call.client_model, "provider": provider or None,
                "upstream_model": call.upstream_model or None, "status": status,
                "http_status": http_status, "error_type": error_type, "stream": call.stream,
                "attempts": call.attempts,
                "input_tokens": billed.input_tokens, "output_tokens": billed.output_tokens,
                "cache_read_tokens": billed.cache_read_input_tokens,
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
    if too_deep(raw, body):
        raise invalid_request(depth_message())
    if count_only and isinstance(body, dict) and "max_tokens" not in body:
        body = {**body, "max_tokens": 1}  # count_tokens takes no max_tokens
    problem = validate_anthropic_request(body)
    if problem:
        raise invalid_request(problem)
    return body  # type: ignore[no-any-return]
