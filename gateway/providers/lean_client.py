"""A small keep-alive HTTP/1.1 client for the upstream hot path (POST, then read or stream).

Why not aiohttp's `ClientSession` here: per request it builds a request object, a writer, a
response object with a `StreamReader`, cookie and redirect machinery, tracing hooks and
several timers, which together cost more CPU than the gateway's own work. This client does
only what a provider call needs, on an `asyncio.Protocol` with httptools' C parser (llhttp):

- one pool of idle keep-alive connections per (scheme, host, port), most recently used first;
  an idle connection is dropped before the server's advertised `Keep-Alive: timeout` runs out;
- timeouts as the aiohttp setup had them: connect (TCP + TLS), first byte (until the response
  headers), idle (silence between reads) and total (the whole exchange);
- content-length, chunked (extensions and trailers are accepted and ignored) and
  read-until-close bodies; gzip and deflate response bodies; TLS via the loop;
- bounded header bytes, bounded buffered body bytes (reading pauses past a high-water mark),
  bounded `read()` size;
- a POST is sent at most once: a pooled connection already known to be closed is replaced
  before anything is written, but once the request bytes have been handed to a connection
  they are never written again, even if that connection dies without a byte of answer (an
  LLM call that may have reached the server must not be billed twice);
- a connection goes back to the pool only after a complete, keep-alive response; a request
  that is cancelled, times out or fails closes its connection.

httptools was chosen over the llhttp parser inside aiohttp because its callback API is
public and stable, while aiohttp's parser is private and bound to aiohttp's stream classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class LeanClientError(Exception):
    """Anything that kept an upstream exchange from completing (not a timeout)."""


class ConnectError(LeanClientError):
    """The upstream could not be reached (DNS, refused, TLS handshake or certificate)."""


class ServerDisconnected(LeanClientError):
    """The connection ended before the response did.

    `request_sent` is always true when this is raised for a request: the bytes were handed to
    the socket, so the upstream may have acted on them and the request is not resent."""

    def __init__(self, message: str, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class ProtocolError(LeanClientError):
    """The upstream broke HTTP/1.1 (malformed framing, oversized headers, unknown encoding)."""


class BodyTooLarge(LeanClientError):
    """The response body is larger than the client accepts."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; the same four the aiohttp session used (see `providers/http.py`)."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0
    total: float = 300.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 64 * 1024       # status line + all header lines
    max_body_bytes: int = 64 * 1024 * 1024  # what `read()` accepts
    max_buffered_bytes: int = 8 * 1024 * 1024  # unread body held at once (a gzip bomb stops here)
    high_water: int = 256 * 1024           # pause reading from the socket above this
    keepalive: float = 60.0                # drop connections idle longer than this
    keepalive_margin: float = 1.0          # ... or this much before the server's own timeout


