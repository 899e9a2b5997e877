"""Record what every request used and cost, written behind in batched SQLite transactions.

`record()` never waits on SQLite: it queues the row (and hands it to the write-ahead
journal, gateway/accounting/journal.py). A background task flushes the queue every
`FLUSH_INTERVAL` or as soon as `BATCH_ROWS` rows wait, in ONE transaction holding the usage
rows, the subscription counters (as deltas, gateway/accounting/counters.py) and the keys'
last-used times, so rows and counters can never disagree.

Promises (docs/limits.md):
- a clean shutdown (SIGTERM, SIGINT) drains the queue: nothing is lost;
- a hard kill (SIGKILL) loses no upstream call: start and finish lines reach the kernel at
  the end of the loop iteration that made them, finished rows not yet in SQLite are
  replayed on start and calls in flight become `interrupted` rows (a call killed between
  its last byte and its finish line is one of those);
- the queue is bounded: at `MAX_PENDING` rows (the disk is stalled) admissions wait for
  room (`wait_for_room`) instead of piling rows up in memory;
- one bad row cannot stop accounting: a batch that fails on a row's values is written
  row by row, and a row that still fails is logged and dropped, never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.accounting.counters import CounterDelta, Counters
from gateway.accounting.journal import Journal
from gateway.config import ProviderConfig
from gateway.protocol.usage import Usage
from gateway.store.base import Store

log = logging.getLogger("llmapi.usage")

FLUSH_INTERVAL = 0.25
BATCH_ROWS = 500
MAX_PENDING = 20_000

# Errors that come from a row's values, not from the disk: isolate the row.
_ROW_ERRORS = (OverflowError, ValueError, TypeError, sqlite3.IntegrityError,
               sqlite3.InterfaceError, sqlite3.DataError)


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
    status: str  # success | error | client_disconnect | interrupted
    error_type: str | None
    duration_ms: float
    ttft_ms: float | None
    created_at: float
    attempts: int = 1
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

    def __init__(self, db: Store, counters: Counters,
                 providers: dict[str, ProviderConfig], journal: Journal | None = None) -> None:
        self._db = db
        self._counters = counters
        self._providers = providers
        self.journal = journal
        self._pending: list[dict[str, Any]] = []
        self._keys_used: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def row_of(self, rec: UsageRecord) -> dict[str, Any]:
        usage = rec.usage
        provider = self._providers.get(rec.provider)
        output_ms = rec.duration_ms - (rec.ttft_ms or 0.0)
        return {
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
            "error_type": rec.error_type, "attempts": rec.attempts, "ingress": rec.ingress,
            "created_at": rec.created_at,
        }

    def record(self, rec: UsageRecord) -> None:
        """Queue the row (the counters were settled by the caller); never blocks."""
        row = self.row_of(rec)
        if self.journal is not None:
            self.journal.finished(row)
        self._pending.append(row)
        self._keys_used[rec.key_id] = rec.created_at
        if len(self._pending) >= BATCH_ROWS:
            self._wake.set()
        if len(self._pending) >= MAX_PENDING:
            self._room.clear()

    async def wait_for_room(self) -> None:
        """Back-pressure for admissions when the disk cannot keep up (never a drop)."""
        if not self._room.is_set():
            self._wake.set()
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
        deltas = self._counters.take_deltas()
        if not rows and not deltas:
            return 0
        written = rows
        try:
            try:
                await self._write(rows, deltas, keys, isolate=False)
            except _ROW_ERRORS:
                log.warning("usage batch of %d rows refused a value; writing row by row",
                            len(rows))
                written = await self._write(rows, deltas, keys, isolate=True)
        except BaseException:
            # put everything back in front, in order, for the next attempt
            self._pending[:0] = rows
            for k, t in keys.items():
                self._keys_used.setdefault(k, t)
            self._counters.restore_deltas(deltas)
            raise
        finally:
            if len(self._pending) < MAX_PENDING:
                self._room.set()
        if self.journal is not None:
            self.journal.committed([r["request_id"] for r in rows])
        return len(written)

    async def _write(self, rows: list[dict[str, Any]], deltas: list[CounterDelta],
                     keys: dict[int, float], isolate: bool) -> list[dict[str, Any]]:
        """One transaction; with `isolate`, each row in its own savepoint so a bad one is
        dropped (and logged) while the others and the counters are written."""
        written = rows
        async with self._db.transaction() as tx:
            if rows and not isolate:
                await tx.execute_many("usage_insert", rows)
            elif rows:
                written = []
                for row in rows:
                    await tx.execute("usage_row_savepoint")
                    try:
                        await tx.execute("usage_insert", row)
                    except _ROW_ERRORS as exc:
                        await tx.execute("usage_row_rollback")
                        log.error("usage row %s dropped: %s: %s", row.get("request_id"),
                                  type(exc).__name__, exc)
                    else:
                        written.append(row)
                    await tx.execute("usage_row_release")
            if deltas:
                await tx.execute_many("subscription_add", [asdict(d) for d in deltas])
            if keys:
                await tx.execute_many("key_touch", [
                    {"key_id": k, "last_used_at": t} for k, t in keys.items()])
        return written

    async def replay_journal(self) -> tuple[int, int]:
        """After a crash: insert the journal's finished rows that never reached SQLite and an
        `interrupted` row for every call that was in flight. Returns (finished, interrupted)."""
        if self.journal is None:
            return 0, 0
        done, starts = self.journal.open()
        rows = [r for r in done if isinstance(r.get("request_id"), str)]
        for start in starts:
            row = interrupted_row(start)
            provider = self._providers.get(row["provider"])
            row["cost"] = cost_of(provider, row["upstream_model"], Usage(
                input_tokens=row["input_tokens"], output_tokens=row["output_tokens"]))
            row["currency"] = provider.currency if provider else ""
            rows.append(row)
        if not rows:
            return 0, 0
        found = await self._db.fetch_all(
            "usage_request_ids", {"ids": orjson.dumps([r["request_id"] for r in rows]).decode()})
        present = {r["request_id"] for r in found}
        fresh = [r for r in rows if r["request_id"] not in present]
        async with self._db.transaction() as tx:
            for row in fresh:
                await tx.execute("usage_insert", row)
                tokens = (row["input_tokens"] + row["output_tokens"] + row["cache_read_tokens"]
                          + row["cache_creation_tokens"])
                await tx.execute("subscription_charge",
                                 {"user_id": row["user_id"], "tokens": tokens})
        for row in rows:
            self.journal.finished(row)
        self.journal.committed([r["request_id"] for r in rows])
        self.journal.write_now()
        interrupted = sum(1 for r in fresh if r["status"] == "interrupted")
        log.warning("journal replay: %d finished rows and %d interrupted calls written",
                    len(fresh) - interrupted, interrupted)
        return len(fresh) - interrupted, interrupted

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
        if self.journal is not None:
            self.journal.start()

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
                break
            except Exception:
                log.exception("usage drain failed; retrying")
                await asyncio.sleep(0.2)
        else:
            log.error("usage drain gave up with %d rows unwritten (kept in the journal)",
                      self.pending)
        if self.journal is not None:
            await self.journal.stop()


def interrupted_row(start: dict[str, Any]) -> dict[str, Any]:
    """The row for a call the process died during: the input estimate (marked estimated)
    and the output tokens last journaled."""
    def num(name: str) -> int:
        value = start.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else 0

    return {
        "request_id": start["id"], "user_id": start.get("user_id"),
        "key_id": start.get("key_id"), "client_model": str(start.get("client_model", "")),
        "provider": str(start.get("provider", "")),
        "upstream_model": str(start.get("upstream_model", "")),
        "input_tokens": num("input_estimate"), "output_tokens": num("output_tokens"),
        "cache_read_tokens": 0, "cache_creation_tokens": 0, "thinking_tokens": 0,
        "estimated": 1, "cost": 0.0, "currency": "", "ttft_ms": None,
        "tokens_per_second": None, "duration_ms": 0.0, "stream": int(bool(start.get("stream"))),
        "status": "interrupted", "error_type": "gateway_restart",
        "attempts": max(1, num("attempts")), "ingress": str(start.get("ingress", "anthropic")),
        "created_at": float(start.get("at") or time.time()),
    }


class NoopRecorder:
    """Accounting switched off (benchmarks measure the accountant's cost against this)."""

    pending = 0
    journal = None

    def record(self, rec: UsageRecord) -> None:
        return None

    async def wait_for_room(self) -> None:
        return None

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def replay_journal(self) -> tuple[int, int]:
        return 0, 0


RECORDER: web.AppKey[UsageRecorder | NoopRecorder] = web.AppKey("usage_recorder")
