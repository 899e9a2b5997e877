"""The lean upstream client against real loopback servers that misbehave on purpose.

Most servers here are raw `asyncio` servers scripted byte by byte (an aiohttp server would
not send broken framing); the TLS, gzip and 1,000-stream cases use a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.providers.lean_client import (
    BodyTooLarge,
    ConnectError,
    LeanClient,
    LeanClientError,
    Limits,
    ProtocolError,
    ServerDisconnected,
    Timeouts,
)

FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=10.0)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a state change driven by the event loop (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


class Scripted:
    """A raw TCP server: `script(reader, writer, request_number)` answers each request.

    Counts connections, requests and EOFs seen, so tests can check what reached the wire."""

    def __init__(self, script: Callable[[Scripted, asyncio.StreamReader,
                                         asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.eofs = 0
        self.ended = 0  # connection handlers finished (EOF, reset or script done)
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended += 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head + Content-Length body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.eofs += 1
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        if await reader.read() == b"":
            self.eofs += 1

    async def close(self) -> None:
        if self.server is not None:
            for w in self.writers:
                w.close()
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[tuple[Scripted, str]]]]:
    servers: list[Scripted] = []

    async def start(script: Callable[..., Awaitable[None]]) -> tuple[Scripted, str]:
        server = Scripted(script)
        servers.append(server)
        return server, await server.start()

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[LeanClient]:
    c = LeanClient(FAST)
    yield c
    await c.close()


def idle_count(client: LeanClient) -> int:
    return sum(len(p.idle) for p in client._pools.values())


async def serve_forever_ok(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while await s.read_request(r) is not None:
        w.write(OK)
        await w.drain()


# ---------------------------------------------------------------- keep-alive and reuse


async def test_sequential_requests_share_one_keep_alive_connection(scripted, client) -> None:
    server, url = await scripted(serve_forever_ok)
    for _ in range(5):
        response = await client.post(url, b"{}", {"Content-Type": "application/json"})
        assert response.status == 200 and await response.read() == b"ok"
        response.release()
    assert server.connections == 1 and len(server.requests) == 5
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 2\r\n" in request and request.endswith(b"\r\n\r\n{}")


async def test_server_closing_an_idle_connection_is_replaced_before_anything_is_sent(
        scripted, client) -> None:
    async def answer_once_then_close(s: Scripted, r: asyncio.StreamReader,
                                     w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(OK)  # keep-alive by HTTP/1.1 default, but the server hangs up right after
        await w.drain()

    server, url = await scripted(answer_once_then_close)
    first = await client.post(url, b"1", {})
    assert await first.read() == b"ok"
    await until(lambda: idle_count(client) == 0)  # the FIN took it out of the pool
    second = await client.post(url, b"2", {})
    assert await second.read() == b"ok"
    assert server.connections == 2
    assert [req[-1:] for req in server.requests] == [b"1", b"2"]


async def test_a_request_the_server_may_have_received_is_never_sent_twice(
        scripted, client) -> None:
    """The server reads the POST on a reused connection and hangs up without a byte of
    answer: the client must fail, not resend (an LLM call would be billed twice)."""
    async def read_second_then_hang_up(s: Scripted, r: asyncio.StreamReader,
                                       w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(OK)
        await w.drain()
        await s.read_request(r)  # the second request arrives on the same connection ...
        w.transport.abort()      # ... and the server dies without answering

    server, url = await scripted(read_second_then_hang_up)
    first = await client.post(url, b"1", {})
    assert await first.read() == b"ok"
    with pytest.raises(ServerDisconnected) as caught:
        await client.post(url, b"2", {})
    assert caught.value.request_sent
    assert server.connections == 1  # no second connection carried a resend
    assert [req[-1:] for req in server.requests] == [b"1", b"2"]


async def test_connection_close_response_is_not_pooled(scripted, client) -> None:
    async def close_each(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await s.wait_eof(r)  # the client hangs up: it must not keep the connection

    server, url = await scripted(close_each)
    for _ in range(3):
        response = await client.post(url, b"{}", {})
        assert await response.read() == b"ok"
        assert idle_count(client) == 0
    await until(lambda: server.eofs == 3)
    assert server.connections == 3


async def test_keep_alive_timeout_hint_shorter_than_the_margin_drops_the_connection(
        scripted, client) -> None:
    async def short_keepalive(s: Scripted, r: asyncio.StreamReader,
                              w: asyncio.StreamWriter) -> None:
        while await s.read_request(r) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    server, url = await scripted(short_keepalive)
    for _ in range(2):
        assert await (await client.post(url, b"{}", {})).read() == b"ok"
    assert server.connections == 2  # a 1 s server timeout leaves no safe idle time


async def test_half_closed_after_a_complete_response(scripted, client) -> None:
    async def answer_and_shutdown(s: Scripted, r: asyncio.StreamReader,
                                  w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(OK)
        w.write_eof()  # FIN after the body: the answer is whole, the connection is not
        await s.wait_eof(r)

    server, url = await scripted(answer_and_shutdown)
    assert await (await client.post(url, b"{}", {})).read() == b"ok"
    await until(lambda: server.eofs == 1)
    assert idle_count(client) == 0
    assert await (await client.post(url, b"{}", {})).read() == b"ok"
    assert server.connections == 2


async def test_body_delimited_by_the_end_of_the_connection(scripted, client) -> None:
    async def until_close(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        await w.drain()
        w.write(b"data: 2\n\n")
        w.write_eof()

    _, url = await scripted(until_close)
    response = await client.post(url, b"{}", {})
    assert await response.read() == b"data: 1\n\ndata: 2\n\n"


async def test_connection_lost_mid_body_is_an_error_not_a_short_body(scripted, client) -> None:
    async def short(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await w.drain()

    _, url = await scripted(short)
    response = await client.post(url, b"{}", {})
    with pytest.raises(ServerDisconnected, match="mid-body"):
        await response.read()


async def test_bytes_sent_to_an_idle_connection_retire_it(scripted, client) -> None:
    async def extra(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await w.drain()
        await serve_forever_ok(s, r, w)

    server, url = await scripted(extra)
    assert await (await client.post(url, b"{}", {})).read() == b"ok"
    await until(lambda: idle_count(client) == 0)
    assert await (await client.post(url, b"{}", {})).read() == b"ok"  # not "stale"
    assert server.connections == 2


# ---------------------------------------------------------------- framing


async def test_chunked_with_extensions_and_trailers(scripted, client) -> None:
    async def chunked(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await s.read_request(r) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n"
                    b"\r\n5;name=value\r\nhello\r\n6;ext\r\n world\r\n0\r\n"
                    b"X-Checksum: abc\r\n\r\n")
            await w.drain()

    server, url = await scripted(chunked)
    for _ in range(2):
        response = await client.post(url, b"{}", {})
        assert await response.read() == b"hello world"
        assert "x-checksum" not in response.headers  # trailers are not headers
    assert server.connections == 1  # still reusable after the trailer


async def test_interim_103_then_the_real_answer(scripted, client) -> None:
    async def hints(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)
        await w.drain()
        await serve_forever_ok(s, r, w)

    _, url = await scripted(hints)
    response = await client.post(url, b"{}", {})
    assert response.status == 200 and await response.read() == b"ok"
    assert "link" not in response.headers


async def test_malformed_response_is_a_protocol_error(scripted, client) -> None:
    async def smuggle(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await s.wait_eof(r)

    server, url = await scripted(smuggle)
    with pytest.raises(ProtocolError):
        await client.post(url, b"{}", {})
    await until(lambda: server.eofs == 1)


async def test_huge_headers_are_refused_and_the_connection_closed(scripted) -> None:
    async def huge(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(200):
            w.write(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000))
        w.write(b"Content-Length: 2\r\n\r\nok")
        await w.drain()
        await s.wait_eof(r)

    server, url = await scripted(huge)
    client = LeanClient(FAST, Limits(max_header_bytes=64 * 1024))
    try:
        with pytest.raises(ProtocolError, match="headers exceed"):
            await client.post(url, b"{}", {})
        await until(lambda: server.ended == 1)  # reset mid-write or EOF: either way, gone
        assert idle_count(client) == 0
    finally:
        await client.close()


async def test_header_line_breaks_are_refused_before_sending(scripted, client) -> None:
    server, url = await scripted(serve_forever_ok)
    with pytest.raises(ValueError, match="line break"):
        await client.post(url, b"{}", {"anthropic-beta": "x\r\nInjected: 1"})
    assert server.requests == []


async def test_body_larger_than_the_limit(scripted) -> None:
    async def big(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300000)
        await w.drain()
        await s.wait_eof(r)

    server, url = await scripted(big)
    client = LeanClient(FAST, Limits(max_body_bytes=100_000))
    try:
        with pytest.raises(BodyTooLarge):
            await (await client.post(url, b"{}", {})).read()
        await until(lambda: server.ended == 1)
    finally:
        await client.close()


# ---------------------------------------------------------------- compression


async def test_gzip_content_length_and_chunked_and_deflate_both_ways(scripted, client) -> None:
    text = b'{"choices": []}' * 200
    bodies = [
        (b"gzip", gzip.compress(text)),
        (b"deflate", zlib.compress(text)),                     # zlib-wrapped, as the RFC says
        (b"deflate", _raw_deflate(text)),                      # raw, as some servers send
    ]

    async def compressed(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for coding, data in bodies:
            await s.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
                    % (coding, len(data)) + data)
            await w.drain()
        await s.read_request(r)  # gzip, chunked, split mid-stream
        data = gzip.compress(text)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(data), 7):
            piece = data[i:i + 7]
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        w.write(b"0\r\n\r\n")
        await w.drain()
        await s.wait_eof(r)

    server, url = await scripted(compressed)
    for _ in range(4):
        response = await client.post(url, b"{}", {})
        assert await response.read() == text
    assert server.connections == 1
    assert b"Accept-Encoding: gzip, deflate\r\n" in server.requests[0]


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


async def test_unoffered_content_encoding_is_refused(scripted, client) -> None:
    async def brotli(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await s.wait_eof(r)

    _, url = await scripted(brotli)
    with pytest.raises(ProtocolError, match="Content-Encoding"):
        await client.post(url, b"{}", {})


async def test_gzip_bomb_stops_at_the_buffer_limit(scripted) -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))

    async def send_bomb(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                % len(bomb) + bomb)
        await w.drain()
        await s.wait_eof(r)

    _, url = await scripted(send_bomb)
    client = LeanClient(FAST, Limits(max_buffered_bytes=1024 * 1024))
    try:
        with pytest.raises(BodyTooLarge):
            await (await client.post(url, b"{}", {})).read()
    finally:
        await client.close()


# ---------------------------------------------------------------- timeouts and cancellation


async def test_slow_headers_time_out_at_first_byte_and_close(scripted) -> None:
    async def trickle(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n")  # ... and the rest a byte at a time, forever
        await w.drain()
        while True:
            w.write(b"X")
            await w.drain()
            await asyncio.sleep(0.05)

    server, url = await scripted(trickle)
    client = LeanClient(Timeouts(connect=1, first_byte=0.5, idle=5, total=10))
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post(url, b"{}", {})
        assert 0.4 < time.monotonic() - started < 2.0  # the trickle did not keep it alive
        assert idle_count(client) == 0
        await until(lambda: server.ended == 1)  # and the connection was hung up
    finally:
        await client.close()


async def test_silence_mid_body_times_out_at_idle(scripted) -> None:
    async def stall(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await s.wait_eof(r)

    server, url = await scripted(stall)
    client = LeanClient(Timeouts(connect=1, first_byte=5, idle=0.3, total=10))
    try:
        response = await client.post(url, b"{}", {})
        chunks = response.iter_any()
        assert await anext(chunks) == b"first"
        with pytest.raises(TimeoutError):
            await anext(chunks)
        await until(lambda: server.eofs == 1)  # the stalled connection was closed
    finally:
        await client.close()


async def test_cancelled_mid_stream_closes_the_connection(scripted, client) -> None:
    async def slow_stream(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await s.read_request(r) is None:
            return
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await s.wait_eof(r)  # never finishes: only the client's hang-up ends this

    server, url = await scripted(slow_stream)
    got_first = asyncio.Event()

    async def consume() -> None:
        response = await client.post(url, b"{}", {})
        async for _ in response.iter_any():
            got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: server.eofs == 1)
    assert idle_count(client) == 0


async def test_cancelled_while_waiting_for_headers_closes_the_connection(scripted,
                                                                         client) -> None:
    async def never(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        await s.wait_eof(r)

    server, url = await scripted(never)
    task = asyncio.create_task(client.post(url, b"{}", {}))
    await until(lambda: len(server.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: server.eofs == 1)
    assert idle_count(client) == 0


async def test_released_unfinished_response_is_not_reused(scripted, client) -> None:
    async def partial(s: Scripted, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\nhalf")
        await w.drain()
        await s.wait_eof(r)

    server, url = await scripted(partial)
    response = await client.post(url, b"{}", {})
    assert response.status == 500
    response.release()
    await until(lambda: server.eofs == 1)
    with pytest.raises(LeanClientError):
        await response.read()


async def test_connect_refused_is_a_connect_error(client) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(ConnectError):
            await client.post(f"http://127.0.0.1:{port}/x", b"{}", {})


# ---------------------------------------------------------------- real aiohttp server


async def stream_app() -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        n = int((await request.read()) or 5)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(n):
            await response.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def gzipped(request: web.Request) -> web.Response:
        response = web.Response(body=b'{"x": 1}' * 1000, content_type="application/json")
        response.enable_compression(web.ContentCoding.gzip)
        return response

    app = web.Application()
    app.router.add_post("/stream", stream)
    app.router.add_post("/gzip", gzipped)
    return app


@pytest.fixture
async def aiohttp_server_url() -> AsyncIterator[str]:
    runner = web.AppRunner(await stream_app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_one_thousand_concurrent_streams(aiohttp_server_url: str) -> None:
    client = LeanClient(Timeouts(connect=10, first_byte=30, idle=30, total=60))
    expected = b"".join(b"data: %d\n\n" % i for i in range(5))

    async def one() -> bytes:
        response = await client.post(aiohttp_server_url + "/stream", b"5", {})
        parts = [part async for part in response.iter_any()]
        return b"".join(parts)

    try:
        results = await asyncio.gather(*(one() for _ in range(1000)))
        assert all(r == expected for r in results)
        assert idle_count(client) == 1000  # every finished stream went back to the pool
        again = await asyncio.gather(*(one() for _ in range(1000)))  # reused, not reopened
        assert all(r == expected for r in again)
        assert idle_count(client) == 1000
    finally:
        await client.close()


async def test_aiohttp_gzip_answer(aiohttp_server_url: str, client: LeanClient) -> None:
    response = await client.post(aiohttp_server_url + "/gzip", b"{}", {})
    assert response.headers["content-encoding"] == "gzip"
    assert await response.read() == b'{"x": 1}' * 1000


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return cert, key


async def test_tls_through_the_loop(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(await stream_app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    trusting = ssl.create_default_context(cafile=str(cert))
    good = LeanClient(FAST, ssl_context=trusting)
    strict = LeanClient(FAST)  # the system's CAs: a self-signed certificate must fail
    try:
        for _ in range(2):
            response = await good.post(f"https://localhost:{port}/stream", b"3", {})
            assert await response.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert idle_count(good) == 1
        with pytest.raises(ConnectError, match="certificate"):
            await strict.post(f"https://localhost:{port}/stream", b"3", {})
    finally:
        await good.close()
        await strict.close()
        await runner.cleanup()
