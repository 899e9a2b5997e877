"""`RedisCounters` against a real redis-server: several "instances" (one `RedisCounters`
each, as separate gateway processes would hold) share one Redis and one database, and no
limit can be outrun by spreading requests over them.

Also: the rebuild from the database after Redis loses its keys (on PostgreSQL), the
`on_error` policies while Redis is unreachable (server stopped, or paused), the lease that
frees the slots of an instance that died, and a payment's new period heard by every
instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.accounting import shared
from gateway.accounting.counters import Ask, Grant
from gateway.accounting.shared import RedisCounters
from gateway.accounts.plans import sync_plans
from gateway.accounts.users import create_user
from gateway.config import PlanConfig, RedisConfig
from gateway.errors import ApiError
from gateway.store.base import Store
from gateway.store.postgres import open_postgres
from gateway.store.sqlite import open_database
from tests.helpers.gateway import provider_table
from tests.helpers.services import RedisServer, free_port

PLANS = {
    "free": PlanConfig("free", monthly_tokens=0, rpm=0),
    "rpm30": PlanConfig("rpm30", rpm=30),
    "tiny": PlanConfig("tiny", monthly_tokens=1000),
    "duo": PlanConfig("duo", concurrency=2),
    "daily": PlanConfig("daily", rpd=5),
}


async def open_store(tmp_path: Path, pg_url: str | None = None) -> Store:
    db: Store = await (open_postgres(pg_url) if pg_url else open_database(tmp_path / "t.db"))
    await sync_plans(db, tuple(PLANS.values()))
    return db


def ask(user_id: int, plan: str, *, key_id: int = 1, estimate: int = 10,
        max_tokens: int = 100, rpm_per_key: bool = False) -> Ask:
    p = PLANS[plan]
    return Ask(user_id=user_id, key_id=key_id, plan=p, rpm=p.rpm, rpm_per_key=rpm_per_key,
               input_estimate=estimate, max_tokens=max_tokens)


class Cluster:
    """N RedisCounters on one Redis and one database, as N gateway instances."""

    def __init__(self, db: Store, url: str, n: int, on_error: str = "fail_open",
                 timeout: float = 5.0) -> None:
        self.db = db
        self.nodes = [RedisCounters(db, PLANS, RedisConfig(url=url, on_error=on_error,
                                                           timeout=timeout))
                      for _ in range(n)]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Cluster:
        for node in self.nodes:
            await node.start()
            self.tasks.append(asyncio.create_task(node.run()))
        return self

    async def flush(self) -> None:
        """What each instance's usage recorder does: persist the deltas in one transaction."""
        for node in self.nodes:
            deltas = node.take_deltas()
            if deltas:
                async with self.db.transaction() as tx:
                    await tx.execute_many("subscription_add", [asdict(d) for d in deltas])

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for node in self.nodes:
            await node.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = await open_store(tmp_path)
    yield db
    await db.close()


async def admit_all(nodes: list[RedisCounters], asks: list[Ask]) -> list[Grant | ApiError]:
    async def one(i: int, a: Ask) -> Grant | ApiError:
        try:
            return await nodes[i % len(nodes)].admit(a)
        except ApiError as exc:
            return exc
    return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(asks))))


async def test_rpm_30_over_three_instances_admits_exactly_30(
        store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "rpm@example.com", plan="rpm30")
    cluster = await Cluster(store, redis_server.url, 3).start()
    try:
        results = await admit_all(cluster.nodes, [ask(uid, "rpm30") for _ in range(90)])
        grants = [r for r in results if isinstance(r, Grant)]
        refused = [r for r in results if isinstance(r, ApiError)]
        assert len(grants) == 30 and len(refused) == 60
        for exc in refused:
            assert exc.status == 429 and exc.error_type == "rate_limit_error"
            assert "30 of 30 requests per minute" in exc.message
            assert 1 <= int(exc.headers["retry-after"]) <= 60
            assert exc.headers["x-ratelimit-remaining"] == "0"
        remaining = sorted(int(g.headers["x-ratelimit-remaining"]) for g in grants)
        assert remaining == list(range(30))  # each admission saw every earlier one
        for g in grants:
            await cluster.nodes[0].release(g)
        # the window counts requests, not requests in flight: still refused
        with pytest.raises(ApiError, match="30 of 30"):
            await cluster.nodes[1].admit(ask(uid, "rpm30"))
    finally:
        await cluster.close()


