"""A plan bought on instance A applies on instance B (three instances, PostgreSQL, Redis).

The buyer signs in and checks out on A; the fake Alipay (a real HTTP server on loopback,
signing like Alipay) is paid and notifies the public URL, which is the balancer, so any
instance may apply it; B, which the user's key has been refused on for a used-up free
quota, admits the key once its key cache sees the new plan and the new period (the quota
counters are in Redis, shared).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.accounts.users import create_key, create_user
from gateway.testing.fake_alipay import FakeAlipay, load_or_create_keys
from gateway.testing.fake_alipay import build_app as build_fake
from tests.helpers.cluster import Cluster

pytestmark = pytest.mark.slow

APP_ID = "2021000000000000"
PASSWORD = "correct horse battery staple"
PLANS = [
    {"name": "free", "price_month": 0, "monthly_tokens": 40, "rpm": 0, "rpd": 0,
     "max_keys": 2, "max_input_tokens": 0, "concurrency": 0},
    {"name": "pro", "price_month": 10, "monthly_tokens": 0, "rpm": 0, "rpd": 0,
     "max_keys": 5, "max_input_tokens": 0, "concurrency": 0},
]


async def ask(s: aiohttp.ClientSession, base: str, key: str) -> int:
    async with s.post(base + "/v1/messages", headers={"x-api-key": key}, json={
            "model": "claude-sonnet-4-6", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hello there"}]}) as r:
        await r.read()
        return r.status


async def test_plan_bought_on_one_instance_applies_on_another(
        cluster_factory: Any, tmp_path: Path) -> None:
    keys_dir = tmp_path / "alipay-keys"
    fake = FakeAlipay(load_or_create_keys(keys_dir), APP_ID)
    fake_server = TestServer(build_fake(fake), host="127.0.0.1")
    await fake_server.start_server()
    fake.base_url = str(fake_server.make_url("")).rstrip("/")
    try:
        cluster: Cluster = await cluster_factory(instances=3, redis=True, config={
            "plans": PLANS,
            "alipay": {"app_id": APP_ID,
                       "private_key_path": str(keys_dir / "app_private.pem"),
                       "alipay_public_key_path": str(keys_dir / "alipay_public.pem"),
                       "gateway_url": fake.base_url + "/gateway.do"}})
        a, b = cluster.instances[0].url, cluster.instances[1].url
        db = await cluster.store()
        await create_user(db, "buyer@example.com", password=PASSWORD, plan="free")
        key = (await create_key(db, "buyer@example.com")).raw

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            statuses = [await ask(s, b, key) for _ in range(6)]
            assert statuses[0] == 200 and statuses[-1] == 429, statuses  # free used up on B

            async with s.get(a + "/api/auth/csrf") as r:
                token = (await r.json())["csrf_token"]
            async with s.post(a + "/api/auth/login", headers={"X-CSRF-Token": token},
                              data={"email": "buyer@example.com", "password": PASSWORD}) as r:
                assert r.status == 200, await r.text()
            async with s.get(a + "/api/auth/csrf") as r:
                token = (await r.json())["csrf_token"]
            async with s.post(a + "/api/payment/orders", json={"plan": "pro"},
                              headers={"X-CSRF-Token": token}) as r:
                assert r.status == 201, await r.text()
                order = await r.json()
            async with s.post(fake.base_url + "/_fake/pay",
                              params={"out_trade_no": order["out_trade_no"],
                                      "mode": "ok"}) as r:
                assert r.status == 200, await r.text()
            paid_at = time.monotonic()
            deadline = paid_at + 10
            while (await cluster.fetchval(
                    "SELECT status FROM orders WHERE out_trade_no = $1",
                    order["out_trade_no"])) != "paid":
                assert time.monotonic() < deadline, "the notification was never applied"
                await asyncio.sleep(0.05)
            assert await cluster.fetchval(
                "SELECT s.plan FROM subscriptions s JOIN users u ON u.id = s.user_id "
                "WHERE u.email = 'buyer@example.com'") == "pro"
            # B admits more than the free plan's 40 tokens: six requests in a row
            while [await ask(s, b, key) for _ in range(6)] != [200] * 6:
                assert time.monotonic() < deadline, "B never saw the new plan"
                await asyncio.sleep(0.05)
            took = time.monotonic() - paid_at
            # and so does the third instance
            assert [await ask(s, cluster.instances[2].url, key) for _ in range(6)] == [200] * 6
        print(f"plan bought on A applied on B {took:.2f}s after the payment")
        assert took < 3
    finally:
        await fake_server.close()
