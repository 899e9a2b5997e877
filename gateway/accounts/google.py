"""Verify Google ID tokens: signature against Google's published keys, issuer, audience, expiry.

The flow is OpenID Connect with `response_type=id_token` and `response_mode=form_post`: the
browser goes to Google and comes back with a signed ID token, so no Google script is ever
loaded by our pages. A token is never trusted by decoding alone: its RS256 signature is
checked with the key named by its `kid` from the JWKS at `[google] jwks_url` (cached for
the max-age Google sends, refetched when an unknown key id shows up), then `iss`, `aud`,
`exp`/`iat`; the caller then matches its `nonce` to the browser that started the sign-in.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from gateway.config import GoogleConfig

log = logging.getLogger("llmapi.google")

ALGORITHMS = ["RS256"]
LEEWAY = 30  # seconds of clock skew tolerated on exp / iat
MIN_REFETCH_INTERVAL = 30.0  # unknown key ids cannot make us hammer the key URL


class GoogleSignInError(Exception):
    """The token (or the key set) cannot be trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class GoogleIdentity:
    subject: str
    email: str
    email_verified: bool
    name: str
    nonce: str

    def matches_nonce(self, expected: str) -> bool:
        """Was this token issued for the sign-in this browser started?"""
        return bool(expected) and hmac.compare_digest(self.nonce.encode(), expected.encode())


class GoogleKeys:
    """Google's signing keys by key id, fetched from the JWKS URL and cached."""

    def __init__(self, url: str, default_max_age: float, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.default_max_age = default_max_age
        self._http = http
        self._keys: dict[str, jwt.PyJWK] = {}
        self._expires = 0.0
        self._fetched = -MIN_REFETCH_INTERVAL

    async def get(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now >= self._expires
        unknown = kid not in self._keys and now - self._fetched >= MIN_REFETCH_INTERVAL
        if stale or unknown:
            await self._fetch()
        key = self._keys.get(kid)
        if key is None:
            raise GoogleSignInError(f"the token is signed with an unknown key ({kid!r})")
        return key

    async def _fetch(self) -> None:
        self._fetched = time.monotonic()
        try:
            async with self._http.get(self.url) as response:
                if response.status != 200:
                    raise GoogleSignInError(f"the key URL answered {response.status}")
                document = await response.json(content_type=None)
                max_age = _max_age(response.headers.get("Cache-Control", ""))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise GoogleSignInError(f"cannot fetch Google's keys: {exc}") from None
        keys: dict[str, jwt.PyJWK] = {}
        for item in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(item, dict) or item.get("kty") != "RSA" or "kid" not in item:
                continue
            try:
                keys[str(item["kid"])] = jwt.PyJWK(item, algorithm="RS256")
            except jwt.PyJWTError as exc:
                log.warning("ignoring unusable key %s from %s: %s", item.get("kid"), self.url,
                            exc)
        if not keys:
            raise GoogleSignInError("the key URL returned no usable RSA keys")
        self._keys = keys
        self._expires = time.monotonic() + (max_age if max_age is not None
                                            else self.default_max_age)


def _max_age(cache_control: str) -> float | None:
    match = re.search(r"max-age=(\d+)", cache_control)
    return float(match.group(1)) if match else None


class GoogleVerifier:
    """Checks ID tokens for one client id; builds the URL that starts a sign-in."""

    def __init__(self, config: GoogleConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.keys = GoogleKeys(config.jwks_url, config.keys_max_age, http)

    def authorization_url(self, redirect_uri: str, state: str, nonce: str) -> str:
        query = urlencode({
            "client_id": self.config.client_id, "response_type": "id_token",
            "response_mode": "form_post", "scope": "openid email profile",
            "redirect_uri": redirect_uri, "state": state, "nonce": nonce,
            "prompt": "select_account",
        })
        return f"{self.config.auth_url}?{query}"

    async def verify(self, token: str) -> GoogleIdentity:
        """The identity in a validly signed, current token for our client id, else
        `GoogleSignInError`. The caller must still check `matches_nonce` against the nonce
        it stored in the browser's session (the form_post callback arrives without the
        session cookie, so that check happens one redirect later)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise GoogleSignInError(f"not a signed token: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise GoogleSignInError(f"unexpected signing algorithm {header.get('alg')!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise GoogleSignInError("the token names no key id")
        key = await self.keys.get(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=ALGORITHMS, audience=self.config.client_id,
                issuer=list(self.config.issuers), leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise GoogleSignInError(f"the token is not valid: {exc}") from None
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise GoogleSignInError("the token carries no nonce")
        verified = claims.get("email_verified")
        return GoogleIdentity(
            subject=str(claims["sub"]), email=str(claims.get("email", "")),
            email_verified=verified is True or verified == "true",
            name=str(claims.get("name", "")), nonce=nonce)
