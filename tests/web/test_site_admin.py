"""The admin panel through HTTP: who may enter, user management with audit, reports."""

from __future__ import annotations

import asyncio
import time

from gateway.accounts.users import create_key
from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.gateway import Gateway
from tests.helpers.site import SiteClient, call_messages, make_user, signed_in

ADMIN_PAGES = ("/admin", "/admin/users", "/admin/costs", "/admin/outbox", "/admin/audit",
               "/admin/fragments/stats", "/admin/fragments/health")


async def test_non_admin_gets_403_on_every_admin_page_and_endpoint(gateway: Gateway) -> None:
    client = await signed_in(gateway, "plain@example.com")
    victim = await make_user(gateway, "victim@example.com")
    try:
        for path in ADMIN_PAGES:
            status, text, _ = await client.get(path)
            assert status == 403, path
            assert "Not allowed" in text and "<html" in text  # the friendly HTML page
        status, text, _ = await client.post(f"/admin/users/{victim}/status",
                                            {"status": "suspended"})
        assert status == 403
        for path in ("/api/admin/stats", "/api/admin/users", "/api/admin/outbox"):
            status, payload = await client.json("GET", path)
            assert status == 403 and payload["error"]["type"] == "permission_error"
        status, payload = await client.json("PATCH", f"/api/admin/users/{victim}",
                                            {"status": "suspended"})
        assert status == 403
        row = await gateway.db.fetch_one("user_by_id", {"id": victim})
        assert row["status"] == "active"
    finally:
        await client.close()


async def test_admin_suspends_user_and_their_key_stops_within_a_second(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "root@example.com", admin=True)
    user_id = await make_user(gateway, "user@example.com", plan="pro")
    key = (await create_key(gateway.db, "user@example.com")).raw
    try:
        status, _ = await call_messages(gateway, key)
        assert status == 200
        status, text, _ = await admin.post(f"/admin/users/{user_id}/status",
                                           {"status": "suspended"},
                                           headers={"HX-Request": "true"})
        assert status == 200
        assert text.lstrip().startswith(f'<tr id="user-{user_id}"') and "suspended" in text
        started = time.monotonic()
        while True:
            status, payload = await call_messages(gateway, key)
            if status != 200 or time.monotonic() - started > 1.0:
                break
            await asyncio.sleep(0.05)
        assert status == 403 and payload["error"]["type"] == "permission_error"
        assert time.monotonic() - started <= 1.0

        status, text, _ = await admin.get("/admin/audit")
        assert "user.suspend" in text and "user@example.com" in text
        assert "root@example.com" in text and "127.0.0.1" in text

        status, _, headers = await admin.post(f"/admin/users/{user_id}/status",
                                              {"status": "active", "back": "/admin/users?q=user"})
        assert status == 303 and headers["Location"] == "/admin/users?q=user"
        status, _ = await call_messages(gateway, key)
        deadline = time.monotonic() + 1.0
        while status != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            status, _ = await call_messages(gateway, key)
        assert status == 200
    finally:
        await admin.close()


async def test_admin_changes_plan_inline_and_it_is_audited(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "ops@example.com", admin=True)
    user_id = await make_user(gateway, "upgrade@example.com")
    try:
        status, text, _ = await admin.post(f"/admin/users/{user_id}/plan", {"plan": "team"},
                                           headers={"HX-Request": "true"})
        assert status == 200 and 'value="team" selected' in text and "Saved" in text
        sub = await gateway.db.fetch_one("subscription_by_user", {"user_id": user_id})
        assert sub["plan"] == "team"
        status, text, _ = await admin.post(f"/admin/users/{user_id}/plan",
                                           {"plan": "no-such-plan"},
                                           headers={"HX-Request": "true"})
        assert status == 422 and "unknown plan" in text
        status, payload = await admin.json("GET", "/api/admin/audit")
        actions = [(e["action"], e["detail"]) for e in payload["entries"]]
        assert actions == [("user.plan", "plan free -> team")]
        assert payload["entries"][0]["actor_email"] == "ops@example.com"
    finally:
        await admin.close()


async def test_admin_cannot_suspend_themselves(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "self@example.com", admin=True)
    try:
        status, payload = await admin.json("GET", "/api/auth/me")
        status, payload = await admin.json("PATCH", f"/api/admin/users/{payload['id']}",
                                           {"status": "suspended"})
        assert status == 400 and "your own account" in payload["error"]["message"]
    finally:
        await admin.close()


