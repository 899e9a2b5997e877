"""Copy a SQLite database into PostgreSQL: `python -m gateway migrate-data --to URL`.

How an operator moves from one machine to several (docs/scale-out.md). What it promises:
- **Every table** the SQLite migrations created is copied (read from the file itself, so a
  table a later migration adds needs no change here), parents before children (the
  foreign keys give the order), with every column and the same ids.
- **Idempotent and resumable.** Rows go over in batches, each batch one PostgreSQL
  transaction of `INSERT ... ON CONFLICT (primary key) DO UPDATE ... WHERE the row differs`.
  A second run changes nothing and says so; a run killed half-way leaves whole batches
  behind, and running it again copies only what is missing. The source wins a difference
  (e.g. the built-in plans the PostgreSQL migration seeded are overwritten with the
  SQLite ones, which the config may have changed).
- **Sequences** (identity columns) are moved past the largest copied id, so the first row
  a gateway inserts on PostgreSQL does not collide with a copied one.
- **Verified at the end**: per table the row count, the sum of the integer ids and the sums
  that carry money or quota (token counts, `*_used` counters, `cost`, decimal `amount`s)
  are computed on both sides and printed; any difference fails the run (exit 1).
- The source is read in one SQLite read transaction (a consistent snapshot even while a
  gateway still writes to it; stop the gateway for the final run). It is first migrated
  to the current schema, exactly as starting the gateway would do.
- It never overwrites what something else wrote to the target (a gateway already running
  on PostgreSQL): ids beyond the source's stop it before it writes anything; a row under a
  copied key that is another row (`created_at` differs) or was changed later (`updated_at`
  is newer) stops it at that batch, the target keeping its row.
- A bad URL, an unreachable or refusing server, or a missing source file is one line and
  exit 2 (`MigrateError`); the password is never printed.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from gateway.store.postgres import PostgresDatabase, redact
from gateway.store.sqlite import open_database

CONNECT_TIMEOUT = 15.0  # seconds; an unreachable host fails instead of hanging
DEFAULT_BATCH = 2000
MIGRATE_DATA_LOCK = 0x6C6C6D_0003  # session advisory lock: one migrate-data at a time
SKIPPED_TABLES = frozenset({"schema_migrations"})  # each side records its own migrations
IDENTITY_COLUMNS = ("created_at", "connected_at")  # set once: another value, another row

Progress = Callable[[str], None]


class MigrateError(Exception):
    """A problem the operator can fix (printed as one line, exit 2)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sqlite_type: str  # declared type, upper case (INTEGER, TEXT, REAL)
    pk: int  # position in the primary key, 0 when not part of it


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    parents: frozenset[str]  # tables its foreign keys point at

    @property
    def key(self) -> tuple[str, ...]:
        """The primary key columns (the rowid `id` alias when none is declared)."""
        pk = sorted((c for c in self.columns if c.pk), key=lambda c: c.pk)
        return tuple(c.name for c in pk)

    @property
    def integer_id(self) -> str | None:
        """The single INTEGER primary key column, if that is the key."""
        if len(self.key) == 1:
            col = next(c for c in self.columns if c.name == self.key[0])
            if col.sqlite_type == "INTEGER":
                return col.name
        return None


@dataclass
class TableReport:
    """What happened to one table, and the figures both sides agree (or not) on."""

    name: str
    inserted: int = 0
    updated: int = 0
    source_rows: int = 0
    target_rows: int = 0
    # figure name ("rows", "sum(id)", "sum(input_tokens)", ...) -> (source, target)
    figures: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[str]:
        return [name for name, (a, b) in self.figures.items() if not _same(a, b)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a or 0), float(b or 0), rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def check_url(url: str) -> str:
    """The URL if it names a PostgreSQL server; `MigrateError` (never echoing a password)
    otherwise."""
    if not url:
        raise MigrateError("migrate-data needs --to postgresql://user:pass@host:5432/db "
                           "(or LLMAPI_DATABASE_URL)")
    shown = redact(url) if "@" in url else url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a non-numeric port)
    except ValueError as exc:
        raise MigrateError(f"bad PostgreSQL URL {shown}: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise MigrateError(f"--to must be a postgresql:// URL, not {parts.scheme or 'a bare'}"
                           f" {'URL' if parts.scheme else 'path'} ({shown})")
    if not parts.hostname:
        raise MigrateError(f"bad PostgreSQL URL {shown}: no host")
    if not parts.path.strip("/"):
        raise MigrateError(f"bad PostgreSQL URL {shown}: no database name (…/llmapi)")
    return url


