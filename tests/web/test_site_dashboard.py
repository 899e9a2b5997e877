"""The dashboard through HTTP: keys created, used on /v1/messages, seen in usage, revoked."""

from __future__ import annotations

import asyncio
import re
import time

from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.gateway import Gateway
from tests.helpers.site import SiteClient, call_messages, signed_in

_KEY = re.compile(r'id="new-key-value"[^>]*value="(sk-llmapi-[^"]+)"')


async def create_key_via_form(client: SiteClient, name: str) -> str:
    status, text, headers = await client.post("/dashboard/keys", {"name": name})
    assert status == 201, text
    assert headers["Cache-Control"] == "no-store"
    found = _KEY.search(text)
    assert found, text
    return found.group(1)


async def wait_for_usage_rows(gw: Gateway, user_id: int, count: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = await gw.db.fetch_one("dash_requests_since",
                                          {"user_id": user_id, "since": 0})
        if row["requests"] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"usage rows for user {user_id} never reached {count}")


async def user_id_of(gw: Gateway, email: str) -> int:
    row = await gw.db.fetch_one("user_by_email", {"email": email})
    return int(row["id"])


async def test_key_created_on_dashboard_works_then_usage_shows_then_revoked_key_fails(
        gateway: Gateway) -> None:
    client = await signed_in(gateway, "flow@example.com", plan="pro")
    try:
        key = await create_key_via_form(client, "laptop")
        status, text, _ = await client.get("/dashboard")
        assert key not in text  # shown once, never again
        assert key[:18] in text and "laptop" in text

        status, payload = await call_messages(gateway, key)
        assert status == 200 and payload["type"] == "message"
        user_id = await user_id_of(gateway, "flow@example.com")
        await wait_for_usage_rows(gateway, user_id, 1)

        status, text, _ = await client.get("/dashboard/fragments/requests",
                                           headers={"HX-Request": "true"})
        assert status == 200 and "claude-sonnet-4-5" in text and "success" in text
        status, payload = await client.json("GET", "/api/dashboard/overview")
        assert payload["requests_today"] == 1 and payload["plan"] == "pro"
        status, text, _ = await client.get("/dashboard/fragments/keys")
        assert "just now" in text or "minute" in text  # last used is filled in

        status, payload = await client.json("GET", "/api/dashboard/keys")
        key_id = payload["keys"][0]["id"]
        status, text, _ = await client.post(f"/dashboard/keys/{key_id}/revoke",
                                            headers={"HX-Request": "true"})
        assert status == 200 and "You have no active key yet." in text
        deadline = time.monotonic() + 1.0  # the key cache refreshes within a second
        while True:
            status, payload = await call_messages(gateway, key)
            if status == 401 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status == 401 and payload["error"]["type"] == "authentication_error"
    finally:
        await client.close()


async def test_usage_chart_and_figures_from_usage_rows(gateway: Gateway) -> None:
    client = await signed_in(gateway, "chart@example.com", plan="starter")
    try:
        user_id = await user_id_of(gateway, "chart@example.com")
        # Synthetic history (the recorder only writes what happens from now on).
        await insert_synthetic_usage(gateway.db, user_id, None, [
            SyntheticRequest(input_tokens=1000, output_tokens=500, days_ago=d + 0.01,
                             ttft_ms=300, tokens_per_second=50)
            for d in range(0, 30, 3)
        ] + [SyntheticRequest(input_tokens=9000, output_tokens=1000, days_ago=0,
                              ttft_ms=500, tokens_per_second=70)])
        status, text, _ = await client.get("/dashboard")
        assert status == 200
        assert text.count('<g class="bar">') == 30
        assert "25,000 tokens in 11 requests" in text
        assert "25,000 of 2,000,000 tokens used this period" in text
        status, fragment, _ = await client.get("/dashboard/fragments/chart?days=7",
                                               headers={"HX-Request": "true"})
        assert fragment.lstrip().startswith('<section id="usage"')
        assert fragment.count('<g class="bar">') == 7
        status, payload = await client.json("GET", "/api/dashboard/usage?days=30")
        assert sum(d["tokens"] for d in payload["days"]) == 25_000
        assert payload["days"][-1]["tokens"] >= 10_000  # today is last
        status, payload = await client.json("GET", "/api/dashboard/overview")
        assert payload["tokens_used"] == 25_000 and payload["quota_percent"] == 1.25
    finally:
        await client.close()


async def test_plan_key_limit_is_respected(gateway: Gateway) -> None:
    client = await signed_in(gateway, "limit@example.com", plan="free")  # max_keys = 1
    try:
        await create_key_via_form(client, "first")
        status, text, _ = await client.post("/dashboard/keys", {"name": "second"},
                                            headers={"HX-Request": "true"})
        assert status == 422 and "allows 1 active key" in text
        assert "to create another" in text  # the form is replaced by advice
    finally:
        await client.close()


async def test_user_cannot_touch_another_users_key(gateway: Gateway) -> None:
    alice = await signed_in(gateway, "alice@example.com", plan="pro")
    bob = await signed_in(gateway, "bob@example.com", plan="pro")
    try:
        status, payload = await alice.json("POST", "/api/dashboard/keys", {"name": "a"})
        alice_key_id = payload["id"]
        status, _, _ = await bob.post(f"/dashboard/keys/{alice_key_id}/revoke")
        assert status == 404
        status, payload = await bob.json("DELETE", f"/api/dashboard/keys/{alice_key_id}")
        assert status == 404
        status, payload = await bob.json("GET", "/api/dashboard/keys")
        assert payload["keys"] == []
        status, payload = await alice.json("GET", "/api/dashboard/keys")
        assert [k["id"] for k in payload["keys"]] == [alice_key_id]
    finally:
        await alice.close()
        await bob.close()


async def test_signed_out_visitors_are_sent_to_login(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        for path in ("/dashboard", "/settings", "/orders", "/admin", "/admin/users?q=x"):
            status, _, headers = await client.get(path)
            assert status == 302, path
            assert headers["Location"].startswith("/login?next=" + path.split("?")[0])
        status, _, headers = await client.get("/dashboard/fragments/keys",
                                              headers={"HX-Request": "true",
                                                       "HX-Current-URL":
                                                       gateway.url + "/dashboard"})
        assert status == 204 and headers["HX-Redirect"] == "/login?next=/dashboard"
        status, _ = await client.json("GET", "/api/dashboard/overview")
        assert status == 401
    finally:
        await client.close()


async def test_orders_page_lists_the_users_orders(gateway: Gateway) -> None:
    client = await signed_in(gateway, "orders@example.com")
    try:
        status, text, _ = await client.get("/orders")
        assert status == 200 and "no orders yet" in text
        user_id = await user_id_of(gateway, "orders@example.com")
        await gateway.db.conn.execute(
            "INSERT INTO orders (out_trade_no, user_id, plan, amount, subject, status,"
            " created_at, paid_at, updated_at) VALUES (?, ?, 'pro', '29', 'Pro', 'paid', ?, ?, ?)",
            ("T20251120001", user_id, time.time(), time.time(), time.time()))
        status, text, _ = await client.get("/orders")
        assert "T20251120001" in text and "¥29" in text and "paid" in text
    finally:
        await client.close()