async def test_per_key_rpm_override_counts_that_key_only(
        store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "k@example.com", plan="free")
    cluster = await Cluster(store, redis_server.url, 2).start()
    try:
        limited = Ask(uid, 7, PLANS["free"], rpm=3, rpm_per_key=True, input_estimate=1,
                      max_tokens=10)
        results = await admit_all(cluster.nodes, [limited] * 8)
        assert sum(isinstance(r, Grant) for r in results) == 3
        err = next(r for r in results if isinstance(r, ApiError))
        assert "for this key" in err.message
        # another key of the same user is not limited by key 7's window
        other = await cluster.nodes[0].admit(ask(uid, "free", key_id=8))
        assert other.token
    finally:
        await cluster.close()


async def test_1000_token_plan_60_concurrent_over_three_instances(
        store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "tiny@example.com", plan="tiny")
    cluster = await Cluster(store, redis_server.url, 3).start()
    try:
        results = await admit_all(cluster.nodes, [ask(uid, "tiny", estimate=12, max_tokens=4096)
                                                  for _ in range(60)])
        grants = [r for r in results if isinstance(r, Grant)]
        refused = [r for r in results if isinstance(r, ApiError)]
        assert sum(g.reserved for g in grants) <= 1000  # reservations never pass the quota
        lefts = sorted(int(g.headers["anthropic-ratelimit-tokens-remaining"]) for g in grants)
        assert lefts[0] == 1000 - sum(g.reserved for g in grants)  # the last one saw them all
        assert all(g.headers["anthropic-ratelimit-tokens-limit"] == "1000" for g in grants)
        assert all(g.max_tokens <= 4096 and g.reserved == 12 + g.max_tokens for g in grants)
        assert refused and all("monthly token quota exhausted" in e.message for e in refused)
        assert all(e.headers["retry-after"] for e in refused)
        # the upstream honours max_tokens; the input estimate undershoots by 3 tokens
        for i, g in enumerate(grants):
            await cluster.nodes[i % 3].settle(g, g.max_tokens + 15)
        used = int(await cluster.nodes[0].redis.hget(f"llmapi:u:{uid}:q", "used") or 0)
        expected = sum(g.max_tokens + 15 for g in grants)
        assert used == expected
        assert used <= 2 * 1000  # docs/limits.md's bound
        reserved = int(await cluster.nodes[0].redis.hget(f"llmapi:u:{uid}:q", "reserved"))
        assert reserved == 0
        await cluster.flush()
        row = await store.fetch_one("subscription_by_user", {"user_id": uid})
        assert row["tokens_used"] == expected and row["requests_used"] == len(grants)
        print(f"\n[redis quota] 60 concurrent over 3 instances on a 1000-token plan: "
              f"{len(grants)} admitted, {used} tokens used")
    finally:
        await cluster.close()


async def test_concurrency_2_holds_across_instances(
        store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "duo@example.com", plan="duo")
    cluster = await Cluster(store, redis_server.url, 3).start()
    a, b, c = cluster.nodes
    try:
        results = await admit_all(cluster.nodes, [ask(uid, "duo", key_id=i % 2)
                                                  for i in range(30)])
        grants = [r for r in results if isinstance(r, Grant)]
        assert len(grants) == 2
        err = next(r for r in results if isinstance(r, ApiError))
        assert "concurrency limit reached: 2 of 2" in err.message
        assert err.headers["retry-after"] == "1"
        await a.release(grants[0])
        await a.release(grants[0])  # a second release is a no-op, not a second free slot
        third = await c.admit(ask(uid, "duo"))
        with pytest.raises(ApiError, match="concurrency"):
            await b.admit(ask(uid, "duo"))
        await c.settle(third, 5)
        await b.settle(grants[1], 5)
        again = await admit_all([a, b], [ask(uid, "duo")] * 3)
        assert sum(isinstance(r, Grant) for r in again) == 2
    finally:
        await cluster.close()


