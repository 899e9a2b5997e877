"""The one small interface every provider implements: send a call, get a reply.

A provider turns a validated Anthropic request (`Call`) into an upstream exchange and hands
back a `Reply` whose status is already decided: either a complete non-stream body or an
async iterator of Anthropic SSE bytes. Anything that goes wrong *before* that point raises
`UpstreamError`, which routing may retry on another provider; anything after it is the
reply's job to turn into an Anthropic `error` event (see `Reply.abort`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from gateway.config import ProviderConfig
from gateway.protocol.usage import Usage


@dataclass(slots=True)
class Call:
    """One client request, parsed once, as the provider needs it."""

    body: dict[str, Any]
    client_model: str
    upstream_model: str
    stream: bool
    request_id: str
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    input_estimate: int = 0
    sent_at: float = 0.0  # perf_counter when the first upstream request went out
    provider: str = ""    # the provider of the latest upstream attempt (failover sets it)
    attempts: int = 0     # upstream attempts started so far: > 0 means a row is owed


class Reply(Protocol):
    """A started upstream answer. Exactly one of `body` / `chunks()` is meaningful."""

    stream: bool
    body: bytes

    def chunks(self) -> AsyncIterator[bytes]:
        """Anthropic SSE bytes as they become available (stream replies only)."""
        ...

    @property
    def usage(self) -> Usage: ...

    @property
    def failed(self) -> tuple[str, str] | None:
        """(error_type, message) when the stream ended in an `error` event."""
        ...

    def abort(self, error_type: str, message: str) -> bytes:
        """Bytes that properly end a stream broken on the gateway's side (b"" if ended)."""
        ...

    async def close(self) -> None:
        """Release the upstream connection (cancels an unfinished upstream stream)."""
        ...


class UpstreamError(Exception):
    """The upstream could not produce a reply; `retryable` tells routing it may fail over."""

    def __init__(self, provider: str, reason: str, message: str, *, client_status: int,
                 error_type: str, retryable: bool, upstream_status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.reason = reason  # short label for metrics: connect, timeout, status_503, ...
        self.message = message
        self.client_status = client_status
        self.error_type = error_type
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        # The upstream's Retry-After as sent (passed on to the client with a final 429).
        self.retry_after_header: str | None = None
        # True when the upstream refused the gateway's own account: its credentials
        # (401/403) or its balance (402, GLM's 1113). Skipped without a breaker count,
        # never worth a client retry.
        self.credentials = False


class Provider(Protocol):
    """Talks to one configured upstream."""

    config: ProviderConfig

    async def send(self, call: Call) -> Reply: ...

    async def count_tokens(self, call: Call) -> int | None:
        """Upstream token count when the provider supports it, else None."""
        ...

    async def close(self) -> None: ...


PROVIDERS: web.AppKey[dict[str, Provider]] = web.AppKey("providers")
"""One open provider (its own HTTP session) per configured name (app.py: `providers`)."""
