"""The SQLite `Store`: one connection, migrations, named queries from sql/, serialized writes.

One aiosqlite connection per process in WAL mode. Reads run directly; every write goes
through one lock so a transaction opened by one task never swallows another task's
statements. Queries live in `sql/*.sql` under `-- name: query_name` headers and are looked
up by name, so SQL stays SQL and could move to PostgreSQL with the same files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.resources import resource_dir
from gateway.store.base import Params, Row

log = logging.getLogger("llmapi.store")

SQL_DIR = resource_dir("sql")
MIGRATIONS_DIR = SQL_DIR / "migrations"

NO_PARAMS: Params = {}


def load_queries(directory: Path = SQL_DIR) -> dict[str, str]:
    """Read every `-- name: x` block of every `*.sql` file directly under `directory`."""
    queries: dict[str, str] = {}
    for file in sorted(directory.glob("*.sql")):
        name: str | None = None
        lines: list[str] = []
        for line in [*file.read_text(encoding="utf-8").splitlines(), "-- name: <end>"]:
            stripped = line.strip()
            if stripped.startswith("-- name:"):
                if name is not None:
                    if name in queries:
                        raise ValueError(f"{file.name}: query {name!r} defined twice")
                    queries[name] = "\n".join(lines).strip().rstrip(";")
                name, lines = stripped.removeprefix("-- name:").strip(), []
            elif name is not None and not stripped.startswith("--"):
                lines.append(line)
    return queries


def split_statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at end of migration: {current[:60]!r}")
    return statements


def create_private(path: Path) -> None:
    """Create the database file 0600 (owner only) before SQLite does: it holds password
    hashes, sessions' epochs, codes and usage. SQLite gives the -wal and -shm files it makes
    later the same mode as the database file. An existing file is left as it is, with a
    warning when others may read it (like session.key)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(path, 0o600)  # whatever the umask
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it (and its -wal, -shm)",
                        path)


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    """Rows as plain dicts: what the `Store` interface promises (no index access)."""
    return dict(zip([c[0] for c in cursor.description], values, strict=True))


class Database:
    """The gateway's single SQLite connection and its named queries (a `Store`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.queries = load_queries()
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_private(self.path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so batching is explicit.
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        self._conn.row_factory = _row  # type: ignore[assignment]
        await self._conn.execute("PRAGMA busy_timeout = 10000")
        await self._conn.execute("PRAGMA journal_mode = WAL")
        await self._conn.execute("PRAGMA synchronous = NORMAL")
        await self._conn.execute("PRAGMA foreign_keys = ON")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def sql(self, name: str) -> str:
        try:
            return self.queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {SQL_DIR}") from None

    async def fetch_one(self, name: str, params: Params = NO_PARAMS) -> Row | None:
        async with self.conn.execute(self.sql(name), params) as cur:
            return await cur.fetchone()  # type: ignore[return-value]

    async def fetch_all(self, name: str, params: Params = NO_PARAMS) -> list[Row]:
        async with self.conn.execute(self.sql(name), params) as cur:
            return list(await cur.fetchall())  # type: ignore[arg-type]

    async def execute(self, name: str, params: Params = NO_PARAMS) -> int:
        """Run one write in its own transaction; returns the number of rows changed."""
        async with self.transaction() as tx:
            return await tx.execute(name, params)

    async def insert(self, name: str, params: Params = NO_PARAMS) -> int:
        """Run one INSERT in its own transaction; returns the new row id."""
        async with self.transaction() as tx:
            return await tx.insert(name, params)

    async def ping(self) -> float:
        """Seconds one trivial query takes (for /health: the SQLite thread is responsive)."""
        start = time.perf_counter()
        async with self.conn.execute("SELECT 1") as cur:
            await cur.fetchone()
        return time.perf_counter() - start

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE so the write lock is taken up front, never upgraded mid-way."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self)
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def migrate(self) -> list[str]:
        """Apply pending `sql/migrations/NNNN_*.sql` in order; returns the names applied.

        The check and the migrations run inside one IMMEDIATE transaction, so a second
        process starting at the same moment waits, then finds everything applied.
        """
        applied: list[str] = []
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                await self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                async with self.conn.execute("SELECT version FROM schema_migrations") as cur:
                    done = {row["version"] for row in await cur.fetchall()}
                for version, name, script in pending_migrations(done):
                    for statement in split_statements(script):
                        await self.conn.execute(statement)
                    await self.conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at)"
                        " VALUES (?, ?, ?)", (version, name, time.time()),
                    )
                    applied.append(name)
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")
        return applied


class Transaction:
    """Statements run inside `Database.transaction()` (the lock is already held)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def execute(self, name: str, params: Params = NO_PARAMS) -> int:
        async with self._db.conn.execute(self._db.sql(name), params) as cur:
            return cur.rowcount

    async def insert(self, name: str, params: Params = NO_PARAMS) -> int:
        async with self._db.conn.execute(self._db.sql(name), params) as cur:
            return cur.lastrowid or 0

    async def execute_many(self, name: str, rows: Iterable[Params]) -> None:
        await self._db.conn.executemany(self._db.sql(name), rows)

    async def fetch_one(self, name: str, params: Params = NO_PARAMS) -> Row | None:
        async with self._db.conn.execute(self._db.sql(name), params) as cur:
            return await cur.fetchone()  # type: ignore[return-value]

    async def fetch_all(self, name: str, params: Params = NO_PARAMS) -> list[Row]:
        async with self._db.conn.execute(self._db.sql(name), params) as cur:
            return list(await cur.fetchall())  # type: ignore[arg-type]


def pending_migrations(done: set[int]) -> list[tuple[int, str, str]]:
    """Migration files not yet recorded, ordered by their NNNN number."""
    found: list[tuple[int, str, str]] = []
    for file in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version = int(file.name[:4])
        if version not in done:
            found.append((version, file.stem, file.read_text(encoding="utf-8")))
    return found


async def open_database(path: Path) -> Database:
    """Open, configure and migrate: what both `serve` and the operator commands need."""
    db = Database(path)
    await db.open()
    await db.migrate()
    return db

