"""The storage interface every store implements (SQLite today; PostgreSQL next).

Callers name a query (`sql/*.sql`, `-- name: x`) and pass named parameters; they never
write SQL inline, so one set of call sites serves every implementation. Rows are plain
read-only mappings from column name to value: no index access, no driver row types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from aiohttp import web

Row = Mapping[str, Any]
Params = Mapping[str, Any]


class StoreTransaction(Protocol):
    """Statements inside `Store.transaction()`: all commit together or none does."""

    async def execute(self, name: str, params: Params = ...) -> int:
        """Run one write; the number of rows changed."""

    async def insert(self, name: str, params: Params = ...) -> int:
        """Run one INSERT; the new row's id."""

    async def execute_many(self, name: str, rows: Iterable[Params]) -> None:
        """Run one write for each parameter set."""

    async def fetch_one(self, name: str, params: Params = ...) -> Row | None:
        """Read inside the transaction (sees its own writes)."""

    async def fetch_all(self, name: str, params: Params = ...) -> list[Row]:
        """Read inside the transaction (sees its own writes)."""


class Store(Protocol):
    """A database reached by named queries."""

    async def fetch_one(self, name: str, params: Params = ...) -> Row | None:
        """The first row of a read, or None."""

    async def fetch_all(self, name: str, params: Params = ...) -> list[Row]:
        """Every row of a read."""

    async def execute(self, name: str, params: Params = ...) -> int:
        """One write in its own transaction; the number of rows changed."""

    async def insert(self, name: str, params: Params = ...) -> int:
        """One INSERT in its own transaction; the new row's id."""

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]:
        """A write transaction that holds the write lock from its first statement."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations (safe when several processes start at once)."""

    async def ping(self) -> float:
        """Seconds one trivial round trip takes (for /health); raises when unreachable."""

    async def close(self) -> None:
        """Release the connection(s)."""


DATABASE: web.AppKey[Store] = web.AppKey("database")
"""The open store (app.py: `database`)."""
