"""Hostile request bodies and headers: each is refused with a clear 4xx in the route's own
shape (Anthropic on /v1/messages, OpenAI on the OpenAI routes), never a 500 or a traceback.

The gateway runs on loopback against the real fake upstream over both upstream protocols,
because some of these broke only where the gateway re-serialises the body for a provider
(orjson refuses to write more than 254 levels)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from typing import Any

import orjson
import pytest

from gateway.protocol.json_depth import MAX_JSON_DEPTH
from tests.helpers.gateway import Gateway, provider_table
from tests.helpers.wire import (
    HOLE,
    OPENAI_ROUTES,
    ROUTES,
    body_with,
    error_of,
    gzip_bomb,
    minimal_body,
    nested_json,
    raw_request,
)

OPEN_PLAN = {"name": "free", "rpm": 0, "rpd": 0, "monthly_tokens": 0, "max_input_tokens": 0,
             "concurrency": 0}


@pytest.fixture(params=["openai", "anthropic"])
async def gw(request: Any, gateway_factory: Any, fake_factory: Any) -> Gateway:
    base, _ = await fake_factory()
    gateway: Gateway = await gateway_factory({
        "providers": [provider_table("fake", request.param, base)], "plans": [OPEN_PLAN]})
    return gateway


def port_of(gw: Gateway) -> int:
    port = gw.server.port
    assert port is not None
    return port


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()
           or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def post(gw: Gateway, path: str, body: bytes, key: str,
               extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"x-api-key: {key}\r\nContent-Length: {len(body)}\r\n").encode() + extra
    return await raw_request(port_of(gw), head, body)


def deep_places(path: str, levels: int) -> list[tuple[str, bytes]]:
    """(where, body) with a `levels`-deep value in each place a client may put free JSON."""
    deep = nested_json(levels)
    if path == "/v1/messages":
        tool = {"name": "t", "description": "d", "input_schema": HOLE}
        history = [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "toolu_1", "name": "t", "input": HOLE}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]
        return [
            ("metadata", body_with(minimal_body(path, metadata=HOLE), deep)),
            ("input_schema", body_with(minimal_body(path, tools=[tool]), deep)),
            ("tool_use.input", body_with(minimal_body(path, tools=[
                {"name": "t", "input_schema": {"type": "object"}}], messages=history), deep)),
            ("unknown field", body_with(minimal_body(path, extension=HOLE), deep)),
        ]
    if path == "/v1/chat/completions":
        fn = {"type": "function", "function": {"name": "t", "parameters": HOLE}}
        return [("metadata", body_with(minimal_body(path, metadata=HOLE), deep)),
                ("tools.parameters", body_with(minimal_body(path, tools=[fn]), deep))]
    fn = {"type": "function", "name": "t", "parameters": HOLE}
    return [("metadata", body_with(minimal_body(path, metadata=HOLE), deep)),
            ("tools.parameters", body_with(minimal_body(path, tools=[fn]), deep))]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("levels", [300, 1100])
async def test_deeply_nested_json_is_a_400_in_the_route_shape(
        gw: Gateway, path: str, levels: int, caplog: pytest.LogCaptureFixture) -> None:
    key = await gw.new_key()
    for where, body in deep_places(path, levels):
        status, headers, payload = await post(gw, path, body, key)
        kind, message = error_of(path, status, payload)
        assert status == 400, (where, status, payload)
        assert kind == "invalid_request_error", (where, payload)
        assert "deep" in message or "depth" in message, (where, message)
        assert headers.get("x-should-retry") == "false"
    no_tracebacks(caplog)


@pytest.mark.parametrize("path", ROUTES)
async def test_nesting_at_the_limit_is_served(gw: Gateway, path: str) -> None:
    """The limit is not a guess that also refuses real schemas: a body whose deepest value
    sits exactly at MAX_JSON_DEPTH goes through, through either upstream protocol."""
    key = await gw.new_key()
    # metadata is level 2 of the body, so this value brings the body to MAX_JSON_DEPTH.
    body = body_with(minimal_body(path, metadata=HOLE), nested_json(MAX_JSON_DEPTH - 1))
    status, _, payload = await post(gw, path, body, key)
    assert status == 200, payload[:300]
    over = body_with(minimal_body(path, metadata=HOLE), nested_json(MAX_JSON_DEPTH))
    status, _, payload = await post(gw, path, over, key)
    assert status == 400, payload[:300]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_non_utf8_api_key_is_a_401_in_the_route_shape(
        gw: Gateway, path: str, header: str, caplog: pytest.LogCaptureFixture) -> None:
    body = orjson.dumps(minimal_body(path))
    prefix = b"Bearer " if header == "authorization" else b""
    for value in (b"sk-llmapi-\xff\xfe", b"\xc3\x28", b"sk-\x80abc", "sk-é".encode()):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n").encode() \
            + header.encode() + b": " + prefix + value + b"\r\n"
        status, headers, payload = await raw_request(port_of(gw), head, body)
        _kind, _message = error_of(path, status, payload)
        assert status == 401, (value, payload)
        assert headers.get("x-should-retry") == "false"
    no_tracebacks(caplog)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip, gzip"])
async def test_content_encoding_is_refused_with_415(
        gw: Gateway, path: str, encoding: str, caplog: pytest.LogCaptureFixture) -> None:
    """A plain body labelled gzip, and a real gzip body: both 415 with `Accept-Encoding:
    identity` (RFC 9110 15.5.16), before anything is inflated."""
    key = await gw.new_key()
    plain = orjson.dumps(minimal_body(path))
    for body in (plain, gzip.compress(plain)):
        status, headers, payload = await post(gw, path, body, key,
                                              f"Content-Encoding: {encoding}\r\n".encode())
        _kind, message = error_of(path, status, payload)
        assert status == 415, payload
        assert "Content-Encoding" in message
        assert headers.get("accept-encoding") == "identity"
        assert headers.get("x-should-retry") == "false"
    # identity is no encoding at all and is served
    status, _, payload = await post(gw, path, plain, key, b"Content-Encoding: identity\r\n")
    assert status == 200, payload[:300]
    no_tracebacks(caplog)


class LoopLag:
    """The longest the event loop went without running a 5 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.005)
            last = now

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.parametrize("path", [*ROUTES, "/v1/messages/count_tokens", "/api/auth/login"])
async def test_gzip_bomb_does_not_stall_the_loop(gw: Gateway, path: str) -> None:
    """1 MB of unauthenticated gzip that would inflate to 1 GiB: refused (415) without
    inflating, while the loop (the same loop the gateway serves on) keeps ticking."""
    bomb = gzip_bomb(1 << 30)
    assert len(bomb) < 1_200_000
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n").encode()
    with LoopLag() as lag:
        started = time.perf_counter()
        status, _, payload = await raw_request(port_of(gw), head, bomb)
        took = time.perf_counter() - started
        # the gateway still answers others right after
        status2, _, _ = await raw_request(port_of(gw), b"GET /health HTTP/1.1\r\nHost: x\r\n")
    print(f"gzip bomb on {path}: {status} in {took * 1000:.0f} ms, "
          f"worst loop lag {lag.worst * 1000:.1f} ms")
    assert status == 415, payload[:300]
    if path in ROUTES:
        error_of(path, status, payload)
    assert status2 == 200
    assert lag.worst < 0.25, f"event loop stalled for {lag.worst:.3f} s"



