"""The PostgreSQL store on a real server: migrations twin SQLite's, every named query
compiles, parameters rewrite correctly, writes batch and transactions roll back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from gateway.config import ConfigError, parse_config
from gateway.store.postgres import (
    PG_MIGRATIONS_DIR,
    PostgresDatabase,
    open_postgres,
    redact,
    rewrite,
)
from gateway.store.sqlite import MIGRATIONS_DIR, open_database

# SQLite's declared type -> the PostgreSQL type its twin column must have
TYPE_TWINS = {"INTEGER": "bigint", "TEXT": "text", "REAL": "double precision"}


def numbers(directory: Path) -> list[int]:
    return sorted(int(f.name[:4]) for f in directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def test_both_migration_sets_have_the_same_numbers() -> None:
    assert numbers(MIGRATIONS_DIR) == numbers(PG_MIGRATIONS_DIR), (
        "every sql/migrations/NNNN_*.sql needs its twin in sql/postgres/ (and back)")
    sqlite_names = sorted(f.name for f in MIGRATIONS_DIR.glob("*.sql"))
    pg_names = sorted(f.name for f in PG_MIGRATIONS_DIR.glob("*.sql"))
    assert sqlite_names == pg_names


async def test_both_sets_produce_the_same_tables_and_columns(tmp_path: Path,
                                                            pg_url: str) -> None:
    sdb = await open_database(tmp_path / "x.db")
    await sdb.close()
    with sqlite3.connect(tmp_path / "x.db") as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'")]
        lite = {t: {(c[1], TYPE_TWINS[c[2]], bool(c[3]) or bool(c[5]))
                    for c in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    pdb = await open_postgres(pg_url)
    try:
        rows = await pdb.pool.fetch(
            "SELECT table_name, column_name, data_type, is_nullable FROM "
            "information_schema.columns WHERE table_schema = 'public'")
    finally:
        await pdb.close()
    pg: dict[str, set[tuple[str, str, bool]]] = {}
    for r in rows:
        pg.setdefault(r["table_name"], set()).add(
            (r["column_name"], r["data_type"], r["is_nullable"] == "NO"))
    assert set(pg) == set(lite)
    for table in lite:
        assert pg[table] == lite[table], table


async def test_every_named_query_compiles_on_postgresql(pg_url: str) -> None:
    """`prepare` parses, plans and infers every parameter's type (an untyped `$n` fails)."""
    db = await open_postgres(pg_url)
    try:
        async with db.pool.acquire() as conn:
            for name, q in db.queries.items():
                try:
                    await conn.prepare(q.sql)
                except asyncpg.PostgresError as exc:
                    pytest.fail(f"{name}: {exc}\n{q.sql}")
    finally:
        await db.close()


def test_rewrite_keeps_literals_casts_and_comments() -> None:
    q = rewrite("x", "SELECT ':no', a::text, -- :nope\n b FROM t WHERE a = :a OR b = :b "
                     "OR c = :a")
    assert q.sql == "SELECT ':no', a::text, -- :nope\n b FROM t WHERE a = $1 OR b = $2 OR c = $1"
    assert q.params == ("a", "b")
    assert q.args({"a": 1, "b": 2, "extra": 3}) == [1, 2]
    with pytest.raises(KeyError, match="needs parameter 'b'"):
        q.args({"a": 1})


def test_plain_inserts_are_copied_and_others_are_not() -> None:
    q = rewrite("u", "INSERT INTO t (a, b) VALUES (:a, :b)")
    assert (q.copy_table, q.copy_columns) == ("t", ("a", "b"))
    assert rewrite("v", "INSERT INTO t (a, b) VALUES (:a, 0)").copy_table is None
    assert rewrite("w", "INSERT INTO t (a) VALUES (:a) ON CONFLICT DO NOTHING").copy_table is None
    from gateway.store.postgres import load_pg_queries

    # usage rows skip a request id already written (a retried flush): not a plain insert
    assert load_pg_queries()["usage_insert"].copy_table is None


async def test_migrations_twice_and_rollback_and_ids(pg_url: str) -> None:
    db = await open_postgres(pg_url)
    try:
        assert await db.migrate() == []
        now = 1.0
        uid = await db.insert("user_insert", {
            "email": "a@example.com", "name": "", "password_hash": "", "is_admin": 0,
            "status": "active", "email_verified": 1, "now": now})
        assert uid > 0
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("user_set_status", {"status": "suspended", "now": 2.0,
                                                     "email": "a@example.com"})
                raise RuntimeError("boom")
        row = await db.fetch_one("user_by_id", {"id": uid})
        assert row is not None and row["status"] == "active"
        assert await db.execute("user_set_status", {"status": "suspended", "now": 3.0,
                                                    "email": "a@example.com"}) == 1
        assert await db.execute("user_set_status", {"status": "x", "now": 3.0,
                                                    "email": "nobody@example.com"}) == 0
    finally:
        await db.close()