def source_tables(conn: sqlite3.Connection) -> list[Table]:
    """Every table of the SQLite file, parents before children."""
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    tables: dict[str, Table] = {}
    for name in names:
        if name in SKIPPED_TABLES:
            continue
        columns = tuple(Column(r[1], (r[2] or "").upper(), int(r[5]))
                        for r in conn.execute(f'PRAGMA table_info("{name}")'))
        parents = frozenset(r[2] for r in conn.execute(f'PRAGMA foreign_key_list("{name}")')
                            if r[2] != name)
        tables[name] = Table(name, columns, parents)
    ordered: list[Table] = []
    done: set[str] = set()
    while len(ordered) < len(tables):
        ready = [t for t in tables.values() if t.name not in done
                 and all(p in done or p not in tables for p in t.parents)]
        if not ready:
            left = sorted(set(tables) - done)
            raise MigrateError(f"foreign keys form a cycle among {', '.join(left)}")
        for t in ready:
            ordered.append(t)
            done.add(t.name)
    return ordered


def _figure_kind(column: Column) -> str | None:
    """Which columns are summed for the check: ids, quota and money."""
    name = column.name
    if column.sqlite_type == "INTEGER" and (name.endswith("tokens") or name.endswith("_used")):
        return "int"
    if column.sqlite_type == "REAL" and name == "cost":
        return "float"
    if column.sqlite_type == "TEXT" and (name == "amount" or name.startswith("price")):
        return "decimal"
    return None


