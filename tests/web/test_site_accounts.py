"""Accounts through HTTP: sign-up with the e-mailed code, login, throttling, settings, CSRF."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from gateway.accounts import codes as email_codes
from tests.helpers.gateway import Gateway, GatewayFactory
from tests.helpers.site import (
    PASSWORD,
    SiteClient,
    code_from_outbox,
    make_user,
    register,
    signed_in,
)
from web.sessions import SECRET_FILE, SESSION_COOKIE


async def test_register_with_code_from_outbox_then_dashboard(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        await register(client, "New.User@Example.com", name="Ada")
        status, text, _ = await client.get("/dashboard")
        assert status == 200
        assert "Signed in as Ada" in text and "Plan: Free" in text
        user = await gateway.db.fetch_one("user_by_email",
                                                {"email": "new.user@example.com"})
        assert user["email_verified"] == 1 and user["status"] == "active"
        mail = await gateway.db.fetch_one("mail_latest_to",
                                                {"to_addr": "new.user@example.com"})
        assert mail["status"] == "outbox" and "/register/verify" in mail["body_text"]
    finally:
        await client.close()


async def test_code_is_stored_hashed_and_survives_a_restart(
        gateway_factory: GatewayFactory) -> None:
    first = await gateway_factory()
    client = SiteClient(first)
    await client.get("/register")
    await client.post("/register", {"email": "restart@example.com", "password": PASSWORD})
    code = await code_from_outbox(first, "restart@example.com")
    row = await first.db.fetch_one("code_latest_active",
                                         {"email": "restart@example.com",
                                          "purpose": "register"})
    assert code not in row["code_hash"] and row["code_hash"].startswith("scrypt$")
    await client.close()
    await first.server.close()

    second = await gateway_factory()  # same database file, fresh process state
    other = SiteClient(second)
    try:
        await other.get("/register/verify")
        status, text, headers = await other.post("/register/verify", {
            "email": "restart@example.com", "code": code})
        # verified; another browser than the one that chose the password types the code,
        # so the password is dropped and set again in Settings (docs/security.md)
        assert status == 303 and headers["Location"] == "/settings", text
    finally:
        await other.close()


async def test_wrong_codes_are_limited_then_a_new_code_works(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        await client.get("/register")
        await client.post("/register", {"email": "guess@example.com", "password": PASSWORD})
        code = await code_from_outbox(gateway, "guess@example.com")
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for attempt in range(email_codes.MAX_ATTEMPTS):
            status, text, _ = await client.post("/register/verify", {"code": wrong})
            assert status == 422
            if attempt < email_codes.MAX_ATTEMPTS - 1:
                assert "attempt" in text
        status, text, _ = await client.post("/register/verify", {"code": code})
        assert status == 422 and "too many wrong codes" in text
        # a fresh code (the resend pause is over) replaces the locked one
        await gateway.db.conn.execute(
            "UPDATE email_codes SET created_at = created_at - 120")
        status, _, headers = await client.post("/register/resend")
        assert status == 303
        new_code = await code_from_outbox(gateway, "guess@example.com")
        status, _, headers = await client.post("/register/verify", {"code": new_code})
        assert status == 303 and headers["Location"] == "/dashboard"
    finally:
        await client.close()


async def test_expired_code_is_refused(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        await client.get("/register")
        await client.post("/register", {"email": "late@example.com", "password": PASSWORD})
        code = await code_from_outbox(gateway, "late@example.com")
        await gateway.db.conn.execute(
            "UPDATE email_codes SET expires_at = ? WHERE email = ?",
            (time.time() - 1, "late@example.com"))
        status, text, _ = await client.post("/register/verify", {"code": code})
        assert status == 422 and "expired" in text
    finally:
        await client.close()


async def test_registering_a_taken_address_reveals_nothing_and_mails_the_owner(
        gateway: Gateway) -> None:
    await make_user(gateway, "taken@example.com")
    client = SiteClient(gateway)
    try:
        await client.get("/register")
        status, _, headers = await client.post("/register", {
            "email": "taken@example.com", "password": "another password 1"})
        assert status == 303 and headers["Location"] == "/register/verify"
        mail = await gateway.db.fetch_one("mail_latest_to",
                                                {"to_addr": "taken@example.com"})
        assert "already" in mail["body_text"]
        user = await gateway.db.fetch_one("user_by_email",
                                                {"email": "taken@example.com"})
        from gateway.accounts.users import verify_password
        assert verify_password(PASSWORD, user["password_hash"])  # unchanged
    finally:
        await client.close()


async def test_registration_form_errors_name_the_field(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        await client.get("/register")
        status, text, _ = await client.post("/register", {"email": "nope",
                                                          "password": PASSWORD})
        assert status == 422 and 'id="email-error"' in text
        status, text, _ = await client.post("/register", {"email": "short@example.com",
                                                          "password": "short"})
        assert status == 422 and 'id="password-error"' in text and "8 characters" in text
    finally:
        await client.close()


async def test_login_logout_and_session_cookie_flags(gateway: Gateway) -> None:
    await make_user(gateway, "login@example.com")
    client = SiteClient(gateway)
    try:
        await client.get("/login")
        status, _, headers = await client.post("/login", {
            "email": "login@example.com", "password": PASSWORD, "next": "/settings"})
        assert status == 303 and headers["Location"] == "/settings"
        cookie = next(v for k, v in headers.items()
                      if k.lower() == "set-cookie" and SESSION_COOKIE in v)
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "Secure" not in cookie  # the public URL is http here
        status, text, _ = await client.get("/settings")
        assert status == 200 and "login@example.com" in text
        status, _, headers = await client.post("/logout")
        assert status == 303 and headers["Location"] == "/"
        status, _, headers = await client.get("/settings")
        assert status == 302 and headers["Location"] == "/login?next=/settings"
    finally:
        await client.close()


async def test_session_cookie_is_secure_behind_https(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"server": {"public_url": "https://llmapi.example"}})
    client = SiteClient(gw)
    try:
        status, _, headers = await client.get("/login")  # the form's token starts a session
        assert status == 200
        cookie = next(v for k, v in headers.items()
                      if k.lower() == "set-cookie" and SESSION_COOKIE in v)
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    finally:
        await client.close()


async def test_only_relative_next_is_followed(gateway: Gateway) -> None:
    await make_user(gateway, "next@example.com")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        client = SiteClient(gateway)
        try:
            await client.get("/login")
            status, _, headers = await client.post("/login", {
                "email": "next@example.com", "password": PASSWORD, "next": target})
            assert status == 303 and headers["Location"] == "/dashboard", target
        finally:
            await client.close()


async def test_wrong_password_is_throttled_per_account(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"web": {"login_failures_per_account": 3,
                                        "login_failures_per_ip": 100}})
    await make_user(gw, "victim@example.com")
    client = SiteClient(gw)
    try:
        await client.get("/login")
        for _ in range(3):
            status, text, _ = await client.post("/login", {"email": "victim@example.com",
                                                           "password": "wrong password"})
            assert status == 422 and "wrong e-mail address or password" in text
        status, text, headers = await client.post("/login", {"email": "victim@example.com",
                                                             "password": PASSWORD})
        assert status == 429 and "too many failed attempts" in text
        assert int(headers["Retry-After"]) > 0
    finally:
        await client.close()


async def test_many_accounts_from_one_ip_are_throttled(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"web": {"login_failures_per_account": 10,
                                        "login_failures_per_ip": 4}})
    await make_user(gw, "other@example.com")
    client = SiteClient(gw)
    try:
        await client.get("/login")
        for i in range(4):
            await client.post("/login", {"email": f"probe{i}@example.com",
                                         "password": "guess"})
        status, text, _ = await client.post("/login", {"email": "other@example.com",
                                                       "password": PASSWORD})
        assert status == 429, text
    finally:
        await client.close()


async def test_state_changing_request_without_csrf_token_is_refused(gateway: Gateway) -> None:
    await make_user(gateway, "csrf@example.com")
    client = SiteClient(gateway)
    try:
        await client.get("/login")
        status, text, _ = await client.post("/login", {"email": "csrf@example.com",
                                                       "password": PASSWORD}, csrf=False)
        assert status == 403 and "CSRF" in text
        await client.log_in("csrf@example.com")
        status, _, _ = await client.post("/settings/name", {"name": "X"}, csrf=False)
        assert status == 403
        status, _, _ = await client.post("/settings/name", {"name": "X",
                                                            "csrf_token": "forged"},
                                         csrf=False)
        assert status == 403
        # the header works as well as the form field (that is what htmx sends)
        status, _, _ = await client.post("/settings/name", {"name": "Via Header"},
                                         csrf=False, headers={"X-CSRF-Token": client.csrf})
        assert status == 303
        status, payload = await client.json("POST", "/api/dashboard/keys", {"name": "x"},
                                            csrf=False)
        assert status == 403 and payload["error"]["type"] == "permission_error"
    finally:
        await client.close()


async def test_payment_callbacks_are_exempt_from_csrf(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        status, text, _ = await client.post("/api/payment/notify", {"x": "1"},
                                            csrf=False)
        assert status == 200 and text == "failure"  # refused by signature, not by CSRF
    finally:
        await client.close()


async def test_change_name_and_password_signs_out_other_browsers(gateway: Gateway) -> None:
    here = await signed_in(gateway, "change@example.com")
    elsewhere = SiteClient(gateway)
    try:
        await elsewhere.log_in("change@example.com")
        status, _, _ = await here.post("/settings/name", {"name": "Grace Hopper"})
        assert status == 303
        status, text, _ = await here.get("/settings")
        assert 'value="Grace Hopper"' in text and "Your name was saved." in text

        status, text, _ = await here.post("/settings/password", {
            "current_password": "not it", "new_password": "new password 1",
            "confirm_password": "new password 1"})
        assert status == 422 and "current password is not right" in text
        status, _, _ = await here.post("/settings/password", {
            "current_password": PASSWORD, "new_password": "new password 1",
            "confirm_password": "new password 1"})
        assert status == 303
        assert (await here.get("/settings"))[0] == 200  # this browser stays signed in
        status, _, headers = await elsewhere.get("/settings")
        assert status == 302 and headers["Location"].startswith("/login")
        fresh = SiteClient(gateway)
        await fresh.log_in("change@example.com", "new password 1")
        await fresh.close()
    finally:
        await here.close()
        await elsewhere.close()


async def test_htmx_settings_form_returns_its_fragment(gateway: Gateway) -> None:
    client = await signed_in(gateway, "frag@example.com")
    try:
        status, text, _ = await client.post("/settings/name", {"name": "Fragment"},
                                            headers={"HX-Request": "true",
                                                     "HX-Target": "settings-name"})
        assert status == 200
        assert text.lstrip().startswith('<section id="settings-name"')
        assert "<html" not in text and "Your name was saved." in text
    finally:
        await client.close()


async def test_delete_account_needs_the_email_typed_and_revokes_keys(gateway: Gateway) -> None:
    client = await signed_in(gateway, "leaving@example.com")
    try:
        status, payload = await client.json("POST", "/api/dashboard/keys", {"name": "k"})
        assert status == 201
        status, text, _ = await client.post("/settings/delete",
                                            {"confirm_email": "wrong@example.com"})
        assert status == 422 and "type your e-mail address" in text
        status, _, headers = await client.post("/settings/delete",
                                               {"confirm_email": "leaving@example.com"})
        assert status == 303 and headers["Location"] == "/"
        assert await gateway.db.fetch_one(
            "user_by_email", {"email": "leaving@example.com"}) is None
        row = await gateway.db.fetch_one("keys_by_prefix", {"prefix": payload["prefix"]})
        assert row["revoked_at"] is not None and row["email"].endswith("@deleted.invalid")
        status, _, _ = await client.get("/dashboard")
        assert status == 302
        # the address is free again
        again = SiteClient(gateway)
        await register(again, "leaving@example.com")
        await again.close()
    finally:
        await client.close()


async def test_unverified_login_goes_to_the_code_page(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        await client.get("/register")
        await client.post("/register", {"email": "pending@example.com", "password": PASSWORD})
        client.http.cookie_jar.clear()
        client.csrf = ""
        await client.get("/login")
        status, _, headers = await client.post("/login", {"email": "pending@example.com",
                                                          "password": PASSWORD})
        assert status == 303 and headers["Location"] == "/register/verify"
        status, text, _ = await client.get("/register/verify")
        assert "pending@example.com" in text
    finally:
        await client.close()


async def test_session_secret_is_generated_once_with_private_permissions(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    path = gw.config.data_dir / SECRET_FILE
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    first = path.read_bytes()
    await gateway_factory()
    assert path.read_bytes() == first


def test_processes_starting_together_agree_on_one_session_secret(tmp_path: Path) -> None:
    """Two gateways started at once on one data folder (bench.py does) must not read a key
    file the other has created but not yet written."""
    script = ("import sys; from tests.helpers.gateway import make_config; "
              "from web.sessions import load_or_create_secret; from pathlib import Path; "
              "sys.stdout.write(load_or_create_secret(make_config(Path(sys.argv[1]))).hex())")
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", script, str(folder)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        results = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in results]
        assert len({out for out, _ in results}) == 1
        assert [f.name for f in folder.iterdir() if f.name.startswith(".")] == []


async def test_json_auth_endpoints_for_scripts(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        status, payload = await client.json("POST", "/api/auth/register", {
            "email": "script@example.com", "password": PASSWORD})
        assert status == 202, payload
        code = await code_from_outbox(gateway, "script@example.com")
        status, payload = await client.json("POST", "/api/auth/verify", {
            "email": "script@example.com", "code": code})
        assert status == 200 and payload["user"]["email"] == "script@example.com"
        client.csrf = payload["csrf_token"]
        status, payload = await client.json("GET", "/api/auth/me")
        assert status == 200 and payload["email"] == "script@example.com"
        status, payload = await client.json("POST", "/api/auth/logout")
        assert status == 200
        status, payload = await client.json("GET", "/api/auth/me")
        assert status == 401 and payload["error"]["type"] == "authentication_error"
        client.csrf = ""
        status, payload = await client.json("POST", "/api/auth/login", {
            "email": "script@example.com", "password": "wrong"})
        assert status == 401
    finally:
        await client.close()
