"""Sessions end when they must: a cookie copied out of a browser (a stolen cookie) stops
working after sign-out, a password change or reset, a suspension from the CLI or the admin
page, and account deletion, and an old cookie is not revived by re-activating the user."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from gateway.accounts.users import set_user_status
from tests.helpers.gateway import Gateway, GatewayFactory, run_cli
from tests.helpers.site import PASSWORD, SiteClient, code_from_outbox, make_user, signed_in
from web.sessions import SESSION_COOKIE


def session_cookie(client: SiteClient) -> str:
    for cookie in client.http.cookie_jar:
        if cookie.key == SESSION_COOKIE:
            return cookie.value
    raise AssertionError("the browser holds no session cookie")


async def copied_status(gw: Gateway, cookie: str, path: str = "/dashboard") -> int:
    """What a second machine holding only the copied cookie gets for `path`."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as thief, \
            thief.get(gw.url + path, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
                      allow_redirects=False) as r:
        return r.status


async def test_copied_cookie_fails_after_sign_out(gateway: Gateway) -> None:
    client = await signed_in(gateway, "out@example.com")
    try:
        cookie = session_cookie(client)
        assert await copied_status(gateway, cookie) == 200
        assert await copied_status(gateway, cookie, "/api/auth/me") == 200
        status, _, _ = await client.post("/logout")
        assert status == 303
        assert await copied_status(gateway, cookie) == 302
        assert await copied_status(gateway, cookie, "/api/auth/me") == 401
        # signing in again gives a new session; the old cookie stays dead
        await client.log_in("out@example.com")
        assert await copied_status(gateway, session_cookie(client)) == 200
        assert await copied_status(gateway, cookie) == 302
    finally:
        await client.close()


async def test_copied_cookie_fails_after_json_sign_out(gateway: Gateway) -> None:
    await make_user(gateway, "script@example.com")
    client = SiteClient(gateway)
    try:
        status, body = await client.json("POST", "/api/auth/login",
                                         {"email": "script@example.com", "password": PASSWORD})
        assert status == 200, body
        client.csrf = body["csrf_token"]
        cookie = session_cookie(client)
        assert await copied_status(gateway, cookie, "/api/auth/me") == 200
        status, _ = await client.json("POST", "/api/auth/logout")
        assert status == 200
        assert await copied_status(gateway, cookie, "/api/auth/me") == 401
    finally:
        await client.close()


async def test_password_change_ends_other_sessions_and_keeps_this_one(
        gateway: Gateway) -> None:
    client = await signed_in(gateway, "pw@example.com")
    try:
        cookie = session_cookie(client)
        status, text, headers = await client.post("/settings/password", {
            "current_password": PASSWORD, "new_password": "another long password",
            "confirm_password": "another long password"})
        assert status == 303 and headers["Location"] == "/settings", text
        assert await copied_status(gateway, cookie) == 302
        assert (await client.get("/dashboard"))[0] == 200
    finally:
        await client.close()


async def test_password_reset_ends_every_session(gateway: Gateway) -> None:
    client = await signed_in(gateway, "reset@example.com")
    other = SiteClient(gateway)
    try:
        cookie = session_cookie(client)
        await other.get("/password/forgot")
        status, _, _ = await other.post("/password/forgot", {"email": "reset@example.com"})
        assert status == 303
        code = await code_from_outbox(gateway, "reset@example.com")
        await other.get("/password/reset")
        status, text, _ = await other.post("/password/reset", {
            "code": code, "new_password": "a brand new password",
            "confirm_password": "a brand new password"})
        assert status == 303, text
        assert await copied_status(gateway, cookie) == 302
        assert (await client.get("/dashboard"))[0] == 302
    finally:
        await client.close()
        await other.close()


async def test_suspension_from_the_cli_ends_sessions_for_good(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = await gateway_factory()
    config = tmp_path / "llmapi.toml"
    config.write_text(f'[database]\npath = "{gw.config.database_path}"\n')
    client = await signed_in(gw, "cli@example.com")
    try:
        cookie = session_cookie(client)
        assert await copied_status(gw, cookie) == 200
        done = run_cli("users", "suspend", "cli@example.com", "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert await copied_status(gw, cookie) == 302
        done = run_cli("users", "activate", "cli@example.com", "--config", str(config))
        assert done.returncode == 0, done.stderr
        # re-activated: the user signs in again; the cookie from before stays dead
        assert await copied_status(gw, cookie) == 302
        await client.log_in("cli@example.com")
        assert (await client.get("/dashboard"))[0] == 200
    finally:
        await client.close()


async def test_suspension_from_the_admin_page_ends_sessions(gateway: Gateway) -> None:
    admin = await signed_in(gateway, "boss@example.com", admin=True)
    client = await signed_in(gateway, "member@example.com")
    try:
        cookie = session_cookie(client)
        user = await gateway.db.fetch_one("user_by_email", {"email": "member@example.com"})
        await admin.get("/admin/users")
        status, text, _ = await admin.post(f"/admin/users/{user['id']}/status",
                                           {"status": "suspended", "confirm": "1"})
        assert status == 303, text
        assert await copied_status(gateway, cookie) == 302
        await set_user_status(gateway.db, "member@example.com", "active")
        assert await copied_status(gateway, cookie) == 302
    finally:
        await admin.close()
        await client.close()


async def test_account_deletion_ends_every_session(gateway: Gateway) -> None:
    client = await signed_in(gateway, "gone@example.com")
    second = SiteClient(gateway)
    try:
        await second.log_in("gone@example.com")
        cookie, second_cookie = session_cookie(client), session_cookie(second)
        await client.get("/settings")
        status, text, _ = await client.post("/settings/delete",
                                            {"confirm_email": "gone@example.com"})
        assert status == 303, text
        assert await copied_status(gateway, cookie) == 302
        assert await copied_status(gateway, second_cookie) == 302
    finally:
        await client.close()
        await second.close()


@pytest.mark.parametrize("path", ["/dashboard", "/settings", "/api/auth/me"])
async def test_sign_out_in_one_browser_signs_out_every_browser(gateway: Gateway,
                                                                path: str) -> None:
    """The epoch is per user: one sign-out ends every session of the user (documented)."""
    first = await signed_in(gateway, "two@example.com")
    second = SiteClient(gateway)
    try:
        await second.log_in("two@example.com")
        assert (await second.get(path))[0] == 200
        await first.post("/logout")
        assert (await second.get(path))[0] in (302, 401)
    finally:
        await first.close()
        await second.close()


async def test_a_dead_cookie_cannot_sign_the_user_out_again(gateway: Gateway) -> None:
    """A cookie that already stopped working (say, stolen before a sign-out) still holds
    its CSRF token; posting /logout with it must not end the user's new session."""
    client = await signed_in(gateway, "nuisance@example.com")
    try:
        old = session_cookie(client)
        await client.get("/settings")  # the page's form holds the session's CSRF token
        token = client.csrf
        await client.post("/logout")
        await client.log_in("nuisance@example.com")
        assert (await client.get("/dashboard"))[0] == 200
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as thief, \
                thief.post(gateway.url + "/logout", data={"csrf_token": token},
                           headers={"Cookie": f"{SESSION_COOKIE}={old}"},
                           allow_redirects=False) as r:
            assert r.status == 303
        assert (await client.get("/dashboard"))[0] == 200
    finally:
        await client.close()
