"""Record what every request used and cost, written behind in batched SQLite transactions.

`record()` never waits on SQLite: it charges the tokens to the in-memory quota at once and
queues the row. A background task flushes the queue every `FLUSH_INTERVAL` or as soon as
`BATCH_ROWS` rows wait, in ONE transaction holding the usage rows, the subscription
counters and the keys' last-used times, so rows and counters can never disagree.

Durability window: rows not yet flushed live only in memory. A clean shutdown (SIGTERM,
SIGINT) drains the queue; a hard kill (SIGKILL, power loss) loses at most the last
`FLUSH_INTERVAL` (0.25 s) of records. If the queue ever holds `MAX_PENDING` rows (the
disk is stalled), `record_later()` makes new requests wait for room instead of dropping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.accounting.limits import Limits
from gateway.config import ProviderConfig
from gateway.protocol.usage import Usage
from gateway.store.base import Store

log = logging.getLogger("llmapi.usage")

FLUSH_INTERVAL = 0.25
BATCH_ROWS = 500
MAX_PENDING = 100_000


@dataclass(slots=True)
class UsageRecord:
    """One finished request, as billed."""

    request_id: str
    user_id: int
    key_id: int
    client_model: str
    provider: str
    upstream_model: str
    usage: Usage
    stream: bool
    status: str  # success | error | client_disconnect
    error_type: str | None
    duration_ms: float
    ttft_ms: float | None
    created_at: float
    ingress: str = "anthropic"  # the client API: anthropic | chat | responses


def cost_of(provider: ProviderConfig | None, upstream_model: str, usage: Usage) -> float:
    """Provider cost in its currency: prices are per million tokens; cache reads priced
    separately, cache writes at the input price."""
    if provider is None:
        return 0.0
    price = provider.pricing.get(upstream_model) or provider.pricing.get("default")
    if price is None:
        return 0.0
    return (
        (usage.input_tokens + usage.cache_creation_input_tokens) * price.input
        + usage.cache_read_input_tokens * price.cached_input
        + usage.output_tokens * price.output
    ) / 1_000_000


class UsageRecorder:
    """Queue of usage rows plus the task that writes them."""

    def __init__(self, db: Store, limits: Limits,
                 providers: dict[str, ProviderConfig]) -> None:
        self._db = db
        self._limits = limits
        self._providers = providers
        self._pending: list[dict[str, Any]] = []
        self._keys_used: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self.rows_written = 0

    def record(self, rec: UsageRecord) -> None:
        """Charge the quota now and queue the row; never blocks."""
        usage = rec.usage
        self._limits.add_tokens(rec.user_id, usage.total_tokens)
        provider = self._providers.get(rec.provider)
        output_ms = rec.duration_ms - (rec.ttft_ms or 0.0)
        self._pending.append({
            "request_id": rec.request_id, "user_id": rec.user_id, "key_id": rec.key_id,
            "client_model": rec.client_model, "provider": rec.provider,
            "upstream_model": rec.upstream_model, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_input_tokens,
            "cache_creation_tokens": usage.cache_creation_input_tokens,
            "thinking_tokens": usage.thinking_tokens, "estimated": int(usage.estimated),
            "cost": cost_of(provider, rec.upstream_model, usage),
            "currency": provider.currency if provider else "",
            "ttft_ms": rec.ttft_ms,
            "tokens_per_second": (usage.output_tokens * 1000.0 / output_ms
                                  if usage.output_tokens and output_ms > 1 else None),
            "duration_ms": rec.duration_ms, "stream": int(rec.stream), "status": rec.status,
            "error_type": rec.error_type, "created_at": rec.created_at,
            "ingress": rec.ingress,
        })
        self._keys_used[rec.key_id] = rec.created_at
        if len(self._pending) >= BATCH_ROWS:
            self._wake.set()
        if len(self._pending) >= MAX_PENDING:
            self._room.clear()

    async def wait_for_room(self) -> None:
        """Back-pressure for the hot path when the disk cannot keep up (never a drop)."""
        if not self._room.is_set():
            await self._room.wait()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write everything queued so far; when it returns, all of it is committed (a flush
        already running is waited for, then the rest goes in one more transaction)."""
        async with self._flushing:
            return await self._flush_now()

    async def _flush_now(self) -> int:
        rows, self._pending = self._pending, []
        keys, self._keys_used = self._keys_used, {}
        quotas = self._limits.take_dirty()
        if not rows and not quotas:
            return 0
        try:
            async with self._db.transaction() as tx:
                if rows:
                    await tx.execute_many("usage_insert", rows)
                if quotas:
                    await tx.execute_many("subscription_save", quotas)
                if keys:
                    await tx.execute_many("key_touch", [
                        {"key_id": k, "last_used_at": t} for k, t in keys.items()])
        except BaseException:
            # put everything back in front, in order, for the next attempt
            self._pending[:0] = rows
            for k, t in keys.items():
                self._keys_used.setdefault(k, t)
            self._limits.mark_dirty(quotas)
            raise
        finally:
            if len(self._pending) < MAX_PENDING:
                self._room.set()
        self.rows_written += len(rows)
        return len(rows)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the rows are back in the queue; try again next tick
                log.exception("usage flush failed; %d rows kept for retry", self.pending)
                await asyncio.sleep(FLUSH_INTERVAL)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="usage-recorder")

    async def stop(self) -> None:
        """Stop the task, then drain the queue completely (clean shutdown loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _ in range(5):
            try:
                await self.flush()  # everything queued, and counters changed without a row
                return
            except Exception:
                log.exception("usage drain failed; retrying")
                await asyncio.sleep(0.2)
        log.error("usage drain gave up with %d rows unwritten", self.pending)


class NoopRecorder:
    """Accounting switched off (benchmarks measure the accountant's cost against this)."""

    rows_written = 0
    pending = 0

    def record(self, rec: UsageRecord) -> None:
        return None

    async def wait_for_room(self) -> None:
        return None

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


RECORDER: web.AppKey[UsageRecorder | NoopRecorder] = web.AppKey("usage_recorder")
"""The write-behind usage recorder (app.py: `usage_recorder`)."""
