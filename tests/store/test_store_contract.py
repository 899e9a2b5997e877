"""The `Store` contract, run against every implementation (SQLite today; issue 16 adds
PostgreSQL to `STORES`). Only named queries from sql/ and the interface are used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.store.base import Store
from gateway.store.sqlite import open_database


async def _sqlite(tmp_path: Path) -> Store:
    return await open_database(tmp_path / "contract.db")


STORES: dict[str, Callable[[Path], Awaitable[Store]]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await STORES[request.param](tmp_path)
    yield opened
    await opened.close()


def plan(name: str, tokens: int = 1000) -> dict[str, Any]:
    return {"name": name, "price_month": "0", "monthly_tokens": tokens, "rpm": 10, "rpd": 100,
            "max_keys": 1, "max_input_tokens": 1000, "concurrency": 0, "sort_order": 9,
            "now": 1.0}


def user(email: str) -> dict[str, Any]:
    return {"email": email, "name": "", "password_hash": "", "is_admin": 0,
            "status": "active", "email_verified": 1, "now": 1.0}


async def test_rows_are_plain_mappings_and_missing_is_none(store: Store) -> None:
    row = await store.fetch_one("plan_by_name", {"name": "free"})
    assert isinstance(row, dict) and row["name"] == "free"
    assert await store.fetch_one("plan_by_name", {"name": "no-such-plan"}) is None
    rows = await store.fetch_all("plan_all")
    assert all(isinstance(r, dict) for r in rows) and len(rows) >= 4


async def test_insert_returns_the_new_id_and_execute_the_rows_changed(store: Store) -> None:
    first = await store.insert("user_insert", user("a@example.com"))
    second = await store.insert("user_insert", user("b@example.com"))
    assert first > 0 and second > first
    assert await store.execute("plan_upsert", plan("extra")) == 1


async def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.execute("plan_upsert", plan("half"))
            assert await tx.fetch_one("plan_by_name", {"name": "half"}) is not None
            raise RuntimeError("boom")
    assert await store.fetch_one("plan_by_name", {"name": "half"}) is None


async def test_concurrent_read_modify_write_transactions_never_interleave(store: Store) -> None:
    await store.execute("plan_upsert", plan("counter", 0))

    async def bump() -> None:
        async with store.transaction() as tx:
            row = await tx.fetch_one("plan_by_name", {"name": "counter"})
            assert row is not None
            await asyncio.sleep(0)  # give every other task the chance to interleave
            await tx.execute("plan_upsert", plan("counter", row["monthly_tokens"] + 1))

    await asyncio.gather(*(bump() for _ in range(200)))
    row = await store.fetch_one("plan_by_name", {"name": "counter"})
    assert row is not None and row["monthly_tokens"] == 200


async def test_migrate_again_applies_nothing(store: Store) -> None:
    assert await store.migrate() == []
