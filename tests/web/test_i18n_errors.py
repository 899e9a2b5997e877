"""Account and access errors reach Chinese pages in Chinese (and English pages in English).

The errors come from gateway code the CLI shares (`AccountError`: key limits, the admin's
own account, ...) and from aiohttp reasons (403 for non-admins, CSRF); each is triggered
through the real forms, with and without HTMX.
"""

from __future__ import annotations

import re

from tests.helpers.gateway import Gateway
from tests.helpers.site import SiteClient, signed_in

HTMX = {"HX-Request": "true"}
ASCII_SENTENCE = re.compile(r"\b(allows|revoke one|cannot change|Administrators only|"
                            r"CSRF token|Method Not Allowed|keep the key name)\b")


async def zh(gw: Gateway, email: str, *, admin: bool = False) -> SiteClient:
    client = await signed_in(gw, email, admin=admin)
    status, _, _ = await client.get("/dashboard?lang=zh-CN")  # the switch sets the cookie
    assert status == 200
    return client


async def test_key_limit_and_key_name_errors_are_in_chinese(gateway: Gateway) -> None:
    client = await zh(gateway, "keys@example.com")
    try:
        status, html, _ = await client.post("/dashboard/keys", {"name": "first"})
        assert status == 201, html
        status, html, _ = await client.post("/dashboard/keys", {"name": "second"})
        assert status == 422
        assert "free 套餐最多允许 1 个有效密钥；请先吊销一个，或更换套餐" in html.replace(
            "&#39;", "'").replace("'free'", "free")
        assert not ASCII_SENTENCE.search(html), ASCII_SENTENCE.search(html)
        status, html, _ = await client.post("/dashboard/keys", {"name": "again"},
                                            headers=HTMX)
        assert status == 422 and "套餐最多允许" in html and "<html" not in html
        status, html, _ = await client.post("/dashboard/keys?lang=en", {"name": "x" * 300})
        assert status == 422 and "keep the key name under" in html  # English when asked
        status, html, _ = await client.post("/dashboard/keys?lang=zh-CN", {"name": "x" * 300})
        assert status == 422 and "密钥名称请少于" in html
    finally:
        await client.close()


async def test_admin_row_errors_are_in_chinese_with_and_without_javascript(
        gateway: Gateway) -> None:
    admin = await zh(gateway, "boss@example.com", admin=True)
    try:
        me = await gateway.db.fetch_one("user_by_email", {"email": "boss@example.com"})
        status, html, _ = await admin.post(f"/admin/users/{me['id']}/status",
                                           {"status": "suspended", "back": "/admin/users"},
                                           headers=HTMX)
        assert status == 422 and "你不能更改自己账号的状态" in html
        assert not ASCII_SENTENCE.search(html)
        status, _, headers = await admin.post(f"/admin/users/{me['id']}/status",
                                              {"status": "suspended", "confirm": "1",
                                               "back": "/admin/users"})
        assert status == 303
        status, html, _ = await admin.get(headers["Location"])
        assert "你不能更改自己账号的状态" in html and not ASCII_SENTENCE.search(html)
        status, html, _ = await admin.post(f"/admin/users/{me['id']}/status",
                                           {"status": "banana", "back": "/admin/users"},
                                           headers=HTMX)
        assert status == 422 and "状态必须是以下之一：active, suspended" in html
    finally:
        await admin.close()


async def test_403_and_csrf_pages_say_why_in_chinese(gateway: Gateway) -> None:
    client = await zh(gateway, "customer@example.com")
    try:
        status, html, _ = await client.get("/admin")
        assert status == 403 and "仅限管理员" in html and not ASCII_SENTENCE.search(html)
        status, html, _ = await client.post("/settings/name", {"name": "x"}, csrf=False)
        assert status == 403 and "表单令牌缺失或有误" in html
        assert not ASCII_SENTENCE.search(html)
        status, html, _ = await client.get("/logout")  # POST only
        assert status == 405 and not ASCII_SENTENCE.search(html), html
        status, html, _ = await client.get("/admin?lang=en")
        assert status == 403 and "Administrators only" in html
    finally:
        await client.close()