@pytest.mark.parametrize("path", ROUTES)
async def test_body_over_the_cap_is_413_in_the_route_shape(
        gateway_factory: Any, path: str, caplog: pytest.LogCaptureFixture) -> None:
    gw = await gateway_factory({"server": {"max_body_bytes": 4096}, "plans": [OPEN_PLAN]})
    key = await gw.new_key()
    big = orjson.dumps(minimal_body(path, metadata={"x": "y" * 8000}))
    status, headers, payload = await post(gw, path, big, key)
    _kind, message = error_of(path, status, payload)
    assert status == 413
    assert "4096" in message
    assert headers.get("x-should-retry") == "false"
    # a body that announces no length (chunked) is capped the same way
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"x-api-key: {key}\r\nTransfer-Encoding: chunked\r\n").encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 1000]), big[i:i + 1000])
                       for i in range(0, len(big), 1000)) + b"0\r\n\r\n"
    status, _, payload = await raw_request(port_of(gw), head, chunked)
    assert status == 413, payload[:200]
    error_of(path, status, payload)
    no_tracebacks(caplog)


@pytest.mark.parametrize("path", OPENAI_ROUTES)
async def test_openai_routes_refuse_non_object_bodies(gw: Gateway, path: str) -> None:
    key = await gw.new_key()
    for body in (b"[]", b'"hi"', b"12", b"null", b"{", b"\xff\xfe"):
        status, _, payload = await post(gw, path, body, key)
        assert status == 400, (body, payload)
        error_of(path, status, payload)


@pytest.mark.parametrize(("path", "extra", "want"), [
    # found by tests/api/test_fuzz.py (seed 20261202): each was a 500 with a traceback
    ("/v1/chat/completions", {"reasoning_effort": {"effort": "high"}}, 400),
    ("/v1/chat/completions", {"reasoning_effort": ["low"]}, 400),
    ("/v1/chat/completions", {"tools": None, "tool_choice": "none"}, 200),
    ("/v1/responses", {"input": [{"type": "reasoning", "summary": 1.5},
                                 {"type": "message", "role": "user", "content": "hi"}]}, 200),
    ("/v1/responses", {"tools": [{"type": "evil\r\nSet-Cookie: x=1"}], "stream": True}, 200),
])
async def test_fuzz_findings_stay_fixed(gw: Gateway, path: str, extra: dict[str, Any],
                                        want: int, caplog: pytest.LogCaptureFixture) -> None:
    key = await gw.new_key()
    status, headers, payload = await post(gw, path, orjson.dumps(minimal_body(path, **extra)),
                                          key)
    assert status == want, payload[:300]
    assert "set-cookie" not in headers
    dropped = headers.get("x-llmapi-dropped-tools")
    assert dropped is None or ("\r" not in dropped and "\n" not in dropped)
    no_tracebacks(caplog)
