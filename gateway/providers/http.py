"""What the two HTTP providers share: one upstream client, timeouts, and error mapping.

The client is chosen by `upstream_client` (`[server]`, or per provider): "lean" is the small
keep-alive client in `lean_client.py` built for this hot path, "aiohttp" the `ClientSession`
it replaced, kept as a switch while the lean one proves itself. Both sit behind
`UpstreamClient`, so the providers and `UpstreamStream` do not know which one runs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Protocol

import aiohttp

from gateway.config import ProviderConfig
from gateway.protocol.openai_response import upstream_account_exhausted
from gateway.protocol.sse import SSEEventTooLarge
from gateway.protocol.usage import Usage
from gateway.providers.base import UpstreamError
from gateway.providers.lean_client import (
    BodyTooLarge,
    ConnectError,
    LeanClient,
    LeanClientError,
    Timeouts,
)
from gateway.providers.lean_client import Limits as LeanLimits

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})


# The largest complete (non-stream) answer either client reads: the lean client's own cap.
MAX_UPSTREAM_BODY = LeanLimits().max_body_bytes

# What either client raises when an exchange breaks; timeouts are TimeoutError for both.
TRANSPORT_ERRORS = (aiohttp.ClientError, LeanClientError)
BROKEN_OR_LATE = (aiohttp.ClientError, LeanClientError, TimeoutError)


class UpstreamResponse(Protocol):
    """An upstream answer whose headers have arrived."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up with lower-case names."""
        ...

    @property
    def content_type(self) -> str:
        """The media type, lower-case, without parameters (aiohttp's meaning)."""
        ...

    async def read(self) -> bytes: ...

    def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive."""
        ...

    def release(self) -> None:
        """Finished with a fully read response: its connection may be reused."""
        ...

    def close(self) -> None:
        """Drop the connection (an unfinished response must never go back to the pool)."""
        ...


class UpstreamClient(Protocol):
    """POSTs to one provider's URLs over pooled connections."""

    async def post(self, url: str, body: bytes,
                   headers: Mapping[str, str]) -> UpstreamResponse:
        """Send, and return once the response headers are in (within first_byte_timeout)."""
        ...

    async def close(self) -> None: ...


def client_session(config: ProviderConfig) -> UpstreamClient:
    """One pooled client per provider, reused for every request (no per-request TLS)."""
    timeouts = Timeouts(connect=config.connect_timeout, first_byte=config.first_byte_timeout,
                        idle=config.idle_timeout, total=config.timeout)
    if config.upstream_client == "aiohttp":
        return AiohttpClient(timeouts)
    return LeanClient(timeouts)


class _AiohttpResponse:
    """`aiohttp.ClientResponse` seen through `UpstreamResponse`."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        """The whole body, at most MAX_UPSTREAM_BODY bytes (aiohttp's own read has no cap)."""
        parts: list[bytes] = []
        size = 0
        async for data in self._response.content.iter_any():
            size += len(data)
            if size > MAX_UPSTREAM_BODY:
                self._response.close()
                raise BodyTooLarge(f"upstream body exceeds {MAX_UPSTREAM_BODY} bytes")
            parts.append(data)
        return b"".join(parts)

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class AiohttpClient:
    """The `aiohttp.ClientSession` client (`upstream_client = "aiohttp"`)."""

    def __init__(self, timeouts: Timeouts) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=timeouts.total, connect=timeouts.connect,
                                        sock_connect=timeouts.connect, sock_read=timeouts.idle)
        self._first_byte = timeouts.first_byte
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=True,
            skip_auto_headers=("User-Agent",), raise_for_status=False)

    async def post(self, url: str, body: bytes,
                   headers: Mapping[str, str]) -> UpstreamResponse:
        async with asyncio.timeout(self._first_byte):
            return _AiohttpResponse(await self._session.post(url, data=body,
                                                             headers=dict(headers)))

    async def close(self) -> None:
        await self._session.close()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds an upstream's `Retry-After` asks for: delay-seconds or an HTTP-date (RFC 9110
    section 10.2.3), None when it is neither. No cap here: whether a wait is worth it is
    `[routing] max_retry_after`, decided by the relay (gateway/relay/failover.py)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an obsolete date form without a zone is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if 0 <= seconds < math.inf else None


