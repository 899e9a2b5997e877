"""Google sign-in: tokens are checked by signature against a JWKS (ours, on loopback), never
merely decoded; then the whole form_post flow through the site."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.accounts.google import GoogleSignInError, GoogleVerifier
from gateway.config import GoogleConfig
from tests.helpers.gateway import GatewayFactory
from tests.helpers.site import SiteClient, code_from_outbox, register

CLIENT_ID = "test-client.apps.googleusercontent.com"
ISSUER = "https://accounts.google.com"


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(
        b"=").decode()


class FakeGoogle:
    """Our own key pair and JWKS endpoint standing in for Google's."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        self.fetches = 0
        self.server: TestServer | None = None

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                          "n": _b64(numbers.n), "e": _b64(numbers.e)}]}

    async def start(self) -> str:
        async def certs(_: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response(self.jwks(), headers={"Cache-Control": "max-age=3600"})

        app = web.Application()
        app.router.add_get("/certs", certs)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("/certs"))

    def token(self, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "1234567890",
                   "email": "googler@example.com", "email_verified": True, "name": "G User",
                   "iat": now, "exp": now + 600, "nonce": "n-1", **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid})


@pytest.fixture
async def google() -> AsyncIterator[FakeGoogle]:
    fake = FakeGoogle()
    await fake.start()
    yield fake
    assert fake.server is not None
    await fake.server.close()


async def make_verifier(google: FakeGoogle, http: aiohttp.ClientSession) -> GoogleVerifier:
    assert google.server is not None
    config = GoogleConfig(client_id=CLIENT_ID, jwks_url=str(google.server.make_url("/certs")))
    return GoogleVerifier(config, http)


async def test_valid_token_is_accepted_and_keys_are_cached(google: FakeGoogle) -> None:
    async with aiohttp.ClientSession() as http:
        verifier = await make_verifier(google, http)
        identity = await verifier.verify(google.token())
        await verifier.verify(google.token(sub="other"))
    assert identity.subject == "1234567890" and identity.email == "googler@example.com"
    assert identity.email_verified and identity.matches_nonce("n-1")
    assert not identity.matches_nonce("n-2") and not identity.matches_nonce("")
    assert google.fetches == 1


@pytest.mark.parametrize(("change", "problem"), [
    ({"aud": "someone-else"}, "(?i)audience"),
    ({"iss": "https://evil.example"}, "(?i)issuer"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "(?i)expired"),
    ({"nonce": None}, "nonce"),
])
async def test_token_with_wrong_claims_is_refused(google: FakeGoogle, change: dict[str, Any],
                                                  problem: str) -> None:
    async with aiohttp.ClientSession() as http:
        verifier = await make_verifier(google, http)
        with pytest.raises(GoogleSignInError, match=problem):
            await verifier.verify(google.token(**change))


async def test_token_signed_by_another_key_is_refused(google: FakeGoogle) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with aiohttp.ClientSession() as http:
        verifier = await make_verifier(google, http)
        with pytest.raises(GoogleSignInError, match="Signature"):
            await verifier.verify(google.token(key=forger))
        with pytest.raises(GoogleSignInError, match="unknown key"):
            await verifier.verify(google.token(key=forger, kid="forged-kid"))


async def test_unsigned_or_tampered_token_is_refused(google: FakeGoogle) -> None:
    header = base64.urlsafe_b64encode(json.dumps(
        {"alg": "none", "kid": google.kid}).encode()).rstrip(b"=").decode()
    good = google.token()
    claims = jwt.decode(good, options={"verify_signature": False})
    body = base64.urlsafe_b64encode(json.dumps(
        {**claims, "email": "admin@example.com"}).encode()).rstrip(b"=").decode()
    async with aiohttp.ClientSession() as http:
        verifier = await make_verifier(google, http)
        with pytest.raises(GoogleSignInError, match="algorithm"):
            await verifier.verify(f"{header}.{body}.")
        h, _, s = good.split(".")
        with pytest.raises(GoogleSignInError, match="Signature"):
            await verifier.verify(f"{h}.{body}.{s}")


