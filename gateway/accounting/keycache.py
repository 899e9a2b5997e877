"""Authenticate API keys from memory; a background refresh makes changes felt within a second.

The hot path never touches SQLite for a known key. A key seen for the first time is loaded
once. Every `REFRESH_INTERVAL` the cache asks the database which keys, users or
subscriptions changed since the last look (including changes made by another process,
such as `python -m gateway keys revoke`) and reloads just those. With several instances a
change announced on Redis (gateway/events.py) makes that look happen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.accounts.users import hash_key
from gateway.errors import ApiError
from gateway.events import REMOTE, UserChanged, UserEvents
from gateway.store.base import Store

log = logging.getLogger("llmapi.auth")

REFRESH_INTERVAL = 0.4
# Clock slack for rows written by another process in the same instant as our last look.
_SLACK = 2.0
_NEGATIVE_TTL = 1.0
_NEGATIVE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the hot path knows about an authenticated key."""

    key_id: int
    user_id: int
    prefix: str
    email: str
    plan: str
    rpm_override: int | None
    revoked: bool
    suspended: bool


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        key_id=row["key_id"], user_id=row["user_id"], prefix=row["prefix"], email=row["email"],
        plan=row["plan"] or "free", rpm_override=row["rpm_override"],
        revoked=row["revoked_at"] is not None, suspended=row["user_status"] != "active",
    )


class KeyCache:
    """Maps SHA-256(key) to `KeyInfo`, kept fresh by `run_refresher`."""

    def __init__(self, db: Store, events: UserEvents | None = None,
                 refresh_interval: float = REFRESH_INTERVAL) -> None:
        self._db = db
        self._events = events  # told of every changed key/user/plan it finds; listened to
        self.refresh_interval = refresh_interval
        if events is not None:
            events.subscribe(self._user_changed)
        self._keys: dict[str, KeyInfo] = {}
        self._unknown: dict[str, float] = {}  # hash -> when we last found nothing
        self._checked_at = time.time()
        self._wake = asyncio.Event()  # set: poll now (a change heard from another instance)

    async def authenticate(self, raw_key: str | None) -> KeyInfo:
        """The key's info, or an `ApiError` (401 unknown/revoked, 403 suspended)."""
        if not raw_key:
            raise ApiError("authentication_error",
                           "missing API key: send it in the x-api-key header "
                           "or as Authorization: Bearer")
        digest = hash_key(raw_key)
        info = self._keys.get(digest)
        if info is None:
            info = await self._load(digest)
        if info is None or info.revoked:
            raise ApiError("authentication_error", "invalid API key")
        if info.suspended:
            raise ApiError("permission_error", "this account is suspended")
        return info

    async def _load(self, digest: str) -> KeyInfo | None:
        seen = self._unknown.get(digest)
        if seen is not None and time.monotonic() - seen < _NEGATIVE_TTL:
            return None
        row = await self._db.fetch_one("key_auth_by_hash", {"key_hash": digest})
        if row is None:
            if len(self._unknown) >= _NEGATIVE_MAX:
                self._unknown.clear()
            self._unknown[digest] = time.monotonic()
            return None
        self._unknown.pop(digest, None)
        info = _info(row)
        self._keys[digest] = info
        return info

    def _user_changed(self, event: UserChanged) -> None:
        """Someone changed this user: drop their keys, reloaded on their next request. A
        change heard from another instance also makes the refresher poll at once."""
        if event.origin is self:
            return
        for digest in [d for d, info in self._keys.items() if info.user_id == event.user_id]:
            del self._keys[digest]
        if event.origin is REMOTE:
            self._wake.set()

    async def refresh(self) -> None:
        """Reload every cached key whose key, user or subscription row changed."""
        now = time.time()
        rows = await self._db.fetch_all("key_auth_changed_since",
                                        {"since": self._checked_at - _SLACK})
        self._checked_at = now
        for row in rows:
            digest = row["key_hash"]
            self._unknown.pop(digest, None)
            if digest in self._keys:
                self._keys[digest] = _info(row)
            if self._events is not None:
                await self._events.publish(UserChanged(row["user_id"], origin=self,
                                                       broadcast=False))

    async def run_refresher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # keep refreshing; a locked DB now is fine a moment later
                log.exception("key cache refresh failed")


KEY_CACHE = web.AppKey("key_cache", KeyCache)
"""The API-key cache and its refresher (app.py: `key_cache`)."""


def api_key_from(request: web.Request) -> str | None:
    """The key a client sent: `x-api-key` (Anthropic SDKs) or `Authorization: Bearer`.

    Keys are printable ASCII; anything else (aiohttp hands undecodable header bytes over as
    surrogates, which cannot even be hashed) is refused here as a wrong key."""
    key = request.headers.get("x-api-key")
    header = "x-api-key"
    if not key:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth[:7].lower() == "bearer " else None
        header = "Authorization"
    if key is None:
        return None
    key = key.strip()
    if not (key.isascii() and key.isprintable()):
        raise ApiError("authentication_error",
                       f"{header}: the API key must be printable ASCII (sk-llmapi-...)")
    return key
