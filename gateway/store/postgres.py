"""The PostgreSQL store: the same named queries as SQLite, on a pool of asyncpg connections.

Chosen by `[database] url = "postgresql://..."` (or `LLMAPI_DATABASE_URL`) so several gateway
instances share one database. The queries are the very files SQLite reads (`sql/*.sql`);
at start-up the loader rewrites each `:name` parameter to PostgreSQL's `$n` and remembers
the order, so a call site passes the same dict to either store.

How it differs from SQLite, and why:
- Single statements (`execute`, `insert`, reads) run side by side on the pool: PostgreSQL's
  MVCC needs no process-wide writer lock.
- `transaction()` first takes one transaction-scoped advisory lock, `WRITE_LOCK`, shared by
  every instance. The call sites were written for SQLite's one-writer-at-a-time rule (e.g.
  count the user's keys, then insert one); the lock keeps that rule true across instances
  instead of letting READ COMMITTED interleave two such checks. The lock is taken before any
  row lock, so it cannot join a deadlock cycle.
- Migrations (`sql/postgres/NNNN_*.sql`, numbered like `sql/migrations/`) run in one
  transaction under their own advisory lock: instances starting together apply them once.
- `execute_many` of a plain `INSERT INTO t (cols) VALUES (:a, :b, ...)` is one `COPY` into
  the table; any other (the usage rows, which skip a request id already written) goes
  through asyncpg's `executemany`, which pipelines the whole batch in one round trip.
- `SUM()` of a bigint is `numeric` in PostgreSQL; it is decoded to `int` (or `float` when it
  has a fraction) so figures look the same as from SQLite.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.store.base import Params, Row
from gateway.store.sqlite import SQL_DIR, load_queries

log = logging.getLogger("llmapi.store")

PG_MIGRATIONS_DIR = SQL_DIR / "postgres"

# Advisory lock keys (any 64-bit numbers, fixed so every instance uses the same ones).
MIGRATE_LOCK = 0x6C6C6D_0001
WRITE_LOCK = 0x6C6C6D_0002

NO_PARAMS: Params = {}

_TOKEN = re.compile(r"'(?:[^']|'')*'|--[^\n]*|::|(?<![:\w]):([A-Za-z_]\w*)")
_COPYABLE = re.compile(
    r"^\s*INSERT\s+INTO\s+(\w+)\s*\(([^)]*)\)\s*VALUES\s*\(([^)]*)\)\s*$", re.I | re.S)


@dataclass(frozen=True, slots=True)
class Query:
    """One named query rewritten for PostgreSQL."""

    name: str
    sql: str  # with $1, $2, ...
    params: tuple[str, ...]  # the parameter name each $n stands for
    copy_table: str | None = None  # set when execute_many may COPY instead
    copy_columns: tuple[str, ...] = ()

    def args(self, params: Params) -> list[Any]:
        try:
            return [params[name] for name in self.params]
        except KeyError as exc:
            raise KeyError(f"query {self.name!r} needs parameter {exc.args[0]!r}") from None


def rewrite(name: str, sql: str) -> Query:
    """`:name` -> `$n` (the same name always the same number), leaving string literals,
    comments and `::type` casts alone."""
    order: list[str] = []

    def sub(match: re.Match[str]) -> str:
        param = match.group(1)
        if param is None:
            return match.group(0)
        if param not in order:
            order.append(param)
        return f"${order.index(param) + 1}"

    text = _TOKEN.sub(sub, sql)
    table: str | None = None
    columns: tuple[str, ...] = ()
    m = _COPYABLE.match(sql)
    if m:
        cols = tuple(c.strip() for c in m.group(2).split(","))
        values = tuple(v.strip() for v in m.group(3).split(","))
        if len(cols) == len(values) and all(v == f":{c}" for c, v in zip(cols, values,
                                                                         strict=True)):
            table, columns = m.group(1), cols
    return Query(name, text, tuple(order), table, columns)


PG_OVERRIDES_DIR = PG_MIGRATIONS_DIR / "queries"


def load_pg_queries(directory: Path = SQL_DIR) -> dict[str, Query]:
    """The shared queries, with `sql/postgres/queries/*.sql` replacing the few whose SQLite
    spelling PostgreSQL does not accept (an override of an unknown name is a mistake)."""
    queries = load_queries(directory)
    overrides = load_queries(PG_OVERRIDES_DIR)
    unknown = set(overrides) - set(queries)
    if unknown:
        raise ValueError(f"PostgreSQL overrides of unknown queries: {sorted(unknown)}")
    queries.update(overrides)
    return {name: rewrite(name, sql) for name, sql in queries.items()}


def _numeric(text: str) -> int | float:
    """numeric (what SUM of bigints returns) as the int or float SQLite would give."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _rowcount(status: str) -> int:
    """asyncpg returns the command tag ("UPDATE 3", "INSERT 0 1"): the last word counts."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _row(record: asyncpg.Record | None) -> Row | None:
    return None if record is None else dict(record.items())


class PostgresDatabase:
    """The gateway's PostgreSQL pool and its named queries (the same interface as SQLite's
    `Database`)."""

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url
        self.queries = load_pg_queries()
        self._min, self._max = min_size, max_size
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresDatabase({redact(self.url)!r})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self._min, max_size=self._max, init=_init_connection,
                command_timeout=60)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {redact(self.url)}: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def query(self, name: str) -> Query:
        try:
            return self.queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {SQL_DIR}") from None

    def sql(self, name: str) -> str:
        return self.query(name).sql

    async def fetch_one(self, name: str, params: Params = NO_PARAMS) -> Row | None:
        q = self.query(name)
        return _row(await self.pool.fetchrow(q.sql, *q.args(params)))

    async def fetch_all(self, name: str, params: Params = NO_PARAMS) -> list[Row]:
        q = self.query(name)
        return [dict(r.items()) for r in await self.pool.fetch(q.sql, *q.args(params))]

    async def execute(self, name: str, params: Params = NO_PARAMS) -> int:
        """One write, committed on its own; the number of rows changed."""
        q = self.query(name)
        return _rowcount(await self.pool.execute(q.sql, *q.args(params)))

    async def insert(self, name: str, params: Params = NO_PARAMS) -> int:
        """One INSERT, committed on its own; the new row's id."""
        async with self.pool.acquire() as conn:
            return await _insert(conn, self.query(name), params)

    async def ping(self) -> float:
        """Seconds one trivial round trip takes (for /health)."""
        start = time.perf_counter()
        await self.pool.fetchval("SELECT 1")
        return time.perf_counter() - start

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """A transaction that holds `WRITE_LOCK` from its first statement."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield PgTransaction(self, conn)

    async def migrate(self) -> list[str]:
        """Apply pending `sql/postgres/NNNN_*.sql` in order under `MIGRATE_LOCK`."""
        applied: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY,"
                " name text NOT NULL, applied_at double precision NOT NULL)")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM "
                                                           "schema_migrations")}
            for version, name, script in pending_pg_migrations(done):
                await conn.execute(script)  # simple protocol: a whole script at once
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES ($1, $2, $3)", version, name, time.time())
                applied.append(name)
        if applied:
            log.info("PostgreSQL migrations applied: %s", ", ".join(applied))
        return applied


class PgTransaction:
    """Statements inside `PostgresDatabase.transaction()`, on its one connection."""

    def __init__(self, db: PostgresDatabase, conn: asyncpg.Connection) -> None:
        self._db = db
        self.conn = conn

    async def execute(self, name: str, params: Params = NO_PARAMS) -> int:
        q = self._db.query(name)
        return _rowcount(await self.conn.execute(q.sql, *q.args(params)))

    async def insert(self, name: str, params: Params = NO_PARAMS) -> int:
        return await _insert(self.conn, self._db.query(name), params)

    async def execute_many(self, name: str, rows: Iterable[Params]) -> None:
        q = self._db.query(name)
        batch = list(rows)
        if not batch:
            return
        if q.copy_table is not None:
            await self.conn.copy_records_to_table(
                q.copy_table, columns=list(q.copy_columns),
                records=[tuple(r[c] for c in q.copy_columns) for r in batch])
            return
        await self.conn.executemany(q.sql, [q.args(r) for r in batch])

    async def fetch_one(self, name: str, params: Params = NO_PARAMS) -> Row | None:
        q = self._db.query(name)
        return _row(await self.conn.fetchrow(q.sql, *q.args(params)))

    async def fetch_all(self, name: str, params: Params = NO_PARAMS) -> list[Row]:
        q = self._db.query(name)
        return [dict(r.items()) for r in await self.conn.fetch(q.sql, *q.args(params))]


async def _insert(conn: asyncpg.Connection, q: Query, params: Params) -> int:
    """INSERT ... RETURNING id: the new id (0 when the table's id is not a number)."""
    value = await conn.fetchval(q.sql + " RETURNING id", *q.args(params))
    return value if isinstance(value, int) else 0


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("numeric", encoder=str, decoder=_numeric,
                              schema="pg_catalog", format="text")


def pending_pg_migrations(done: set[int]) -> list[tuple[int, str, str]]:
    """PostgreSQL migration files not yet recorded, ordered by their NNNN number."""
    found: list[tuple[int, str, str]] = []
    for file in sorted(PG_MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version = int(file.name[:4])
        if version not in done:
            found.append((version, file.stem, file.read_text(encoding="utf-8")))
    return found


async def open_postgres(url: str) -> PostgresDatabase:
    """Connect and migrate: what `serve` and the operator commands need."""
    db = PostgresDatabase(url)
    await db.open()
    try:
        await db.migrate()
    except BaseException:
        await db.close()
        raise
    return db