def _converter(pg_type: str, table: str, column: str) -> Callable[[Any], Any]:
    """SQLite values are loosely typed; PostgreSQL's columns are not."""

    def to_int(v: Any) -> Any:
        if v is None or isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        raise MigrateError(f"{table}.{column}: {v!r} is not an integer")

    def to_float(v: Any) -> Any:
        if v is None or isinstance(v, float):
            return v
        try:
            return float(v)
        except (TypeError, ValueError):
            raise MigrateError(f"{table}.{column}: {v!r} is not a number") from None

    def to_text(v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, bytes):
            raise MigrateError(f"{table}.{column}: holds bytes, expected text")
        return str(v)

    if pg_type in ("bigint", "integer", "smallint"):
        return to_int
    if pg_type in ("double precision", "real", "numeric"):
        return to_float
    if pg_type == "text":
        return to_text
    return lambda v: v


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Copier:
    """One run: the source snapshot, the target connection, the reports."""

    def __init__(self, source: sqlite3.Connection, target: asyncpg.Connection,
                 batch_size: int, progress: Progress) -> None:
        self.source = source
        self.target = target
        self.batch_size = batch_size
        self.progress = progress

    async def target_columns(self, table: str) -> dict[str, str]:
        rows = await self.target.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1", table)
        return {r["column_name"]: r["data_type"] for r in rows}

    async def refuse_if_ahead(self, tables: Sequence[Table]) -> None:
        """Refuse before writing anything when the target holds ids the source never had:
        a gateway already wrote there, and copying would overwrite its rows (the source
        wins a conflict)."""
        for table in tables:
            column = table.integer_id
            if column is None or not await self.target_columns(table.name):
                continue
            c, t = _quote(column), _quote(table.name)
            mine = self.source.execute(f"SELECT coalesce(max({c}), 0) FROM {t}").fetchone()[0]
            theirs = await self.target.fetchval(f"SELECT coalesce(max({c}), 0) FROM {t}")
            if theirs > mine:
                raise MigrateError(
                    f"the target's {table.name} already has ids up to {theirs}, the source "
                    f"only up to {mine}: something else wrote to it (a gateway running on "
                    "PostgreSQL?); nothing copied; migrate into an empty database")

    async def copy(self, table: Table) -> TableReport:
        report = TableReport(table.name)
        pg_columns = await self.target_columns(table.name)
        if not pg_columns:
            raise MigrateError(f"table {table.name} is missing in PostgreSQL (its migration "
                               "twin in sql/postgres/ is missing)")
        missing = [c.name for c in table.columns if c.name not in pg_columns]
        if missing:
            raise MigrateError(f"{table.name}: columns {', '.join(missing)} are missing in "
                               "PostgreSQL (sql/postgres/ is behind sql/migrations/)")
        if not table.key:
            raise MigrateError(f"{table.name} has no primary key: cannot copy it idempotently")
        names = [c.name for c in table.columns]
        convert = [_converter(pg_columns[n], table.name, n) for n in names]
        pg_types = [pg_columns[n] for n in names]
        sql = self._upsert_sql(table, pg_types)
        clash = self._clash_sql(table, pg_types)
        total = self.source.execute(f"SELECT count(*) FROM {_quote(table.name)}").fetchone()[0]
        cursor = self.source.execute(
            f"SELECT {', '.join(map(_quote, names))} FROM {_quote(table.name)} "
            f"ORDER BY {', '.join(map(_quote, table.key))}")
        read = 0
        while batch := cursor.fetchmany(self.batch_size):
            read += len(batch)
            arrays: list[list[Any]] = [[] for _ in names]
            for row in batch:
                for i, value in enumerate(row):
                    arrays[i].append(convert[i](value))
            async with self.target.transaction():
                if clash is not None:
                    other = await self.target.fetchrow(clash, *arrays)
                    if other is not None:
                        raise MigrateError(
                            f"{table.name} {dict(other.items())} in the target is not the "
                            "source's row (created at another time, or changed after it): "
                            "something else wrote to the target (a gateway running on "
                            "PostgreSQL?); stopped, the target keeps its row; migrate into "
                            "an empty database")
                flags = await self.target.fetch(sql, *arrays)
            new = sum(1 for f in flags if f["inserted"])
            report.inserted += new
            report.updated += len(flags) - new
            self.progress(f"{table.name}: {read}/{total} rows read, {report.inserted} new, "
                          f"{report.updated} updated")
        await self._advance_sequence(table)
        return report

    def _clash_sql(self, table: Table, pg_types: Sequence[str]) -> str | None:
        """A row already in the target under the same key that is another row (its
        `created_at` differs) or was changed after the source's (`updated_at` is later):
        overwriting it would lose what something else wrote."""
        cols = [c.name for c in table.columns]
        conditions = [f"t.{_quote(c)} IS DISTINCT FROM s.{_quote(c)}"
                      for c in IDENTITY_COLUMNS if c in cols]
        if "updated_at" in cols:
            conditions.append('t."updated_at" > s."updated_at"')
        if not conditions:
            return None
        unnest = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(pg_types))
        key = ", ".join(f"t.{_quote(c)}" for c in table.key)
        return (f"SELECT {key} FROM {_quote(table.name)} t JOIN unnest({unnest}) AS "
                f"s({', '.join(map(_quote, cols))}) USING ({', '.join(map(_quote, table.key))})"
                f" WHERE {' OR '.join(conditions)} LIMIT 1")

    def _upsert_sql(self, table: Table, pg_types: Sequence[str]) -> str:
        cols = [c.name for c in table.columns]
        quoted = ", ".join(map(_quote, cols))
        unnest = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(pg_types))
        rest = [c for c in cols if c not in table.key]
        conflict = ", ".join(map(_quote, table.key))
        target = _quote(table.name)
        if rest:
            sets = ", ".join(f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in rest)
            mine = ", ".join(f"{target}.{_quote(c)}" for c in rest)
            theirs = ", ".join(f"EXCLUDED.{_quote(c)}" for c in rest)
            action = f"DO UPDATE SET {sets} WHERE ROW({mine}) IS DISTINCT FROM ROW({theirs})"
        else:
            action = "DO NOTHING"
        return (f"INSERT INTO {target} ({quoted}) SELECT * FROM unnest({unnest}) "
                f"ON CONFLICT ({conflict}) {action} RETURNING (xmax = 0) AS inserted")

    async def _advance_sequence(self, table: Table) -> None:
        """Identity columns: the next generated id is past every copied one."""
        column = table.integer_id
        if column is None:
            return
        sequence = await self.target.fetchval(
            "SELECT pg_get_serial_sequence($1, $2)", _quote(table.name), column)
        if sequence is None:
            return
        await self.target.execute(
            f"SELECT setval($1, m) FROM (SELECT max({_quote(column)}) AS m "
            f"FROM {_quote(table.name)}) s WHERE m IS NOT NULL", sequence)

    async def verify(self, table: Table, report: TableReport) -> None:
        """Row count, sum of ids and the money/quota sums, on both sides."""
        t = _quote(table.name)
        report.source_rows = self.source.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        report.target_rows = int(await self.target.fetchval(f"SELECT count(*) FROM {t}"))
        report.figures["rows"] = (report.source_rows, report.target_rows)
        summed = [(c.name, "int") for c in table.columns if c.name == table.integer_id]
        summed += [(c.name, kind) for c in table.columns
                   if (kind := _figure_kind(c)) is not None]
        for name, kind in summed:
            c = _quote(name)
            if kind == "decimal":
                a: Any = _decimal_sum(v for (v,) in self.source.execute(f"SELECT {c} FROM {t}"))
                b: Any = _decimal_sum(r[0] for r in await self.target.fetch(
                    f"SELECT {c} FROM {t}"))
            else:
                a = self.source.execute(f"SELECT total({c}) FROM {t}" if kind == "float"
                                        else f"SELECT coalesce(sum({c}), 0) FROM {t}"
                                        ).fetchone()[0]
                b = await self.target.fetchval(f"SELECT coalesce(sum({c}), 0)::text FROM {t}")
                b = float(b) if kind == "float" else int(b)
            report.figures[f"sum({name})"] = (a, b)


