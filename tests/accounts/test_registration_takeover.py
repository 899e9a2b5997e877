"""Pre-account takeover through the sign-up form itself: the attacker registers the
victim's address and keeps registering it again (each time with their own password), so
that whenever the victim types the code from their mailbox, the account they verify
holds the attacker's password. The code proves the mailbox; only the browser that set the
password may keep it."""

from __future__ import annotations

from tests.helpers.gateway import Gateway
from tests.helpers.site import PASSWORD, SiteClient, code_from_outbox

VICTIM = "victim@example.com"
ATTACKER_PASSWORD = "attacker password 1"


async def register_form(client: SiteClient, password: str) -> None:
    await client.get("/register")
    status, text, headers = await client.post("/register", {"email": VICTIM,
                                                             "password": password})
    assert status == 303 and headers["Location"] == "/register/verify", text


async def attacker_logs_in(gw: Gateway) -> int:
    attacker = SiteClient(gw)
    try:
        status, _ = await attacker.json("POST", "/api/auth/login",
                                        {"email": VICTIM, "password": ATTACKER_PASSWORD})
        return status
    finally:
        await attacker.close()


async def test_re_registering_before_the_victim_verifies_wins_nothing(gateway: Gateway) -> None:
    attacker, victim = SiteClient(gateway), SiteClient(gateway)
    try:
        await register_form(attacker, ATTACKER_PASSWORD)
        await register_form(victim, PASSWORD)        # the victim signs up, own password
        await register_form(attacker, ATTACKER_PASSWORD)  # ... and the attacker again
        code = await code_from_outbox(gateway, VICTIM)  # in the victim's mailbox
        await victim.get("/register/verify")
        status, text, headers = await victim.post("/register/verify", {"code": code})
        assert status == 303 and headers["Location"] == "/settings", text
        assert (await victim.get("/dashboard"))[0] == 200  # the victim is signed in
        user = await gateway.db.fetch_one("user_by_email", {"email": VICTIM})
        assert user["email_verified"] == 1
        assert await attacker_logs_in(gateway) == 401, "the attacker's password survived"
        # the victim sets a password in Settings (no current one is asked for)
        status, text, _ = await victim.post("/settings/password", {
            "current_password": "", "new_password": "victim's own password",
            "confirm_password": "victim's own password"})
        assert status == 303, text
        victim2 = SiteClient(gateway)
        try:
            await victim2.log_in(VICTIM, "victim's own password")
        finally:
            await victim2.close()
    finally:
        await attacker.close()
        await victim.close()


async def test_the_browser_that_registered_keeps_its_password(gateway: Gateway) -> None:
    """The ordinary sign-up: same browser registers and verifies; the password stays."""
    client = SiteClient(gateway)
    try:
        await register_form(client, PASSWORD)
        code = await code_from_outbox(gateway, VICTIM)
        await client.get("/register/verify")
        status, text, headers = await client.post("/register/verify", {"code": code})
        assert status == 303 and headers["Location"] == "/dashboard", text
    finally:
        await client.close()
    other = SiteClient(gateway)
    try:
        await other.log_in(VICTIM)
    finally:
        await other.close()


async def test_json_sign_up_keeps_the_password_of_the_cookie_that_registered(
        gateway: Gateway) -> None:
    script, attacker = SiteClient(gateway), SiteClient(gateway)
    try:
        status, _ = await attacker.json("POST", "/api/auth/register",
                                        {"email": VICTIM, "password": ATTACKER_PASSWORD})
        assert status == 202
        status, _ = await script.json("POST", "/api/auth/register",
                                      {"email": VICTIM, "password": PASSWORD})
        assert status == 202
        code = await code_from_outbox(gateway, VICTIM)
        status, body = await script.json("POST", "/api/auth/verify",
                                         {"email": VICTIM, "code": code})
        assert status == 200 and body["password_kept"] is True, body
    finally:
        await script.close()
        await attacker.close()
    assert await attacker_logs_in(gateway) == 401
    checker = SiteClient(gateway)
    try:
        status, _ = await checker.json("POST", "/api/auth/login",
                                       {"email": VICTIM, "password": PASSWORD})
        assert status == 200
    finally:
        await checker.close()
