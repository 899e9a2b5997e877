"""The `Lease` seam: background jobs that must run once across all instances.

Payment reconciliation (which asks Alipay about pending orders and closes unpaid ones,
gateway/billing/payments.py) and the remote-session sweeper (gateway/remote/hub.py) run a
round every few seconds in every instance. With N instances on one database each round
would run N times: N queries to Alipay per pending order, N instances racing to close the
same order. Each round therefore first asks `lease.holds(name)` and does the work only when
this instance holds the lease of that name.

Two implementations:
- `LocalLease` (SQLite, one process per database): this process always holds every lease.
- `PgLease` (PostgreSQL): a session-level advisory lock per name, taken with
  `pg_try_advisory_lock` on one dedicated connection and kept for as long as the connection
  lives. The holder keeps the job from round to round (a leader, not a lock per round, so
  two instances whose timers are out of step do not both run a round). When the holder
  dies (kill -9, a lost machine, PostgreSQL restarted) PostgreSQL drops its connection and
  with it the lock; the next instance to ask takes over, so the longest gap is one round
  interval plus the time PostgreSQL needs to notice the dead connection (immediately for a
  killed process, TCP keepalive for a vanished machine).

A holder that loses its connection learns it on its next `holds()` (the liveness query
fails) and stops doing the work until it wins the lock again: two instances never both
believe they hold a lease for longer than one round.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg
from aiohttp import web

log = logging.getLogger("llmapi.lease")


class Lease(Protocol):
    """Who runs the jobs that must run once."""

    async def holds(self, name: str) -> bool:
        """Whether this instance holds (now, possibly just won) the lease `name`."""

    def held(self) -> frozenset[str]:
        """The names this instance believes it holds (for /metrics and /health)."""

    async def close(self) -> None:
        """Give every lease up (another instance takes over at its next round)."""


class LocalLease:
    """One process per database: every lease is ours."""

    def __init__(self) -> None:
        self._asked: set[str] = set()

    async def holds(self, name: str) -> bool:
        self._asked.add(name)
        return True

    def held(self) -> frozenset[str]:
        return frozenset(self._asked)

    async def close(self) -> None:
        self._asked.clear()


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lease name (the same in every
    instance and every release; distinct from the store's own lock keys, which are small)."""
    digest = hashlib.blake2b(b"llmapi-lease:" + name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgLease:
    """Session-level advisory locks on one dedicated PostgreSQL connection."""

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._held: set[str] = set()
        self._lock = asyncio.Lock()  # one connection: one query at a time across jobs

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            if self._held:
                log.warning("lease connection lost: giving up %s until won again",
                            ", ".join(sorted(self._held)))
            self._held.clear()  # a new session holds nothing
            self._conn = await asyncpg.connect(self.url, timeout=self.connect_timeout)
        return self._conn

    async def holds(self, name: str) -> bool:
        """Liveness of the held lock's connection, or one try to win it. Never raises: a
        database that cannot be reached means "not held" (the job waits for its return)."""
        async with self._lock:
            return await self._holds(name)

    async def _holds(self, name: str) -> bool:
        try:
            conn = await self._connection()
            if name in self._held:
                await conn.fetchval("SELECT 1", timeout=self.connect_timeout)
                return True
            won = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(name),
                                           timeout=self.connect_timeout))
        except Exception as exc:  # OSError, timeouts, asyncpg's PostgresError, its
            # InterfaceError and InternalClientError (a backend killed mid-query): whatever
            # broke, the session may be gone, and with it the lock
            if self._held:
                log.warning("lease connection lost (%s): giving up %s", exc,
                            ", ".join(sorted(self._held)))
            self._held.clear()
            await self._drop()
            return False
        if won:
            self._held.add(name)
            log.info("lease %s taken: this instance runs that job now", name)
        return won

    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close(timeout=1)
            except Exception:  # already broken: terminate without the goodbye
                self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        self._held.clear()
        await self._drop()  # closing the session releases its advisory locks


class Jobs:
    """Runs each must-run-once job on a timer, only while this instance holds its lease;
    counts the rounds it ran (`llmapi_job_rounds` on /metrics: across the instances only
    the holder's figure grows)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.rounds: dict[str, int] = {}

    async def run(self, name: str, interval: float,
                  job: Callable[[], Awaitable[object]]) -> None:
        """Forever: wait `interval`, then one round of `job` if the lease is ours. A failed
        round is logged and the next one tries again (a locked database now is fine later)."""
        self.rounds.setdefault(name, 0)
        while True:
            await asyncio.sleep(interval)
            if not await self.lease.holds(name):
                continue
            self.rounds[name] += 1
            try:
                await job()
            except Exception:
                log.exception("job %s: round failed", name)

    def samples(self) -> list[tuple[tuple[str, str], float]]:
        """(job, held) -> rounds run here, for the /metrics gauge."""
        held = self.lease.held()
        return [((name, "1" if name in held else "0"), float(n))
                for name, n in sorted(self.rounds.items())]


def open_lease(database_url: str) -> Lease:
    """`PgLease` on the PostgreSQL store, `LocalLease` on SQLite."""
    return PgLease(database_url) if database_url else LocalLease()


JOBS = web.AppKey("jobs", Jobs)
"""The must-run-once jobs and their lease (app.py: `jobs`)."""
