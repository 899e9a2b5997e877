"""What the two HTTP providers share: one client session, timeouts, and error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp

from gateway.config import ProviderConfig
from gateway.protocol.usage import Usage
from gateway.providers.base import UpstreamError

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})
# Honour an upstream's retry-after only when it is short enough to be worth waiting for.
MAX_RETRY_AFTER = 10.0


def client_session(config: ProviderConfig) -> aiohttp.ClientSession:
    """One pooled session per provider, reused for every request (no per-request TLS)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout,
                                    sock_connect=config.connect_timeout,
                                    sock_read=config.idle_timeout)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                 skip_auto_headers=("User-Agent",), raise_for_status=False)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER else None


def status_error(provider: str, status: int, mapped: tuple[int, str, str],
                 retry_after: str | None) -> UpstreamError:
    client_status, error_type, message = mapped
    return UpstreamError(provider, f"status_{status}", message, client_status=client_status,
                         error_type=error_type, retryable=status in RETRYABLE_STATUS,
                         upstream_status=status, retry_after=parse_retry_after(retry_after))


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    """Connect failures and timeouts before the first byte: always worth another provider."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        reason, detail = "timeout", "did not answer in time"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason, detail = "connect", "could not be reached"
    else:
        reason, detail = "connection", f"connection failed ({type(exc).__name__})"
    return UpstreamError(provider, reason, f"upstream provider {provider} {detail}",
                         client_status=529, error_type="overloaded_error", retryable=True)


async def open_upstream(session: aiohttp.ClientSession, config: ProviderConfig, url: str,
                        body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
    """POST and wait for the response headers within `first_byte_timeout`."""
    try:
        async with asyncio.timeout(config.first_byte_timeout):
            return await session.post(url, data=body, headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(config.name, exc) from None


async def first_output(stream: AsyncIterator[bytes], config: ProviderConfig) -> bytes:
    """Wait for the first converted bytes within `first_byte_timeout` (failover is still
    possible until they are sent to the client)."""
    try:
        async with asyncio.timeout(config.first_byte_timeout):
            async for out in stream:
                if out:
                    return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(config.name, exc) from None
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

    def __init__(self, response: aiohttp.ClientResponse, provider: str) -> None:
        self._response = response
        self._provider = provider
        self._reads = self._produce()
        self._first = b""

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
        try:
            async for data in self._response.content.iter_any():
                out = self._on_data(data)
                if out:
                    yield out
                if self._complete():
                    return
        except TimeoutError:  # sock_read: silent longer than idle_timeout
            yield self.abort("api_error", f"upstream provider {self._provider} stalled "
                                          "mid-answer")
            return
        except aiohttp.ClientError as exc:
            yield self.abort("api_error", f"upstream provider {self._provider} broke off "
                                          f"mid-answer ({type(exc).__name__})")
            return
        yield self._on_eof()

    async def start(self, config: ProviderConfig) -> None:
        """Read up to the first output, so an upstream that fails right away can still be
        replaced by another provider."""
        self._first = await first_output(self._reads, config)
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


async def read_body(response: aiohttp.ClientResponse, config: ProviderConfig) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(config.name, exc) from None
    finally:
        response.release()
