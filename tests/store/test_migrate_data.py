"""`python -m gateway migrate-data --to postgresql://...` from a populated SQLite file into a
real PostgreSQL: every table, same ids, sequences past them, idempotent re-runs, a run
killed half-way finished by the next, the figures checked, and a gateway on the copy serves
the copied keys (and refuses the revoked and suspended ones)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import asyncpg
import pytest

from gateway.accounts.users import (
    create_key,
    create_user,
    revoke_key,
    set_plan,
    set_user_status,
)
from gateway.store.migrate_data import MigrateError, migrate_data
from gateway.store.sqlite import open_database
from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.gateway import ROOT, GatewayFactory, run_cli

USAGE_ROWS = 6000


async def seed(path: Path, usage_rows: int = 200) -> dict[str, Any]:
    """A SQLite database with rows in every table, written through the gateway's own code
    and named queries (the seeding helper for the usage rows)."""
    db = await open_database(path)
    now = time.time()
    try:
        await db.execute("plan_upsert", {
            "name": "gold", "price_month": "19.90", "monthly_tokens": 123_456, "rpm": 7,
            "rpd": 0, "max_keys": 4, "max_input_tokens": 0, "concurrency": 3,
            "sort_order": 9, "now": now})
        await db.execute("plan_upsert", {  # a built-in plan changed by the config
            "name": "pro", "price_month": "31", "monthly_tokens": 11_000_000, "rpm": 61,
            "rpd": 0, "max_keys": 5, "max_input_tokens": 0, "concurrency": 16,
            "sort_order": 2, "now": now})
        ids = {}
        for i, plan in enumerate(["free", "pro", "gold", "team", "starter"]):
            ids[plan] = await create_user(db, f"u{i}@example.com", plan=plan,
                                          password="pw-" + secrets.token_hex(4),
                                          name=f"User {i} «ü»", is_admin=i == 0)
        made = {"live": await create_key(db, "u1@example.com", "laptop"),
                "revoked": await create_key(db, "u1@example.com", "old"),
                "suspended": await create_key(db, "u2@example.com"),
                "gold": await create_key(db, "u2@example.com", "second")}
        keys = {name: key.raw for name, key in made.items()}
        await revoke_key(db, made["revoked"].prefix)
        await set_user_status(db, "u2@example.com", "suspended")
        await set_plan(db, "u3@example.com", "pro")
        reqs = [SyntheticRequest(input_tokens=100 + i % 97, output_tokens=7 + i % 13,
                                 days_ago=(i % 40) / 2, cost=0.000123 * (i % 11),
                                 status="success" if i % 9 else "error")
                for i in range(usage_rows)]
        for start in range(0, len(reqs), 1000):
            await insert_synthetic_usage(db, ids["pro"], 1, reqs[start:start + 1000], now=now)
        for n, amount in enumerate(["19.90", "0.01", "31", "1234.56"]):
            await db.insert("order_insert", {
                "out_trade_no": f"T{n:04d}", "user_id": ids["gold"], "plan": "gold",
                "amount": amount, "subject": "llmapi gold", "now": now})
        await db.insert("refund_insert", {
            "out_trade_no": "T0003", "out_request_no": "R1", "amount": "34.56",
            "reason": "partly", "actor_id": ids["free"], "now": now})
        await db.insert("audit_insert", {
            "actor_id": ids["free"], "actor_email": "u0@example.com", "action": "user.plan",
            "target": "user:4", "detail": "team -> pro", "ip": "127.0.0.1", "now": now})
        await db.insert("remote_session_insert", {"id": "rs_" + secrets.token_hex(8),
                                                  "user_id": ids["pro"], "now": now,
                                                  "expires_at": now + 600})
        session = (await db.fetch_all("remote_sessions_of_user", {"user_id": ids["pro"],
                                                                  "limit": 5}))[0]["id"]
        await db.insert("remote_connection_insert", {"session_id": session,
                                                     "user_id": ids["pro"],
                                                     "role": "bridge", "now": now})
        await db.insert("code_insert", {"email": "new@example.com", "purpose": "register",
                                        "code_hash": "x", "now": now,
                                        "expires_at": now + 600})
        await db.insert("mail_insert", {"to_addr": "u0@example.com", "subject": "Hi",
                                        "body_text": "Body\nline 2", "status": "sent",
                                        "error": None, "now": now, "sent_at": now})
        await db.insert("login_failure_insert", {"email": "u0@example.com", "ip": "10.0.0.1",
                                                 "now": now})
        await db.insert("identity_insert", {"user_id": ids["free"], "provider": "google",
                                            "subject": "g-123", "now": now})
    finally:
        await db.close()
    fill_empty_tables(path)
    return {"keys": keys, "ids": ids}


def fill_empty_tables(path: Path) -> None:
    """A table a later migration adds gets one row from its schema alone (a foreign key
    takes an existing parent's key), so every table is copied with data in it even before
    `seed` learns to write that table through its own code."""
    with sqlite3.connect(path) as conn:
        for table in tables_of(path):
            if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                continue
            parents = {r[3]: (r[2], r[4]) for r in conn.execute(
                f"PRAGMA foreign_key_list({table})")}
            values: dict[str, Any] = {}
            for _, name, kind, _, _, pk in conn.execute(f"PRAGMA table_info({table})"):
                if name in parents:
                    parent, column = parents[name]
                    values[name] = conn.execute(
                        f"SELECT {column or 'id'} FROM {parent} LIMIT 1").fetchone()[0]
                elif pk == 1 and kind.upper() == "INTEGER":
                    continue  # the rowid alias numbers itself
                else:
                    values[name] = {"INTEGER": 7, "REAL": 1.5e9}.get(kind.upper(),
                                                                      f"{table}.{name}")
            conn.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES "
                         f"({', '.join('?' for _ in values)})", list(values.values()))


def tables_of(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name != 'schema_migrations' ORDER BY name")]


def sqlite_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        return sorted(conn.execute(f"SELECT {', '.join(cols)} FROM {table}"), key=repr)


async def pg_rows(url: str, table: str, cols: list[str]) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return sorted((tuple(r) for r in await conn.fetch(
            f"SELECT {', '.join(cols)} FROM {table}")), key=repr)
    finally:
        await conn.close()


async def max_usage_id(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT max(id) FROM usage_logs"))
    finally:
        await conn.close()


def columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def migrate(db: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate-data", "--from", str(db), "--to", url, *extra, cwd=db.parent,
                   env={"LLMAPI_CONFIG": "", "LLMAPI_DATABASE_URL": ""}, timeout=180)


def written(out: str, table: str) -> tuple[int, int]:
    m = re.search(rf"^{table}\s+(\d+)\s+(\d+)\s", out, re.M)
    assert m, f"{table} missing from the report:\n{out}"
    return int(m.group(1)), int(m.group(2))


async def assert_same_rows(db: Path, url: str) -> None:
    for table in tables_of(db):
        cols = columns(db, table)
        assert await pg_rows(url, table, cols) == sqlite_rows(db, table), table


@pytest.mark.slow
async def test_copies_every_table_verifies_and_reruns_idempotently(tmp_path: Path,
                                                                   pg_url: str) -> None:
    db = tmp_path / "llmapi.db"
    await seed(db)
    for table in tables_of(db):  # the test proves something for every table
        assert sqlite_rows(db, table), f"seed wrote no {table} row"
    first = migrate(db, pg_url)
    assert first.returncode == 0, first.stderr
    assert "verified:" in first.stdout and "!=" not in first.stdout
    for table in tables_of(db):
        assert re.search(rf"^{table}\s", first.stdout, re.M), table
    assert written(first.stdout, "usage_logs") == (200, 0)
    assert written(first.stdout, "users") == (5, 0)
    # the seeded built-in plans differ where the config changed them: updated, not added
    assert written(first.stdout, "plans") == (1, 1)
    assert re.search(r"sum\(input_tokens\) (\d+) = \1", first.stdout)
    assert "sum(amount) 1285.47 = 1285.47" in first.stdout  # the four orders, exactly
    assert "password" not in first.stdout + first.stderr.replace("password_hash", "")
    await assert_same_rows(db, pg_url)

    second = migrate(db, pg_url)
    assert second.returncode == 0, second.stderr
    assert "(0 rows written this run)" in second.stdout
    for table in tables_of(db):
        assert written(second.stdout, table) == (0, 0), table
    await assert_same_rows(db, pg_url)

    # the source moved on (a trial run while the gateway still served): only that moves
    lite = await open_database(db)
    await set_plan(lite, "u4@example.com", "gold")
    await insert_synthetic_usage(lite, 1, None, [SyntheticRequest(5, 6)])
    await lite.close()
    third = migrate(db, pg_url)
    assert third.returncode == 0, third.stderr
    assert written(third.stdout, "usage_logs") == (1, 0)
    assert written(third.stdout, "subscriptions") == (0, 2)  # u4's plan, u0's charge
    assert written(third.stdout, "users") == (0, 0)
    await assert_same_rows(db, pg_url)


@pytest.mark.slow
async def test_a_run_killed_half_way_is_finished_by_the_next(tmp_path: Path,
                                                             pg_url: str) -> None:
    db = tmp_path / "llmapi.db"
    await seed(db, usage_rows=USAGE_ROWS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "migrate-data", "--from", str(db), "--to", pg_url,
         "--batch-size", "50"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LLMAPI_CONFIG": ""}, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # progress: one line per committed batch
            if line.startswith("usage_logs: 100/"):
                proc.send_signal(signal.SIGKILL)
                break
        else:
            pytest.fail("no usage_logs progress line")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    conn = await asyncpg.connect(pg_url)
    try:
        copied = await conn.fetchval("SELECT count(*) FROM usage_logs")
    finally:
        await conn.close()
    assert 100 <= copied < USAGE_ROWS, "the kill must land half-way through the copy"
    assert copied % 50 == 0, "whole batches only: a killed batch is rolled back"

    again = migrate(db, pg_url)
    assert again.returncode == 0, again.stderr
    assert written(again.stdout, "usage_logs") == (USAGE_ROWS - copied, 0)
    assert f"rows {USAGE_ROWS} = {USAGE_ROWS}" in again.stdout
    await assert_same_rows(db, pg_url)


async def test_a_gateway_on_the_copy_serves_the_copied_keys(
        tmp_path: Path, pg_url: str, gateway_factory: GatewayFactory) -> None:
    db = tmp_path / "old.db"
    seeded = await seed(db)
    result = migrate(db, pg_url)
    assert result.returncode == 0, result.stderr
    gw = await gateway_factory({"database": {"url": pg_url, "path": str(tmp_path / "unused.db")}})
    assert type(gw.db).__name__ == "PostgresDatabase"

    def client(key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)

    reply = await client(seeded["keys"]["live"]).messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "Hi"}])
    assert reply.stop_reason == "end_turn"
    with pytest.raises(anthropic.AuthenticationError):
        await client(seeded["keys"]["revoked"]).messages.create(
            model="claude-sonnet-4-6", max_tokens=50,
            messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client(seeded["keys"]["suspended"]).messages.create(
            model="claude-sonnet-4-6", max_tokens=50,
            messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.status_code in (401, 403)

    # sequences: the next ids follow the copied ones instead of colliding with them
    user_id = await create_user(gw.db, "fresh@example.com", plan="gold")
    assert user_id == max(seeded["ids"].values()) + 1
    assert (await create_key(gw.db, "fresh@example.com")).key_id == 5
    with sqlite3.connect(db) as conn:
        top = conn.execute("SELECT max(id) FROM usage_logs").fetchone()[0]
    deadline = time.monotonic() + 10
    # the recorder writes the reply's row after the response: flush until it is there
    while (newest := await max_usage_id(pg_url)) == top and time.monotonic() < deadline:
        await gw.recorder.flush()
        await asyncio.sleep(0.02)
    assert newest == top + 1, "the served request's usage row takes the next id"


@pytest.mark.parametrize("url, says", [
    ("mysql://u:hunter2@127.0.0.1/db", "must be a postgresql:// URL"),
    ("postgresql://u:hunter2@127.0.0.1:notaport/db", "bad PostgreSQL URL"),
    ("postgresql://u:hunter2@/db", "no host"),
    ("postgresql://u:hunter2@127.0.0.1:5432", "no database name"),
])
def test_a_bad_url_is_one_line_and_exit_2(tmp_path: Path, url: str, says: str) -> None:
    (tmp_path / "x.db").write_bytes(b"")
    result = migrate(tmp_path / "x.db", url)
    assert result.returncode == 2
    assert says in result.stderr and "hunter2" not in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path: Path, pg_url: str) -> None:
    asyncio.run(seed(tmp_path / "x.db", usage_rows=1))
    closed = pg_url.rsplit(":", 1)[0].rsplit(":", 1)[0]  # postgresql://user:pass@127.0.0.1
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    password = pg_url.split(":")[2].split("@")[0]
    for url, says in [(f"{closed}:1/x", "cannot connect to PostgreSQL"),
                      (pg_url.replace(password, "wrong-" + password), "cannot connect"),
                      (f"{closed}:{port}/no_such_db", "cannot connect")]:
        result = migrate(tmp_path / "x.db", url)
        assert result.returncode == 2, result.stderr
        assert says in result.stderr and password not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


async def test_refuses_a_target_a_gateway_already_wrote_to(tmp_path: Path,
                                                           pg_url: str) -> None:
    db = tmp_path / "llmapi.db"
    await seed(db, usage_rows=3)
    assert migrate(db, pg_url).returncode == 0
    conn = await asyncpg.connect(pg_url)
    try:  # a gateway on PostgreSQL signs a user up after the copy
        await conn.execute("INSERT INTO users (email, created_at, updated_at) "
                           "VALUES ('late@example.com', 0, 0)")
    finally:
        await conn.close()
    lite = await open_database(db)
    await create_user(lite, "also-late@example.com")  # ... and the old file got one too
    await lite.close()
    result = migrate(db, pg_url)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("llmapi:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "users {'id': 6} in the target is not the source's row" in errors[0]
    rows = await pg_rows(pg_url, "users", ["id", "email"])
    assert (6, "late@example.com") in rows, "the gateway's user must survive"


def test_a_missing_source_is_one_line_and_exit_2(tmp_path: Path, pg_url: str) -> None:
    result = migrate(tmp_path / "nope.db", pg_url)
    assert result.returncode == 2 and "no SQLite database at" in result.stderr


async def test_a_poison_value_stops_with_the_table_and_column(tmp_path: Path,
                                                            pg_url: str) -> None:
    """SQLite stores what it is given; PostgreSQL's bigint does not take 'lots'."""
    db = tmp_path / "llmapi.db"
    await seed(db, usage_rows=5)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE usage_logs SET output_tokens = 'lots' WHERE id = 3")
    with pytest.raises(MigrateError, match=r"usage_logs.output_tokens: 'lots' is not an "
                                           r"integer"):
        await migrate_data(db, pg_url)