def _decimal_sum(values: Any) -> Decimal:
    total = Decimal(0)
    for v in values:
        if v in (None, ""):
            continue
        try:
            total += Decimal(str(v))
        except InvalidOperation:
            raise MigrateError(f"{v!r} is not a decimal amount") from None
    return total


async def _open_target(url: str) -> PostgresDatabase:
    db = PostgresDatabase(url, min_size=1, max_size=1)
    try:
        await asyncio.wait_for(db.open(), CONNECT_TIMEOUT)
    except TimeoutError:
        raise MigrateError(f"cannot connect to PostgreSQL at {redact(url)}: no answer "
                           f"within {CONNECT_TIMEOUT:.0f}s") from None
    except (ConnectionError, OSError, ValueError) as exc:
        raise MigrateError(str(exc) if isinstance(exc, ConnectionError) else
                           f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from None
    try:
        await db.migrate()
    except BaseException:
        await db.close()
        raise
    return db


async def migrate_data(source: Path, url: str, *, batch_size: int = DEFAULT_BATCH,
                       progress: Progress = lambda line: None) -> list[TableReport]:
    """Copy `source` into the database at `url` and verify; one report per table."""
    check_url(url)
    if batch_size < 1:
        raise MigrateError("--batch-size must be at least 1")
    if not source.is_file():
        raise MigrateError(f"no SQLite database at {source} (give it with --from, or the "
                           "config's [database] path)")
    try:
        lite = await open_database(source)  # bring it to the current schema first
        await lite.close()
    except sqlite3.DatabaseError as exc:
        raise MigrateError(f"{source} is not a usable SQLite database: {exc}") from None
    db = await _open_target(url)
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one read snapshot for the copy and the check
        tables = source_tables(conn)
        async with db.pool.acquire() as target:
            if not await target.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATE_DATA_LOCK):
                raise MigrateError("another migrate-data is running against this database")
            try:
                copier = Copier(conn, target, batch_size, progress)
                await copier.refuse_if_ahead(tables)
                reports = [await copier.copy(t) for t in tables]
                for t, report in zip(tables, reports, strict=True):
                    await copier.verify(t, report)
            finally:
                await target.execute("SELECT pg_advisory_unlock($1)", MIGRATE_DATA_LOCK)
        return reports
    except asyncpg.PostgresError as exc:
        raise MigrateError(f"PostgreSQL refused the copy: {exc}") from None
    finally:
        conn.close()
        await db.close()


def format_report(reports: Sequence[TableReport]) -> str:
    """The table printed at the end: per table what was copied and every figure checked."""
    lines = [f"{'table':<20} {'new':>8} {'updated':>8}  figure: source = target"]
    for r in reports:
        figures = "; ".join(
            f"{name} {a} {'=' if _same(a, b) else '!='} {b}" for name, (a, b) in r.figures.items())
        lines.append(f"{r.name:<20} {r.inserted:>8} {r.updated:>8}  {figures}")
    bad = [f"{r.name}: {', '.join(r.mismatches)}" for r in reports if r.mismatches]
    copied = sum(r.inserted + r.updated for r in reports)
    if bad:
        lines.append("verification FAILED: " + "; ".join(bad) + " (the target holds rows the "
                     "source does not: written by something else, or deleted from the source "
                     "since an earlier run; start again on an empty database)")
    else:
        lines.append(f"verified: {len(reports)} tables, every row count and sum equal "
                     f"({copied} rows written this run)")
    return "\n".join(lines)
