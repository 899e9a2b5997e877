"""Helpers for the payment tests: a gateway wired to a fake Alipay over loopback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.testing.fake_alipay import FakeAlipay, FakeTrade, KeySet
from gateway.testing.fake_alipay import build_app as build_fake
from tests.helpers.gateway import Gateway, free_port, make_config

APP_ID = "2021000000000000"


@dataclass
class Shop:
    """The gateway, the fake Alipay it talks to, and where its notify URL is."""

    gw: Gateway
    fake: FakeAlipay
    fake_url: str

    @property
    def db(self) -> Any:
        return self.gw.db

    @property
    def payments(self) -> Any:
        return self.gw.payments

    @property
    def notify_url(self) -> str:
        return self.gw.url + "/api/payment/notify"

    def trade(self, out_trade_no: str) -> FakeTrade:
        return self.fake.trades[out_trade_no]

    async def pay(self, out_trade_no: str, mode: str = "ok") -> dict[str, Any]:
        """Ask the fake, over HTTP, to pay and notify (as the README's demo does)."""
        async with aiohttp.ClientSession() as s, s.post(
                f"{self.fake_url}/_fake/pay",
                params={"out_trade_no": out_trade_no, "mode": mode}) as r:
            assert r.status == 200, await r.text()
            result: dict[str, Any] = await r.json()
            return result

    async def notify(self, params: dict[str, str]) -> str:
        async with aiohttp.ClientSession() as s, s.post(self.notify_url, data=params) as r:
            assert r.status == 200
            return await r.text()

    async def order(self, out_trade_no: str) -> Any:
        return await self.db.fetch_one("order_by_out_trade_no", {"out_trade_no": out_trade_no})

    async def subscription(self, user_id: int) -> dict[str, Any]:
        row = await self.db.fetch_one("subscription_by_user", {"user_id": user_id})
        assert row is not None
        return dict(row)


async def start_shop(data_dir: Path, keys_dir: Path, keys: KeySet,
                     servers: list[TestServer], *, fake_app_id: str = APP_ID,
                     **alipay: Any) -> Shop:
    """Start a fake Alipay and a gateway configured for it (servers appended to `servers`,
    for the caller to close). `keys_dir` holds the files `load_or_create_keys` wrote."""
    fake = FakeAlipay(keys, fake_app_id)
    fake_server = TestServer(build_fake(fake), host="127.0.0.1")
    await fake_server.start_server()
    servers.append(fake_server)
    fake.base_url = str(fake_server.make_url("")).rstrip("/")
    port = free_port()
    config = make_config(data_dir, {
        "server": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
        "alipay": {"app_id": APP_ID,
                   "private_key_path": str(keys_dir / "app_private.pem"),
                   "alipay_public_key_path": str(keys_dir / "alipay_public.pem"),
                   "gateway_url": fake.base_url + "/gateway.do", **alipay}})
    app = build_app(config)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    servers.append(server)
    return Shop(Gateway(server, app), fake, fake.base_url)


async def wait_until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll an async check until it returns something true."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.05)