async def test_users_table_searches_filters_and_pages_on_the_server(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "boss@example.com", admin=True)
    try:
        for i in range(30):
            await make_user(gateway, f"dev{i:02d}@corp.example", plan="pro" if i % 3 else "team")
        await make_user(gateway, "someone@else.example")
        status, text, _ = await admin.get("/admin/users?q=corp")
        assert status == 200
        assert "30 users, page 1 of 2" in text and text.count('<tr id="user-') == 25
        _, text, _ = await admin.get("/admin/users?q=corp&page=2")
        assert text.count('<tr id="user-') == 5
        _, text, _ = await admin.get("/admin/users?q=corp&plan=team",
                                     headers={"HX-Request": "true",
                                              "HX-Target": "users-table"})
        assert text.lstrip().startswith('<div id="users-table">')
        assert "10 users" in text and "<html" not in text
        _, payload = await admin.json("GET", "/api/admin/users?q=CORP&plan=pro&page=1")
        assert payload["total"] == 20 and payload["pages"] == 1
        _, payload = await admin.json("GET", "/api/admin/users?q=100%25")  # literal %
        assert payload["total"] == 0
        _, payload = await admin.json("GET", "/api/admin/users?status=suspended")
        assert payload["total"] == 0
    finally:
        await admin.close()


async def test_overview_stats_costs_and_health(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "chief@example.com", admin=True)
    try:
        user_id = await make_user(gateway, "spender@example.com", plan="pro")
        await insert_synthetic_usage(gateway.db, user_id, None, [
            SyntheticRequest(1000, 200, days_ago=0, provider="dashscope", cost=0.5),
            SyntheticRequest(1000, 200, days_ago=1, provider="deepseek", cost=0.25),
            SyntheticRequest(1000, 200, days_ago=2, provider="dashscope", cost=1.0,
                             status="error"),
        ])
        status, payload = await admin.json("GET", "/api/admin/stats")
        assert payload["users"] == 2 and payload["new_today"] == 2
        assert payload["active_7d"] == 1
        assert payload["cost_month"].get("CNY", 0) > 0
        status, text, _ = await admin.get("/admin")
        assert status == 200 and "Providers" in text and "demo" in text
        assert "Active in 7 days" in text
        status, text, _ = await admin.get("/admin/costs")
        assert "dashscope" in text and "deepseek" in text and "demo" in text
        assert text.count("<tr><th scope=\"row\">") == 31  # 30 days and the total
        status, payload = await admin.json("GET", "/api/admin/costs")
        assert payload["totals"]["dashscope"] == 1.5 and payload["totals"]["deepseek"] == 0.25
        status, payload = await admin.json("GET", "/api/admin/health")
        assert "demo" in payload["providers"]
    finally:
        await admin.close()


async def test_outbox_shows_the_codes_sent_to_new_users(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "mailman@example.com", admin=True)
    visitor = SiteClient(gateway)
    try:
        await visitor.get("/register")
        await visitor.post("/register", {"email": "fresh@example.com",
                                         "password": "a good password"})
        status, text, _ = await admin.get("/admin/outbox")
        assert "fresh@example.com" in text and "outbox" in text
        status, payload = await admin.json("GET", "/api/admin/outbox")
        mail_id = payload["mail"][0]["id"]
        status, text, _ = await admin.get(f"/admin/outbox/{mail_id}")
        assert status == 200 and "/register/verify" in text
        status, _, _ = await admin.get("/admin/outbox/999999")
        assert status == 404
    finally:
        await admin.close()
        await visitor.close()


async def test_suspending_without_javascript_asks_on_a_page_first(gateway: Gateway) -> None:
    """No confirm dialog without JavaScript: the first POST only asks, the second acts."""
    admin = await signed_in(gateway, "asker@example.com", admin=True)
    user_id = await make_user(gateway, "careful@example.com")
    try:
        await admin.get("/admin/users?lang=zh-CN")
        status, text, _ = await admin.post(f"/admin/users/{user_id}/status",
                                           {"status": "suspended", "back": "/admin/users?q=c"})
        assert status == 200 and "停用这个用户？" in text and "careful@example.com" in text
        assert 'name="confirm" value="1"' in text and 'href="/admin/users?q=c"' in text
        row = await gateway.db.fetch_one("user_by_id", {"id": user_id})
        assert row["status"] == "active"  # nothing happened yet
        assert not await gateway.db.fetch_all("audit_of_target", {"prefix": f"user:{user_id} %"})
        status, _, headers = await admin.post(f"/admin/users/{user_id}/status", {
            "status": "suspended", "confirm": "1", "back": "/admin/users?q=c"})
        assert status == 303 and headers["Location"] == "/admin/users?q=c"
        row = await gateway.db.fetch_one("user_by_id", {"id": user_id})
        assert row["status"] == "suspended"
        # activating needs no confirmation
        status, _, _ = await admin.post(f"/admin/users/{user_id}/status", {"status": "active"})
        assert status == 303
    finally:
        await admin.close()
