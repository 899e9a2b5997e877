"""Migrations, named queries and WAL mode on real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.store.sqlite import Database, load_queries, open_database

TABLES = {"users", "api_keys", "plans", "subscriptions", "usage_logs", "orders",
          "remote_sessions", "schema_migrations"}


def schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


async def test_migrations_applied_twice_leave_schema_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = await open_database(path)
    await db.close()
    first = schema(path)
    db = Database(path)
    await db.open()
    assert await db.migrate() == []
    await db.close()
    assert schema(path) == first
    assert {name for name, _ in first} >= TABLES


async def test_wal_mode_and_seeded_plans(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "x.db")
    try:
        row = await (await db.conn.execute("PRAGMA journal_mode")).fetchone()
        assert row is not None and row["journal_mode"] == "wal"
        plans = [r["name"] for r in await db.fetch_all("plan_all")]
        assert plans == ["free", "starter", "pro", "team"]
    finally:
        await db.close()


def test_two_processes_migrating_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    code = ("import asyncio,sys; from pathlib import Path; from gateway.store.sqlite import "
            "open_database\nasync def m():\n d=await open_database(Path(sys.argv[1]))\n"
            " await d.close()\nasyncio.run(m())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)],
                              stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(
            list((Path(__file__).parents[2] / "sql" / "migrations").glob("*.sql")))
        assert conn.execute("SELECT COUNT(*) FROM plans").fetchone()[0] == 4


def test_every_named_query_is_valid_sql(tmp_path: Path) -> None:
    async def check() -> None:
        db = await open_database(tmp_path / "q.db")
        try:
            for _name, sql in db.queries.items():
                # EXPLAIN compiles the statement without running it
                await db.conn.execute("EXPLAIN " + sql, {k: None for k in _params(sql)})
        finally:
            await db.close()

    asyncio.run(check())
    assert load_queries()


def _params(sql: str) -> set[str]:
    import re

    return set(re.findall(r":([a-z_]+)", sql))


async def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "t.db")
    try:
        try:
            async with db.transaction() as tx:
                await tx.execute("plan_upsert", {
                    "name": "temp", "price_month": "1", "monthly_tokens": 0, "rpm": 0,
                    "rpd": 0, "max_keys": 1, "max_input_tokens": 0, "concurrency": 0,
                    "sort_order": 9, "now": 0})
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert await db.fetch_one("plan_by_name", {"name": "temp"}) is None
    finally:
        await db.close()