async def test_a_dead_instance_frees_its_slots_when_the_lease_ends(
        store: Store, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "LEASE", 0.5)
    uid = await create_user(store, "dead@example.com", plan="duo")
    cluster = await Cluster(store, redis_server.url, 2).start()
    a, b = cluster.nodes
    try:
        for _ in range(2):
            await a.admit(ask(uid, "duo"))  # never settled: instance A "dies"
        cluster.tasks[0].cancel()  # A's lease refresher stops with it
        with pytest.raises(ApiError, match="concurrency"):
            await b.admit(ask(uid, "duo"))
        deadline = time.monotonic() + 5
        while True:
            try:
                await b.admit(ask(uid, "duo"))
                break
            except ApiError:
                assert time.monotonic() < deadline, "the dead instance's slots never freed"
                await asyncio.sleep(0.05)
    finally:
        await cluster.close()


async def test_leases_of_live_requests_are_extended(
        store: Store, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "LEASE", 1.0)
    uid = await create_user(store, "live@example.com", plan="duo")
    cluster = await Cluster(store, redis_server.url, 1).start()
    (a,) = cluster.nodes
    try:
        held = [await a.admit(ask(uid, "duo")) for _ in range(2)]
        for _ in range(4):  # 2 s of refreshing: well past the 1 s lease
            await asyncio.sleep(0.5)
            await a.refresh_leases()
            with pytest.raises(ApiError, match="concurrency"):
                await a.admit(ask(uid, "duo"))
        for g in held:
            await a.release(g)
        assert (await a.admit(ask(uid, "duo"))).token
    finally:
        await cluster.close()


async def test_rpd_counts_across_instances(store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "day@example.com", plan="daily")
    cluster = await Cluster(store, redis_server.url, 2).start()
    try:
        results = await admit_all(cluster.nodes, [ask(uid, "daily") for _ in range(12)])
        assert sum(isinstance(r, Grant) for r in results) == 5
        err = next(r for r in results if isinstance(r, ApiError))
        assert "daily request limit reached: 5 of 5" in err.message
    finally:
        await cluster.close()


async def test_max_input_refused_with_400(store: Store, redis_server: RedisServer) -> None:
    PLANS["small-in"] = PlanConfig("small-in", max_input_tokens=100)
    try:
        uid = await create_user(store, "in@example.com", plan="free")
        cluster = await Cluster(store, redis_server.url, 1).start()
        try:
            with pytest.raises(ApiError) as info:
                await cluster.nodes[0].admit(ask(uid, "small-in", estimate=101))
            assert info.value.status == 400 and "input too large" in info.value.message
        finally:
            await cluster.close()
    finally:
        del PLANS["small-in"]


async def test_flushall_rebuilds_the_period_from_postgresql(
        tmp_path: Path, pg_url: str, redis_server: RedisServer) -> None:
    db = await open_store(tmp_path, pg_url)
    cluster = await Cluster(db, redis_server.url, 2).start()
    a, b = cluster.nodes
    try:
        uid = await create_user(db, "rebuild@example.com", plan="tiny")
        spent = 0
        for i in range(6):
            g = await cluster.nodes[i % 2].admit(ask(uid, "tiny", estimate=10, max_tokens=50))
            await cluster.nodes[i % 2].settle(g, 100)
            spent += 100
        await cluster.flush()  # the recorders' transactions
        await a.redis.flushall()
        g = await b.admit(ask(uid, "tiny", estimate=10, max_tokens=1000))
        assert g.max_tokens == 1000 - spent - 10  # what is left after the rebuilt figure
        used = int(await a.redis.hget(f"llmapi:u:{uid}:q", "used"))
        assert used == spent
        assert a.rebuilds + b.rebuilds >= 1
        await b.settle(g, 50)
        with pytest.raises(ApiError, match=f"{spent + 50} of 1000 tokens used"):
            await a.admit(ask(uid, "tiny", estimate=1000 - spent - 50, max_tokens=100))
    finally:
        await cluster.close()
        await db.close()