def status_error(provider: str, status: int, mapped: tuple[int, str, str],
                 retry_after: str | None, body: bytes = b"") -> UpstreamError:
    client_status, error_type, message = mapped
    error = UpstreamError(provider, f"status_{status}", message, client_status=client_status,
                          error_type=error_type, retryable=status in RETRYABLE_STATUS,
                          upstream_status=status, retry_after=parse_retry_after(retry_after))
    error.retry_after_header = retry_after.strip() if retry_after else None
    if upstream_account_exhausted(status, body):
        # The gateway's account there is empty (402, GLM's 1113 inside a 429): like a
        # refused key, another provider may answer, but neither this one nor a client
        # retry will until the operator pays.
        error.credentials = True
        error.message = f"provider {provider}: {message}; the operator must top up " \
                        "this provider's account"
        return error
    if status in (401, 403):
        # The gateway's own key was refused: another provider may work, but this one will
        # not until the operator fixes the key, and it is not overloaded.
        error.credentials = True
        error.message = f"provider {provider} refused the gateway's credentials " \
                        f"(HTTP {status}); the operator must fix this provider's API key"
    return error


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    """Connect failures and timeouts before the first byte: always worth another provider.
    A timeout is 504 and an unreachable upstream 502: neither is an overload (529)."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        reason, detail, status, kind = "timeout", "did not answer in time", 504, "timeout_error"
    elif isinstance(exc, (aiohttp.ClientConnectorError, ConnectError)):
        reason, detail, status, kind = "connect", "could not be reached", 502, "api_error"
    elif isinstance(exc, BodyTooLarge):
        reason, detail, status, kind = "too_large", f"sent an answer over the gateway's " \
            f"limit of {MAX_UPSTREAM_BODY} bytes", 502, "api_error"
    else:
        reason, detail = "connection", f"connection failed ({type(exc).__name__})"
        status, kind = 502, "api_error"
    return UpstreamError(provider, reason, f"upstream provider {provider} {detail}",
                         client_status=status, error_type=kind, retryable=True)


def malformed_answer(provider: str, problem: str) -> UpstreamError:
    """A 200 whose body no client could use (gateway/protocol/upstream_checks.py): 502,
    and worth another provider."""
    return UpstreamError(provider, "bad_json",
                         f"upstream provider {provider} sent a malformed answer: {problem}",
                         client_status=502, error_type="api_error", retryable=True)


async def open_upstream(client: UpstreamClient, config: ProviderConfig, url: str,
                        body: bytes, headers: dict[str, str]) -> UpstreamResponse:
    """POST and wait for the response headers within `first_byte_timeout`."""
    try:
        return await client.post(url, body, headers)
    except BROKEN_OR_LATE as exc:
        raise transport_error(config.name, exc) from None


async def first_output(stream: AsyncGenerator[bytes, None], config: ProviderConfig,
                       last_read: list[float]) -> bytes:
    """Wait for the first converted bytes (failover is still possible until they reach the
    client). Any upstream byte is liveness, SSE comments included: DeepSeek and OpenRouter
    send `: keep-alive` / `: OPENROUTER PROCESSING` while a request waits in their queue
    (https://api-docs.deepseek.com/quick_start/rate_limit). So the wait fails only when the
    upstream is silent for `first_byte_timeout`, or when it has kept the request queued for
    `queue_timeout` in all. `last_read[0]` is the monotonic time of the latest upstream read.

    One timer does it, in the caller's task: it fires at the earlier of the two deadlines
    as they stand; if reads have moved the silence deadline on since it was set, it re-arms
    itself for the new one, otherwise it ends the wait through `asyncio.timeout`. No task
    and no polling per stream: an answer that starts at once never sees the timer fire.
    """
    loop = asyncio.get_running_loop()
    queue_deadline = time.monotonic() + config.queue_timeout
    queued: list[bool] = []  # set when the timer ends the wait: [True] for queue_timeout
    handle: list[asyncio.TimerHandle] = []
    try:
        async with asyncio.timeout(None) as limit:
            def arm() -> None:
                now = time.monotonic()
                silence_deadline = last_read[0] + config.first_byte_timeout
                if now >= silence_deadline or now >= queue_deadline:
                    queued.append(now < silence_deadline)
                    limit.reschedule(loop.time())  # cancels the read, raises TimeoutError
                else:
                    handle[:] = [loop.call_later(min(silence_deadline, queue_deadline) - now,
                                                 arm)]

            arm()
            return await _next_output(stream)
    except TimeoutError:
        if queued and queued[0]:
            raise UpstreamError(
                config.name, "queued", f"upstream provider {config.name} kept the request "
                f"queued for {config.queue_timeout:g} s without starting the answer",
                client_status=504, error_type="timeout_error", retryable=True) from None
        raise transport_error(config.name, TimeoutError()) from None
    except TRANSPORT_ERRORS as exc:
        raise transport_error(config.name, exc) from None
    finally:
        if handle:
            handle[0].cancel()


async def _next_output(stream: AsyncGenerator[bytes, None]) -> bytes:
    async for out in stream:
        if out:
            return out
    return b""


class UpstreamStream:
    """What both streaming replies share: read ahead to the first output while failover is
    still possible, then hand out the rest; an upstream that stalls or breaks mid-answer
    ends the stream through `abort`, and `close` drops the upstream connection.

    Subclasses turn upstream reads into client bytes (`_on_data`, `_on_eof`), say when the
    answer is complete (`_complete`) and whether the very first output was a failure that
    another provider should get a chance at (`_early_failure`).
    """

    stream = True
    body = b""

    def __init__(self, response: UpstreamResponse, provider: str) -> None:
        self._response = response
        self._provider = provider
        self._reads = self._produce()
        self._first = b""
        self._last_read = [time.monotonic()]

    def _on_data(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _on_eof(self) -> bytes:
        raise NotImplementedError

    def _complete(self) -> bool:
        return False

    def _early_failure(self) -> UpstreamError | None:
        return None

    def abort(self, error_type: str, message: str) -> bytes:
        raise NotImplementedError

    async def _produce(self) -> AsyncGenerator[bytes, None]:
        yielded = False
        try:
            async for data in self._response.iter_any():
                self._last_read[0] = time.monotonic()
                out = self._on_data(data)
                if out:
                    yielded = True
                    yield out
                if self._complete():
                    return
        except SSEEventTooLarge as exc:
            # An upstream that never ends an event: before any output another provider may
            # still answer (502); after it, the client's stream ends with an error.
            message = f"upstream provider {self._provider} sent {exc}"
            if not yielded:
                raise malformed_answer(self._provider, str(exc)) from None
            yield self.abort("api_error", message)
            return
        except TimeoutError:  # sock_read: silent longer than idle_timeout
            yield self.abort("api_error", f"upstream provider {self._provider} stalled "
                                          "mid-answer")
            return
        except TRANSPORT_ERRORS as exc:
            yield self.abort("api_error", f"upstream provider {self._provider} broke off "
                                          f"mid-answer ({type(exc).__name__})")
            return
        yield self._on_eof()

    async def start(self, config: ProviderConfig) -> None:
        """Read up to the first output, so an upstream that fails right away can still be
        replaced by another provider."""
        try:
            self._first = await first_output(self._reads, config, self._last_read)
        except BaseException:
            # Close before anyone fails over: an upstream left open may still generate
            # (and bill) while a second one is asked.
            await self.close()
            raise
        failure = self._early_failure()
        if failure is not None:
            await self.close()
            raise failure

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        async for out in self._reads:
            if out:
                yield out

    async def close(self) -> None:
        await self._reads.aclose()
        # close(), not release(): an unfinished upstream stream must not go back to the pool
        self._response.close()


class BufferedReply:
    """A complete non-stream answer (Anthropic JSON)."""

    stream = False

    def __init__(self, body: bytes, usage: Usage) -> None:
        self.body = body
        self._usage = usage

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def failed(self) -> tuple[str, str] | None:
        return None

    def abort(self, error_type: str, message: str) -> bytes:
        return b""

    async def close(self) -> None:
        return None


async def read_body(response: UpstreamResponse, config: ProviderConfig) -> bytes:
    try:
        return await response.read()
    except BROKEN_OR_LATE as exc:
        raise transport_error(config.name, exc) from None
    finally:
        response.release()