async def test_usage_rows_batch_and_sums_are_ints(pg_url: str) -> None:
    db = await open_postgres(pg_url)
    try:
        rows = [{"request_id": f"r{i}", "user_id": 1, "key_id": 1, "client_model": "m",
                 "provider": "p", "upstream_model": "u", "input_tokens": i,
                 "output_tokens": 2 * i, "cache_read_tokens": 0, "cache_creation_tokens": 0,
                 "thinking_tokens": 0, "estimated": 0, "cost": 0.5, "currency": "CNY",
                 "ttft_ms": None, "tokens_per_second": None, "duration_ms": 1,
                 "stream": 1, "status": "success", "error_type": None, "created_at": 100 + i,
                 "ingress": "anthropic", "attempts": 1} for i in range(1000)]
        async with db.transaction() as tx:
            await tx.execute_many("usage_insert", rows)
        got = await db.fetch_all("usage_summary", {"since": 0, "email": None})
        assert len(got) == 1
        assert got[0]["requests"] == 1000
        assert got[0]["input_tokens"] == sum(range(1000))
        assert type(got[0]["input_tokens"]) is int
        assert got[0]["output_tokens"] == 2 * sum(range(1000))
        assert got[0]["cost"] == pytest.approx(500.0)
    finally:
        await db.close()


async def test_transactions_serialise_across_pools(pg_url: str) -> None:
    """Two pools (two instances) doing count-then-insert at once never both pass the
    check: the write lock keeps SQLite's one-writer rule across instances."""
    a, b = await open_postgres(pg_url), await open_postgres(pg_url)
    try:
        await a.insert("user_insert", {"email": "k@example.com", "name": "",
                                       "password_hash": "", "is_admin": 0,
                                       "status": "active", "email_verified": 1, "now": 1.0})
        user = await a.fetch_one("user_by_email", {"email": "k@example.com"})
        assert user is not None

        async def add(db: PostgresDatabase, i: int) -> bool:
            async with db.transaction() as tx:
                row = await tx.fetch_one("key_count_active", {"user_id": user["id"]})
                assert row is not None
                if row["n"] >= 3:
                    return False
                await asyncio.sleep(0.01)  # widen the window a racing check would need
                await tx.insert("key_insert", {"user_id": user["id"], "name": "",
                                               "prefix": f"p{i}", "key_hash": f"h{i}",
                                               "now": 1.0})
                return True

        results = await asyncio.gather(*(add(a if i % 2 else b, i) for i in range(20)))
        assert sum(results) == 3
        row = await a.fetch_one("key_count_active", {"user_id": user["id"]})
        assert row is not None and row["n"] == 3
    finally:
        await a.close()
        await b.close()


def test_four_processes_migrating_at_once(pg_url: str) -> None:
    code = ("import asyncio,sys\nfrom gateway.store.postgres import open_postgres\n"
            "async def m():\n d=await open_postgres(sys.argv[1])\n await d.close()\n"
            "asyncio.run(m())")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE)
             for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(pg_url)
        try:
            return (await conn.fetchval("SELECT COUNT(*) FROM schema_migrations"),
                    await conn.fetchval("SELECT COUNT(*) FROM plans"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == (len(numbers(PG_MIGRATIONS_DIR)), 4)


def test_database_url_from_environment_wins_and_is_never_echoed() -> None:
    cfg = parse_config({"database": {"url": "postgresql://u:file@h/db"}}, env={
        "LLMAPI_DATABASE_URL": "postgresql://u:secret@h:5432/db"})
    assert cfg.database.url == "postgresql://u:secret@h:5432/db"
    assert redact(cfg.database.url) == "postgresql://u:***@h:5432/db"
    with pytest.raises(ConfigError) as err:
        parse_config({"database": {"url": "mysql://u:secret@h/db"}}, env={})
    assert "secret" not in str(err.value)


async def test_unreachable_server_names_the_address_not_the_password() -> None:
    from tests.helpers.services import free_port

    db = PostgresDatabase(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x")
    with pytest.raises(ConnectionError) as err:
        await db.open()
    assert "127.0.0.1" in str(err.value) and "hunter2" not in str(err.value)