async def test_sign_in_flow_through_the_site(gateway_factory: GatewayFactory,
                                             google: FakeGoogle) -> None:
    assert google.server is not None
    gw = await gateway_factory({"google": {
        "client_id": CLIENT_ID, "jwks_url": str(google.server.make_url("/certs")),
        "auth_url": "https://accounts.example/auth"}})
    browser = SiteClient(gw)
    outsider = SiteClient(gw)
    try:
        status, text, _ = await browser.get("/login")
        assert "Sign in with Google" in text
        status, _, headers = await browser.get("/login/google?next=/settings")
        assert status == 302
        target = urlsplit(headers["Location"])
        query = parse_qs(target.query)
        assert target.netloc == "accounts.example" and query["client_id"] == [CLIENT_ID]
        assert query["response_mode"] == ["form_post"]
        assert query["redirect_uri"] == [gw.config.public_url + "/login/google/callback"]
        state, nonce = query["state"][0], query["nonce"][0]
        token = google.token(nonce=nonce)

        # Google's form_post arrives cross-site: no cookie, no CSRF token.
        status, _, headers = await outsider.post("/login/google/callback",
                                                 {"id_token": token, "state": state},
                                                 csrf=False)
        assert status == 303
        finish = headers["Location"]
        assert finish.startswith("/login/google/finish?ticket=")
        # The ticket is useless in a browser that did not start this sign-in.
        status, text, _ = await outsider.get(finish)
        assert status == 400 and "not started in this browser" in text
        status, _, headers = await browser.get(finish)
        assert status == 303 and headers["Location"] == "/settings"
        status, text, _ = await browser.get("/settings")
        assert status == 200 and "googler@example.com" in text
        user = await gw.db.fetch_one("user_by_email", {"email": "googler@example.com"})
        assert user["email_verified"] == 1 and user["password_hash"] == ""

        # a forged token posted to the callback never gets a ticket
        forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        status, text, _ = await outsider.post("/login/google/callback", {
            "id_token": google.token(key=forger, nonce=nonce), "state": state}, csrf=False)
        assert status == 400 and "Google sign-in failed" in text
    finally:
        await browser.close()
        await outsider.close()


async def test_google_routes_are_off_without_a_client_id(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    client = SiteClient(gw)
    try:
        _, text, _ = await client.get("/login")
        assert "Sign in with Google" not in text
        assert (await client.get("/login/google"))[0] == 404
    finally:
        await client.close()


async def google_sign_in(gw: Any, google: FakeGoogle, browser: SiteClient, **claims: Any
                         ) -> tuple[int, str, Any]:
    """The whole flow for `browser`: start, Google's form_post (cross-site), finish."""
    _, _, headers = await browser.get("/login/google?next=/settings")
    query = parse_qs(urlsplit(headers["Location"]).query)
    token = google.token(nonce=query["nonce"][0], **claims)
    async with aiohttp.ClientSession() as google_side, google_side.post(
            gw.url + "/login/google/callback", data={"id_token": token,
                                                     "state": query["state"][0]},
            allow_redirects=False) as r:
        assert r.status == 303, await r.text()
        finish = r.headers["Location"]
    return await browser.get(finish)


async def test_pending_registration_cannot_take_over_a_google_account(
        gateway_factory: GatewayFactory, google: FakeGoogle) -> None:
    """Pre-account takeover: the attacker registers the victim's address with a password of
    their own and leaves it pending; the victim later signs in with Google. The account
    Google verified must not keep the attacker's password, name or pending code."""
    assert google.server is not None
    gw = await gateway_factory({"google": {
        "client_id": CLIENT_ID, "jwks_url": str(google.server.make_url("/certs"))}})
    attacker, victim = SiteClient(gw), SiteClient(gw)
    victim_email = "googler@example.com"
    try:
        await attacker.get("/register")
        status, text, headers = await attacker.post("/register", {
            "email": victim_email, "password": "attacker password 1", "name": "Mallory"})
        assert status == 303 and headers["Location"] == "/register/verify", text
        pending = await gw.db.fetch_one("user_by_email", {"email": victim_email})
        assert pending["status"] == "pending" and pending["password_hash"]
        code = await code_from_outbox(gw, victim_email)  # in the victim's mailbox

        status, _, headers = await google_sign_in(gw, google, victim)
        assert status == 303 and headers["Location"] == "/settings"
        assert (await victim.get("/settings"))[0] == 200

        user = await gw.db.fetch_one("user_by_email", {"email": victim_email})
        assert user["id"] == pending["id"] and user["email_verified"] == 1
        assert user["status"] == "active"
        assert user["password_hash"] == "", "the attacker's password survived the link"
        assert user["name"] != "Mallory"
        # the attacker's password opens nothing
        await attacker.get("/login")
        status, text, _ = await attacker.post("/login", {
            "email": victim_email, "password": "attacker password 1"})
        assert status == 422 and "wrong e-mail address or password" in text
        # the code the attacker's registration sent is dead too
        await attacker.get("/register/verify")
        status, text, _ = await attacker.post("/register/verify", {
            "email": victim_email, "code": code})
        assert status == 422, text
        # the victim's Google session is untouched by all of that
        assert (await victim.get("/settings"))[0] == 200
    finally:
        await attacker.close()
        await victim.close()


async def test_verified_password_account_keeps_its_password_when_google_links(
        gateway_factory: GatewayFactory, google: FakeGoogle) -> None:
    """An owner who verified the address by code chose that password: linking Google to
    the account later keeps it."""
    assert google.server is not None
    gw = await gateway_factory({"google": {
        "client_id": CLIENT_ID, "jwks_url": str(google.server.make_url("/certs"))}})
    owner = SiteClient(gw)
    try:
        await register(owner, "googler@example.com", password="owner password 1")
        before = await gw.db.fetch_one("user_by_email", {"email": "googler@example.com"})
        browser = SiteClient(gw)
        try:
            status, _, _ = await google_sign_in(gw, google, browser)
            assert status == 303
        finally:
            await browser.close()
        after = await gw.db.fetch_one("user_by_email", {"email": "googler@example.com"})
        assert after["password_hash"] == before["password_hash"] != ""
    finally:
        await owner.close()
