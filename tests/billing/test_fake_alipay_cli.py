"""The README's local purchase, as processes: `fake-alipay`, `serve`, a user, a payment."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from tests.helpers.gateway import free_port, run_cli, wait_for_port
from tests.helpers.site import PASSWORD, SiteClient


async def test_readme_local_purchase_with_the_fake_alipay(
        spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    fake_port, port = free_port(), free_port()
    keys = tmp_path / "fake-alipay"
    fake = spawn("fake-alipay", "--port", str(fake_port), "--keys", str(keys), cwd=tmp_path)
    wait_for_port(fake_port, fake)
    assert sorted(p.name for p in keys.iterdir()) == [
        "alipay_private.pem", "alipay_public.pem", "app_private.pem", "app_public.pem"]
    config = tmp_path / "llmapi.toml"
    config.write_text(f"""
[server]
port = {port}
[alipay]
app_id = "2021000000000000"
private_key_path = "fake-alipay/app_private.pem"
alipay_public_key_path = "fake-alipay/alipay_public.pem"
gateway_url = "http://127.0.0.1:{fake_port}/gateway.do"
""", encoding="utf-8")
    env = {"LLMAPI_CONFIG": str(config)}
    added = run_cli("users", "add", "demo@example.com", "--password", PASSWORD,
                    env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    gateway = spawn("serve", env=env, cwd=tmp_path)
    wait_for_port(port, gateway)

    client = SiteClient(SimpleNamespace(url=f"http://127.0.0.1:{port}"))  # type: ignore[arg-type]
    try:
        await client.log_in("demo@example.com")
        status, order = await client.json("POST", "/api/payment/orders", {"plan": "pro"})
        assert status == 201, order
        assert order["qr_code"].startswith(f"http://127.0.0.1:{fake_port}/_fake/scan/")
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{fake_port}/_fake/pay",
                params={"out_trade_no": order["out_trade_no"], "mode": "ok"}) as r:
            paid: dict[str, Any] = await r.json()
        assert paid["notify"] == [{"status": 200, "body": "success"}]
        status, order = await client.json("GET", f"/api/payment/orders/{order['id']}")
        assert order["status"] == "paid"
        status, overview = await client.json("GET", "/api/dashboard/overview")
        assert overview["plan"] == "pro"
    finally:
        await client.close()

    # a second start reuses the key files, so the gateway's config stays valid
    before = (keys / "alipay_public.pem").read_bytes()
    fake.terminate()
    fake.wait(10)
    again = spawn("fake-alipay", "--port", str(fake_port), "--keys", str(keys), cwd=tmp_path)
    wait_for_port(fake_port, again)
    assert (keys / "alipay_public.pem").read_bytes() == before