async def test_fail_closed_refuses_with_503_and_recovers(
        store: Store, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    uid = await create_user(store, "closed@example.com", plan="rpm30")
    cluster = await Cluster(store, redis_server.url, 1, on_error="fail_closed").start()
    (a,) = cluster.nodes
    caplog.set_level(logging.INFO, "llmapi.counters")
    try:
        await a.release(await a.admit(ask(uid, "rpm30")))
        redis_server.stop()
        for _ in range(20):
            with pytest.raises(ApiError) as info:
                await a.admit(ask(uid, "rpm30"))
            assert info.value.status == 503 and info.value.headers["retry-after"] == "2"
            assert "Redis" in info.value.message and "fail_closed" in info.value.message
            assert "x-should-retry" not in info.value.headers  # a retry can help
        downs = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(downs) == 1  # logged once per state change, not per request
        redis_server.start()
        assert await a.wait_until_up(10)
        g = await a.admit(ask(uid, "rpm30"))
        assert g.token  # counted in Redis again
        ups = [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert len(ups) == 1
    finally:
        await cluster.close()


async def test_fail_open_admits_on_local_counters_then_goes_back_to_redis(
        store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "open@example.com", plan="rpm30")
    cluster = await Cluster(store, redis_server.url, 2).start()
    a, b = cluster.nodes
    try:
        redis_server.stop()
        results = await admit_all([a], [ask(uid, "rpm30") for _ in range(40)])
        local = [r for r in results if isinstance(r, Grant)]
        assert len(local) == 30 and all(not g.token for g in local)  # per-instance rpm
        assert not a.up
        for g in local:
            await a.settle(g, 3)
        redis_server.start()
        assert await a.wait_until_up(10) and await b.wait_until_up(10)
        g = await b.admit(ask(uid, "rpm30"))  # a restarted Redis: the window starts anew
        assert g.token
        await cluster.flush()
        row = await store.fetch_one("subscription_by_user", {"user_id": uid})
        assert row["tokens_used"] == 90 and row["requests_used"] == 31
    finally:
        await cluster.close()


async def test_paused_redis_keeps_its_keys_and_hears_the_owed_settlements(
        store: Store, redis_server: RedisServer) -> None:
    """Unreachable but not restarted (CLIENT PAUSE): tokens settled meanwhile are replayed
    into it on recovery, once."""
    uid = await create_user(store, "pause@example.com", plan="tiny")
    cluster = await Cluster(store, redis_server.url, 1, timeout=0.2).start()
    (a,) = cluster.nodes
    admin = Redis.from_url(redis_server.url)
    try:
        shared_grant = await a.admit(ask(uid, "tiny", estimate=10, max_tokens=90))
        await a.settle(shared_grant, 100)
        held = await a.admit(ask(uid, "tiny", estimate=10, max_tokens=90))
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        local = await a.admit(ask(uid, "tiny", estimate=10, max_tokens=90))
        assert not local.token and not a.up
        await a.settle(local, 100)  # owed to Redis
        await a.settle(held, 100)   # its reservation and slot owed too
        assert await a.wait_until_up(10)
        q = await admin.hgetall(f"llmapi:u:{uid}:q")
        assert int(q[b"used"]) == 300 and int(q[b"reserved"]) == 0
    finally:
        await admin.aclose()
        await cluster.close()


async def test_start_period_heard_by_every_instance_resets_once(
        store: Store, redis_server: RedisServer) -> None:
    uid = await create_user(store, "pay@example.com", plan="tiny")
    cluster = await Cluster(store, redis_server.url, 3).start()
    a, b, c = cluster.nodes
    try:
        g = await a.admit(ask(uid, "tiny", estimate=10, max_tokens=990))
        await a.settle(g, 1000)
        with pytest.raises(ApiError, match="quota exhausted"):
            await b.admit(ask(uid, "tiny"))
        now = time.time()
        await a.start_period(uid, now, now + 30 * 86400)
        g2 = await b.admit(ask(uid, "tiny", estimate=10, max_tokens=90))
        await b.settle(g2, 100)
        for node in (b, c):  # the same payment heard later by the others
            await node.start_period(uid, now, now + 30 * 86400)
        assert int(await a.redis.hget(f"llmapi:u:{uid}:q", "used")) == 100
    finally:
        await cluster.close()


async def test_redis_down_at_start_is_an_outage_not_a_crash(store: Store) -> None:
    port = free_port()  # nothing listens there
    uid = await create_user(store, "nostart@example.com", plan="rpm30")
    node = RedisCounters(store, PLANS, RedisConfig(url=f"redis://127.0.0.1:{port}/0",
                                                   on_error="fail_open", timeout=0.2))
    await node.start()
    assert not node.up
    g = await node.admit(ask(uid, "rpm30"))
    assert not g.token
    await node.close()


async def test_two_gateways_on_postgresql_and_redis_share_the_rpm_window(
        gateway_factory: Any, fake_factory: Any, pg_url: str,
        redis_server: RedisServer) -> None:
    """Through HTTP: `[redis] url` chooses RedisCounters; two gateways on one database and
    one Redis admit 3 of 9 requests on an rpm-3 plan, with the headers and message the
    in-memory counters give."""
    base, _ = await fake_factory()
    config = {"providers": [provider_table("fake", "anthropic", base)],
              "plans": [{"name": "rpm3", "rpm": 3, "max_keys": 5}],
              "database": {"url": pg_url}, "redis": {"url": redis_server.url},
              "server": {"access_log": False}}
    gws = [await gateway_factory(config) for _ in range(2)]
    assert all(isinstance(gw.limits, RedisCounters) for gw in gws)
    key = await gws[0].new_key("http@example.com", plan="rpm3")
    body = {"model": "claude-sonnet-4-6", "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}]}

    async def send(i: int) -> tuple[int, Any, Any]:
        async with aiohttp.ClientSession() as s, s.post(
                gws[i % 2].url + "/v1/messages", json=body, headers={"x-api-key": key}) as r:
            return r.status, r.headers, await r.json()

    results = await asyncio.gather(*(send(i) for i in range(9)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] * 3 + [429] * 6, statuses
    for status, headers, payload in results:
        if status == 429:
            assert "3 of 3 requests per minute" in payload["error"]["message"]
            assert int(headers["retry-after"]) >= 1
    for gw in gws:
        await gw.recorder.flush()
    row = await gws[1].db.fetch_one("subscription_by_user", {"user_id": 1})
    assert row["requests_used"] == 3


async def test_restart_counts_outage_usage_once_whichever_instance_rebuilds(
        store: Store, redis_server: RedisServer) -> None:
    """Redis restarted empty: usage settled on the fallback and flushed before the rebuild
    comes from the database; usage settled after it (an instance still on its fallback)
    is charged on top; neither twice."""
    uid = await create_user(store, "twice@example.com", plan="tiny")
    cluster = await Cluster(store, redis_server.url, 2).start()
    a, b = cluster.nodes
    try:
        redis_server.stop()
        ga = await a.admit(ask(uid, "tiny", estimate=10, max_tokens=40))
        gb = await b.admit(ask(uid, "tiny", estimate=10, max_tokens=90))
        assert not ga.token and not gb.token  # both on their fallbacks
        await a.settle(ga, 50)
        await cluster.flush()  # A's 50 reach the database during the outage
        redis_server.start()
        assert await a.wait_until_up(10)
        g = await a.admit(ask(uid, "tiny", estimate=10, max_tokens=40))  # the rebuild
        assert g.token and a.rebuilds == 1
        key = f"llmapi:u:{uid}:q"
        assert int(await a.redis.hget(key, "used")) == 50  # A's replay was not added
        await b.settle(gb, 100)  # after the rebuild: charged
        await a.settle(g, 20)
        assert await b.wait_until_up(10)
        assert int(await a.redis.hget(key, "used")) == 170
        await cluster.flush()
        row = await store.fetch_one("subscription_by_user", {"user_id": uid})
        assert row["tokens_used"] == 170
    finally:
        await cluster.close()