_DECODERS = frozenset({b"gzip", b"x-gzip", b"deflate"})


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: parses responses and feeds the one in flight."""

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.expires = 0.0   # loop time after which this idle connection is not reused
        self.response: LeanResponse | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            response._fail(cause if isinstance(cause, LeanClientError)
                           else ProtocolError(f"upstream response rejected: {cause!r}"))
            self.close()
        except httptools.HttpParserError as exc:
            response._fail(ProtocolError(f"malformed upstream response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # half-closed by the server: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool.forget(self)
        response = self.response
        if response is not None:
            self.response = None
            response._connection_lost(exc)

    # -- httptools callbacks (called from feed_data, so from data_received)

    def _current(self) -> LeanResponse:
        response = self.response
        if response is None:  # a second answer after the one asked for (or after close)
            raise ProtocolError("upstream sent more than one response to one request")
        return response

    def on_message_begin(self) -> None:
        self._current()._begin()

    def on_status(self, status: bytes) -> None:
        self._current()._count(len(status) + 13)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current()._header(name, value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._current()._headers_done(parser.get_status_code(), parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        response = self._current()
        response._body(body)
        if response._buffered > response.limits.high_water and not self._paused \
                and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self._current()
        if response._interim:  # 1xx (e.g. 103 Early Hints): the real answer follows
            response._interim = False
            return
        response._complete()
        self.response = None
        if response.keep_alive and not self.closed:
            self.resume()
            self.pool.put(self, response.keepalive_hint)
        else:
            self.close()

    # -- used by the response and the pool

    def send(self, head: bytes, body: bytes, response: LeanResponse) -> None:
        if self.transport is None:  # only ever checked right after `take`, so unreachable
            raise ServerDisconnected("connection closed before the request was written",
                                     request_sent=False)
        self.response = response
        self.transport.writelines((head, body))

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # connection_lost follows and forgets it


class LeanResponse:
    """The status and headers of one upstream answer, and its body as read or streamed."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_decoder",
        "_done",
        "_error",
        "_header_bytes",
        "_headers_ready",
        "_interim",
        "_read_until_close",
        "_timeouts",
        "_waiter",
        "headers",
        "keep_alive",
        "keepalive_hint",
        "limits",
        "loop",
        "status",
    )

    def __init__(self, conn: _Connection, timeouts: Timeouts, limits: Limits) -> None:
        self.loop = conn.loop
        self._conn: _Connection | None = conn
        self._timeouts = timeouts
        self.limits = limits
        self._deadline = self.loop.time() + timeouts.total
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names; repeated fields joined by ", "
        self.keep_alive = False
        self.keepalive_hint: float | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._header_bytes = 0
        self._headers_ready = False
        self._interim = False
        self._read_until_close = False
        self._done = False
        self._error: BaseException | None = None
        self._decoder: zlib._Decompress | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content_type(self) -> str:
        """The media type, lower-case, without parameters; like aiohttp, a missing
        Content-Type means application/octet-stream (RFC 9110 section 8.3)."""
        value = self.headers.get("content-type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    # -- filled in by the connection

    def _begin(self) -> None:
        self.headers = {}
        self._header_bytes = 0

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            raise ProtocolError(f"upstream response headers exceed "
                                f"{self.limits.max_header_bytes} bytes")

    def _header(self, name: bytes, value: bytes) -> None:
        if self._headers_ready:
            return  # a chunked trailer: nothing the gateway uses
        self._count(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def _headers_done(self, status: int, keep_alive: bool) -> None:
        if 100 <= status < 200:
            self._interim = True
            return
        self.status = status
        self.keep_alive = keep_alive
        headers = self.headers
        self._read_until_close = ("content-length" not in headers
                                  and "transfer-encoding" not in headers
                                  and status not in (204, 304))
        hint = headers.get("keep-alive")
        if hint:
            for part in hint.split(","):
                name, _, value = part.strip().partition("=")
                if name.lower() == "timeout":
                    with contextlib.suppress(ValueError):
                        self.keepalive_hint = float(value)
        encoding = headers.get("content-encoding")
        if encoding:
            coding = encoding.strip().lower().encode()
            if coding not in _DECODERS and coding != b"identity":
                raise ProtocolError(f"upstream sent Content-Encoding {encoding!r}, which "
                                    "was not offered")
            if coding in _DECODERS:
                # gzip: 16+15; deflate is meant to be zlib-wrapped but some servers send it
                # raw, so 32+15 lets zlib detect gzip or zlib and `_body` retries raw deflate.
                self._decoder = zlib.decompressobj(47)
        self._headers_ready = True
        self._wake()

    def _body(self, data: bytes) -> None:
        if self._decoder is not None:
            data = self._decode(data)
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.limits.max_buffered_bytes:
            raise BodyTooLarge(f"upstream body exceeds {self.limits.max_buffered_bytes} "
                               "unread bytes")
        self._wake()

    def _decode(self, data: bytes) -> bytes:
        decoder = self._decoder
        assert decoder is not None
        try:
            out = decoder.decompress(data, self.limits.max_buffered_bytes + 1)
        except zlib.error:
            if self._buffered or decoder.unused_data:
                raise ProtocolError("upstream sent a corrupt compressed body") from None
            self._decoder = decoder = zlib.decompressobj(-15)  # raw deflate
            try:
                out = decoder.decompress(data, self.limits.max_buffered_bytes + 1)
            except zlib.error:
                raise ProtocolError("upstream sent a corrupt compressed body") from None
        if decoder.unconsumed_tail:
            raise BodyTooLarge(f"upstream body exceeds {self.limits.max_buffered_bytes} "
                               "unread bytes once decompressed")
        return out

    def _complete(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
                self._buffered += len(tail)
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._done:
            self._error = error
        self._wake()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._conn = None
        if self._done:
            return
        if self._headers_ready and self._read_until_close and exc is None:
            self._complete()  # the body was delimited by the end of the connection
            return
        stage = "mid-body" if self._headers_ready else "before the response headers"
        reason = f": {exc}" if exc else ""
        self._fail(ServerDisconnected(f"upstream closed the connection {stage}{reason}"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- waiting

    async def _wait(self, first_byte_at: float | None = None) -> None:
        """Until the connection has news; TimeoutError after `idle` seconds of silence, at
        the total deadline, or (for the headers) at `first_byte_at`."""
        loop = self.loop
        now = loop.time()
        at = min(now + self._timeouts.idle, self._deadline)
        if first_byte_at is not None:
            at = min(at, first_byte_at)
        if at <= now:
            raise TimeoutError("upstream did not answer in time")
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(at, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _headers(self, first_byte_at: float) -> None:
        try:
            while not self._headers_ready:
                if self._error is not None:
                    raise self._error
                await self._wait(first_byte_at)
        except BaseException:
            self.close()
            raise

    def _take(self) -> bytes:
        chunks = self._chunks
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self._buffered = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    # -- reading, for the provider

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (decoded); ends at the end of the response."""
        try:
            while True:
                if self._chunks:
                    yield self._take()
                    continue
                if self._error is not None:
                    raise self._error
                if self._done:
                    return
                await self._wait()
        except BaseException:
            self.close()
            raise

    async def read(self) -> bytes:
        """The whole body, at most `limits.max_body_bytes`."""
        parts: list[bytes] = []
        size = 0
        async for data in self.iter_any():
            parts.append(data)
            size += len(data)
            if size > self.limits.max_body_bytes:
                self.close()
                raise BodyTooLarge(f"upstream body exceeds {self.limits.max_body_bytes} bytes")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with this response: a finished one has already gone back to the pool; an
        unfinished one cannot be reused, so its connection is closed."""
        if not self._done:
            self.close()

    def close(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.response = None
            conn.close()
        if not self._done and self._error is None:
            self._error = LeanClientError("response closed before its end")


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("upstream went silent"))


class _HostPool:
    """Idle keep-alive connections to one (scheme, host, port)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self.loop = loop
        self.limits = limits
        self.idle: list[_Connection] = []
        self.everyone: set[_Connection] = set()

    def take(self) -> _Connection | None:
        """The most recently used idle connection still worth using, else None."""
        idle = self.idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now < conn.expires:
                return conn
            conn.close()  # nothing was sent on it: replacing it cannot send a request twice
        return None

    def put(self, conn: _Connection, server_timeout: float | None) -> None:
        now = self.loop.time()
        keep = self.limits.keepalive
        if server_timeout is not None:
            keep = min(keep, server_timeout - self.limits.keepalive_margin)
        if keep <= 0:
            conn.close()
            return
        conn.expires = now + keep
        idle = self.idle
        while idle and (idle[0].closed or idle[0].expires <= now):  # oldest first
            idle.pop(0).close()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self.everyone.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in list(self.everyone):
            conn.close()
        self.idle.clear()


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL split once: where to connect and the request line's start."""

    key: tuple[str, str, int]
    request_line: bytes


class LeanClient:
    """POST to upstream URLs over pooled keep-alive connections (one client per provider)."""

    def __init__(self, timeouts: Timeouts, limits: Limits | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeouts = timeouts
        self.limits = limits or Limits()
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _HostPool] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            default = port == (443 if parts.scheme == "https" else 80)
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host_header = host if default else f"{host}:{port}"
            line = (f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                    "Accept-Encoding: gzip, deflate\r\n").encode("latin-1")
            target = _Target((parts.scheme, parts.hostname, port), line)
            if len(self._targets) < 64:
                self._targets[url] = target
        return target

    def _pool(self, key: tuple[str, str, int]) -> _HostPool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _HostPool(asyncio.get_running_loop(), self.limits)
        return pool

    async def _connect(self, pool: _HostPool, key: tuple[str, str, int],
                       timeout: float) -> _Connection:
        scheme, host, port = key
        loop = pool.loop
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
            self._ssl = context
        conn = _Connection(pool)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=context,
                    server_hostname=host if context else None,
                    ssl_handshake_timeout=self.timeouts.connect if context else None)
        except TimeoutError:
            conn.close()
            raise TimeoutError(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        pool.everyone.add(conn)
        return conn

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> LeanResponse:
        """Send one POST and wait for its response headers (first-byte timeout included).

        The request is written exactly once, to one connection."""
        if self._closed:
            raise LeanClientError("client is closed")
        target = self._target(url)
        lines = [target.request_line]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head = b"".join(lines)
        loop = asyncio.get_running_loop()
        first_byte_at = loop.time() + self.timeouts.first_byte
        pool = self._pool(target.key)
        conn = pool.take()
        if conn is None:
            conn = await self._connect(pool, target.key, min(self.timeouts.connect,
                                                             self.timeouts.first_byte))
        response = LeanResponse(conn, self.timeouts, self.limits)
        conn.send(head, body, response)
        await response._headers(first_byte_at)
        return response

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await asyncio.sleep(0)  # let transports run connection_lost


__all__ = ["BodyTooLarge", "ConnectError", "LeanClient", "LeanClientError", "LeanResponse",
           "Limits", "ProtocolError", "ServerDisconnected", "Timeouts"]
