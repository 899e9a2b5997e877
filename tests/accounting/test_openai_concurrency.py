"""The OpenAI routes under load and hang-ups, held to what /v1/messages promises.

- Hundreds of concurrent requests on one key, spread over /v1/messages, /v1/chat/completions
  and /v1/responses at once, are admitted exactly up to the plan's concurrency and rpm
  limits: one set of counters for every ingress.
- A client that hangs up before the first byte, in the middle of a stream or right after
  the last chunk leaves exactly one usage row with the right `status` and `ingress`, and the
  gateway closes its upstream call when the client is gone.

Real gateways on loopback, the fake upstream, real SQLite files, raw sockets for the
hang-ups (so the moment of the hang-up is exact).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.api.messages import stream_reply
from gateway.streams import STREAMS, OpenStreams
from tests.helpers.gateway import fake_stats, provider_table

ROUTES = {"anthropic": "/v1/messages", "chat": "/v1/chat/completions",
          "responses": "/v1/responses"}


def plan(**figures: int) -> dict[str, Any]:
    return {"name": "p", "monthly_tokens": 0, "rpm": 0, "rpd": 0, "max_keys": 5,
            "max_input_tokens": 0, "concurrency": 0, **figures}


def payload(ingress: str, text: str, stream: bool) -> dict[str, Any]:
    if ingress == "anthropic":
        return {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": stream,
                "messages": [{"role": "user", "content": text}]}
    if ingress == "chat":
        return {"model": "gpt-4.1", "stream": stream, "max_tokens": 50,
                "messages": [{"role": "user", "content": text}]}
    return {"model": "gpt-5-codex", "stream": stream, "input": text, "max_output_tokens": 50}


async def post(s: aiohttp.ClientSession, url: str, key: str, ingress: str,
               body: dict[str, Any]) -> tuple[str, int, Any, bytes]:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"} if ingress == "anthropic" \
        else {"Authorization": f"Bearer {key}"}
    async with s.post(url + ROUTES[ingress], json=body, headers=headers) as r:
        return ingress, r.status, r.headers, await r.read()


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str,
                   timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def usage_rows(gw: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gw.db.path) as conn:
        return conn.execute("SELECT status, ingress, attempts, estimated, input_tokens,"
                            " output_tokens FROM usage_logs ORDER BY id").fetchall()


def assert_refusal(ingress: str, status: int, headers: Any, raw: bytes, words: str) -> None:
    assert status == 429, raw
    error = orjson.loads(raw)["error"]
    assert words in error["message"]
    seconds, ms = int(headers["retry-after"]), int(headers["retry-after-ms"])
    assert 0 < ms <= seconds * 1000 and ms > (seconds - 1) * 1000  # the same wait, finer
    if ingress == "anthropic":
        assert error["type"] == "rate_limit_error"
    else:  # OpenAI's shape and names on the OpenAI routes
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")


async def test_concurrency_limit_is_exact_across_all_three_routes(gateway_factory: Any,
                                                                  fake_factory: Any) -> None:
    """concurrency = 4, 240 requests at once (80 per route, half streamed) on one key:
    exactly 4 are admitted, 236 refused with `retry-after: 1`, and the slots come back."""
    base, _ = await fake_factory(first_byte_delay=4)
    gw = await gateway_factory({"providers": [provider_table("fake", "openai", base)],
                                "plans": [plan(concurrency=4)],
                                "server": {"access_log": False}})
    key = await gw.new_key("c@example.com", plan="p")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        results = await asyncio.gather(*(
            post(s, gw.url, key, ingress, payload(ingress, f"r{i}", i % 2 == 0))
            for i in range(80) for ingress in ROUTES))
        admitted = [r for r in results if r[1] == 200]
        refused = [r for r in results if r[1] != 200]
        print(f"\n[concurrency] 240 at once over 3 routes on concurrency=4: {len(admitted)} "
              f"admitted ({sorted(r[0] for r in admitted)}), {len(refused)} refused")
        assert len(admitted) == 4 and len(refused) == 236
        for ingress, status, headers, raw in refused:
            assert_refusal(ingress, status, headers, raw, "concurrency limit reached: 4 of 4")
            assert headers["retry-after"] == "1"
        assert {r[0] for r in refused} == set(ROUTES)
        again = await asyncio.gather(*(post(s, gw.url, key, ingress, payload(
            ingress, "again", False)) for ingress in ("chat", "responses", "chat", "anthropic")))
        assert [r[1] for r in again] == [200] * 4
    await gw.recorder.flush()
    assert len(usage_rows(gw)) == 8  # refusals never reached a provider: no row
    assert gw.limits._users[1].in_flight == 0


async def test_rpm_limit_is_exact_across_all_three_routes(gateway_factory: Any,
                                                          fake_factory: Any) -> None:
    """rpm = 30, 300 requests at once: exactly 30 admitted over the three routes, and the
    remaining-requests figures the admitted answers carry are 29..0, each exactly once."""
    base, _ = await fake_factory()
    gw = await gateway_factory({"providers": [provider_table("fake", "anthropic", base)],
                                "plans": [plan(rpm=30)], "server": {"access_log": False}})
    key = await gw.new_key("r@example.com", plan="p")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        results = await asyncio.gather(*(
            post(s, gw.url, key, ingress, payload(ingress, f"r{i}", i % 3 == 0))
            for i in range(100) for ingress in ROUTES))
    admitted = [r for r in results if r[1] == 200]
    assert len(admitted) == 30, [r[1] for r in results].count(200)
    remaining = sorted(int(h["x-ratelimit-remaining"]) for _, _, h, _ in admitted)
    assert remaining == list(range(30))
    openai = [h for ingress, _, h, _ in admitted if ingress != "anthropic"]
    assert openai and all(h["x-ratelimit-limit-requests"] == "30" and
                          h["x-ratelimit-remaining-requests"] == h["x-ratelimit-remaining"]
                          for h in openai)
    for ingress, status, headers, raw in (r for r in results if r[1] != 200):
        assert_refusal(ingress, status, headers, raw, "rate limit reached: 30 of 30")
        assert 1 <= int(headers["retry-after"]) <= 60
    await gw.recorder.flush()
    rows = usage_rows(gw)
    assert len(rows) == 30 and {r[0] for r in rows} == {"success"}
    assert sorted({r[1] for r in rows}) == sorted({r[0] for r in admitted})


# ------------------------------------------------------------------ hang-ups, raw sockets


class RawClient:
    """One HTTP/1.1 request on a raw socket, so a test decides the exact moment to hang up
    (`abort`: the connection is reset, as when a laptop lid closes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""

    @classmethod
    async def send(cls, url: str, path: str, key: str, body: dict[str, Any]) -> RawClient:
        where = urlsplit(url)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        data = orjson.dumps(body)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
                     f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        return cls(reader, writer)

    async def read_until(self, marker: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.received:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {self.received[-300:]!r}"
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
            assert chunk, f"connection closed before {marker!r}: {self.received[-300:]!r}"
            self.received += chunk

    def abort(self) -> None:
        self.writer.transport.abort()


# What marks each stage of an answer on the wire, per route.
CONTENT = {"chat": b'"content":"', "responses": b"event: response.output_text.delta"}
LAST = {"chat": b"data: [DONE]\n\n", "responses": b"event: response.completed\ndata: "}


async def hang_up_gateway(gateway_factory: Any, fake_factory: Any, protocol: str,
                          **fake: Any) -> tuple[Any, str, str]:
    base, _ = await fake_factory(**fake)
    gw = await gateway_factory({"providers": [provider_table("fake", protocol, base)],
                                "plans": [plan()], "server": {"access_log": False},
                                "routing": {"health_interval": 0}})
    return gw, await gw.new_key("h@example.com", plan="p"), base


async def settled(gw: Any) -> list[tuple[Any, ...]]:
    """The rows once the gateway has finished the request (its slot is free again)."""
    async def done() -> bool:
        users = gw.limits._users
        return bool(users) and users[1].in_flight == 0
    await wait_for(done, "the gateway to finish the request")
    await gw.recorder.flush()
    return usage_rows(gw)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("route", ["chat", "responses"])
@pytest.mark.parametrize("stream", [True, False])
async def test_hang_up_before_the_first_byte(gateway_factory: Any, fake_factory: Any,
                                             route: str, protocol: str, stream: bool) -> None:
    gw, key, base = await hang_up_gateway(gateway_factory, fake_factory, protocol,
                                          first_byte_delay=30)
    client = await RawClient.send(gw.url, ROUTES[route], key,
                                  payload(route, "hang up early", stream))

    async def upstream_busy() -> bool:
        return int((await fake_stats(base))["active_requests"]) == 1
    await wait_for(upstream_busy, "the upstream to get the call")
    client.abort()

    async def upstream_cancelled() -> bool:
        return int((await fake_stats(base))["cancelled_requests"]) == 1
    await wait_for(upstream_cancelled, "the gateway to close its upstream call")
    rows = await settled(gw)
    assert len(rows) == 1, rows
    status, ingress, attempts, estimated, input_tokens, _ = rows[0]
    assert (status, ingress, attempts, estimated) == ("client_disconnect", route, 1, 1)
    assert input_tokens > 0  # the prompt went upstream: the estimate is charged, marked


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("route", ["chat", "responses"])
async def test_hang_up_mid_stream(gateway_factory: Any, fake_factory: Any, route: str,
                                  protocol: str) -> None:
    gw, key, base = await hang_up_gateway(gateway_factory, fake_factory, protocol,
                                          chunks=100, chunk_delay=0.1)
    client = await RawClient.send(gw.url, ROUTES[route], key, payload(route, "long", True))
    await client.read_until(CONTENT[route])
    assert LAST[route] not in client.received
    client.abort()

    async def upstream_cancelled() -> bool:
        return int((await fake_stats(base))["cancelled_streams"]) == 1
    await wait_for(upstream_cancelled, "the gateway to close its upstream stream")
    rows = await settled(gw)
    assert len(rows) == 1, rows
    status, ingress, attempts, _, input_tokens, output_tokens = rows[0]
    assert (status, ingress, attempts) == ("client_disconnect", route, 1)
    assert input_tokens > 0 and output_tokens < 100


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("route", ["chat", "responses"])
async def test_hang_up_right_after_the_last_chunk(gateway_factory: Any, fake_factory: Any,
                                                  route: str, protocol: str) -> None:
    gw, key, base = await hang_up_gateway(gateway_factory, fake_factory, protocol, chunks=7)
    client = await RawClient.send(gw.url, ROUTES[route], key, payload(route, "short", True))
    await client.read_until(LAST[route])
    if route == "responses":  # the whole completed event, usage included
        await client.read_until(b'"usage"')
    client.abort()  # before the chunked terminator is read
    rows = await settled(gw)
    assert len(rows) == 1, rows
    status, ingress, attempts, estimated, _, output_tokens = rows[0]
    assert (status, ingress, attempts, estimated, output_tokens) == \
        ("success", route, 1, 0, 7)
    assert int((await fake_stats(base))["completed_streams"]) == 1



class LastThenLinger:
    """A streamed reply whose last event is out while the reply has not ended yet (the
    upstream is still closing its body): ends when `gate` is set."""

    stream = True
    body = b""
    failed = None

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def chunks(self) -> Any:
        yield b"event: response.created\ndata: {}\n\n"
        yield b"event: response.completed\ndata: {}\n\n"
        await self.gate.wait()

    def abort(self, error_type: str, message: str) -> bytes:
        return b""


class TripStub:
    def __init__(self) -> None:
        self.response: Any = None
        self.call = SimpleNamespace(request_id="req_test")
        self.cut = False

    def first_byte(self) -> None:
        pass


async def test_client_closing_on_the_last_event_is_not_an_error() -> None:
    """Codex CLI closes the connection as soon as `response.completed` arrives; the reply
    may not have ended yet. Writing the end of the body then fails, and used to turn a
    complete answer into a 500 `error` row (seen with the real Codex 0.171): it must not."""
    gate, outcome = asyncio.Event(), []

    requests: list[web.Request] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(request)
        trip = TripStub()
        try:
            await stream_reply(request, LastThenLinger(gate), {}, trip)  # type: ignore[arg-type]
        except BaseException as exc:
            outcome.append(repr(exc))
            raise
        outcome.append("returned")
        return trip.response  # type: ignore[no-any-return]

    app = web.Application()
    app[STREAMS] = OpenStreams()
    app.router.add_post("/v1/responses", handler)
    # The served gateway cancels a handler whose client is gone (handler_cancellation), but
    # only at its next await: here the reply ends without one, as when the upstream's last
    # read was already buffered, so the end of the body is written to a closed transport.
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        client = await RawClient.send(url, "/v1/responses", "k", {})
        await client.read_until(b"event: response.completed\ndata: {}\n\n")
        client.abort()

        async def connection_gone() -> bool:
            transport = requests[0].transport if requests else None
            return bool(requests) and (transport is None or transport.is_closing())
        await wait_for(connection_gone, "the server to see the hang-up")
        gate.set()  # only now does the reply end

        async def handled() -> bool:
            return bool(outcome)
        await wait_for(handled, "the handler to finish")
    finally:
        gate.set()
        await runner.cleanup()
    assert outcome == ["returned"]
