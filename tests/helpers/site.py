"""A browser-like HTTP client for the site's tests: cookie jar, CSRF token, forms, outbox."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from gateway.accounts.users import create_user
from tests.helpers.gateway import Gateway

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_CODE = re.compile(r"^\s+(\d{6})\s*$", re.MULTILINE)


class SiteClient:
    """One visitor: keeps cookies like a browser, follows no redirect unless asked."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, headers: dict[str, str] | None = None,
                  follow: bool = False) -> tuple[int, str, Any]:
        async with self.http.get(self.gw.url + path, allow_redirects=follow,
                                 headers=headers or {}) as r:
            text = await r.text()
            found = _CSRF.search(text)
            if found:
                self.csrf = found.group(1)
            return r.status, text, r.headers

    async def post(self, path: str, data: dict[str, str] | None = None, *,
                   csrf: bool = True, headers: dict[str, str] | None = None,
                   follow: bool = False) -> tuple[int, str, Any]:
        if csrf and not self.csrf:
            await self.refresh_csrf()
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.csrf)
        async with self.http.post(self.gw.url + path, data=form, allow_redirects=follow,
                                  headers=headers or {}) as r:
            text = await r.text()
            found = _CSRF.search(text)
            if found:
                self.csrf = found.group(1)
            return r.status, text, r.headers

    async def refresh_csrf(self) -> str:
        async with self.http.get(self.gw.url + "/api/auth/csrf") as r:
            self.csrf = (await r.json())["csrf_token"]
        return self.csrf

    async def json(self, method: str, path: str, body: dict[str, Any] | None = None,
                   csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf or await self.refresh_csrf()} if csrf else {}
        async with self.http.request(method, self.gw.url + path, json=body,
                                     headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def log_in(self, email: str, password: str = PASSWORD) -> None:
        await self.get("/login")
        status, text, _ = await self.post("/login", {"email": email, "password": password})
        assert status == 303, text
        await self.refresh_csrf()  # signing in starts a new session with a new token


async def code_from_outbox(gw: Gateway, email: str) -> str:
    row = await gw.db.fetch_one("mail_latest_to", {"to_addr": email})
    assert row is not None, f"no mail to {email}"
    found = _CODE.search(row["body_text"])
    assert found, row["body_text"]
    return found.group(1)


async def register(client: SiteClient, email: str, password: str = PASSWORD,
                   name: str = "") -> None:
    """Sign up through the forms, with the code read from the outbox; ends signed in."""
    await client.get("/register")
    status, text, headers = await client.post("/register", {
        "email": email, "password": password, "name": name})
    assert status == 303 and headers["Location"] == "/register/verify", text
    code = await code_from_outbox(client.gw, email.lower())
    await client.get("/register/verify")
    status, text, headers = await client.post("/register/verify", {"code": code})
    assert status == 303 and headers["Location"] == "/dashboard", text
    await client.refresh_csrf()


async def make_user(gw: Gateway, email: str, *, plan: str = "free", admin: bool = False,
                    password: str = PASSWORD) -> int:
    return await create_user(gw.db, email, password=password, plan=plan,
                             is_admin=admin)


async def signed_in(gw: Gateway, email: str, *, plan: str = "free",
                    admin: bool = False) -> SiteClient:
    await make_user(gw, email, plan=plan, admin=admin)
    client = SiteClient(gw)
    await client.log_in(email)
    return client


MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 50,
           "messages": [{"role": "user", "content": "hi"}]}


async def call_messages(gw: Gateway, key: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/messages", json=MESSAGE, headers={"x-api-key": key}) as r:
        return r.status, await r.json(content_type=None)
