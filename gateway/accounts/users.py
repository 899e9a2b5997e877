"""Create and change users, subscriptions and API keys (the operator's and the site's services).

Keys are `sk-llmapi-` + 32 random bytes (url-safe base64). Only their SHA-256 hash and a
short display prefix are stored, so a database leak reveals no usable key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.store.base import Store

KEY_PREFIX = "sk-llmapi-"
DISPLAY_CHARS = 8  # random characters kept in the display prefix


class AccountError(Exception):
    """A request the operator or user can fix (unknown e-mail, plan full of keys, ...).

    Like `SiteAccountError`, `message` is an English gettext message whose `%(name)s`
    placeholders `params` fill: the site shows it in the visitor's language
    (`web.i18n.translated`), the CLI and the JSON API print `str(exc)`, the English text."""

    def __init__(self, message: str, **params: Any) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: int
    raw: str
    prefix: str


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A fresh raw key and its display prefix."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[: len(KEY_PREFIX) + DISPLAY_CHARS]


# scrypt with n=2**14, r=8, p=1: ~16 MiB and ~50 ms, OWASP's floor for scrypt.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            dklen=32)
    enc = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${enc(salt).decode()}${enc(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                            p=int(p), dklen=len(expected))
    return hmac.compare_digest(actual, expected)


def add_month(ts: float) -> float:
    """The same wall-clock moment one calendar month later (day clamped to the month's end)."""
    start = datetime.fromtimestamp(ts, UTC)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    for day in (start.day, 30, 29, 28):
        try:
            return start.replace(year=year, month=month, day=day).timestamp()
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has 28 days")


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email:
        raise AccountError("not a valid e-mail address: %(email)s", email=repr(email))
    return email


async def create_user(db: Store, email: str, *, password: str = "", name: str = "",
                      plan: str = "free", is_admin: bool = False, verified: bool = True) -> int:
    """Insert a user with a subscription to `plan` starting now; returns the user id."""
    email = normalize_email(email)
    if await db.fetch_one("plan_by_name", {"name": plan}) is None:
        raise AccountError("unknown plan %(plan)s", plan=repr(plan))
    if await db.fetch_one("user_by_email", {"email": email}) is not None:
        raise AccountError("a user with e-mail %(email)s already exists", email=email)
    now = time.time()
    async with db.transaction() as tx:
        user_id = await tx.insert("user_insert", {
            "email": email, "name": name, "is_admin": int(is_admin), "status": "active",
            "password_hash": hash_password(password) if password else "",
            "email_verified": int(verified), "now": now,
        })
        await tx.insert("subscription_insert", {
            "user_id": user_id, "plan": plan, "period_start": now,
            "period_end": add_month(now), "now": now,
        })
    return user_id


async def create_key(db: Store, email: str, name: str = "") -> NewKey:
    """Issue a key for the user, within the plan's `max_keys` (0 = unlimited)."""
    user = await db.fetch_one("user_by_email", {"email": normalize_email(email)})
    if user is None:
        raise AccountError("no user with e-mail %(email)s", email=email)
    sub = await db.fetch_one("subscription_by_user", {"user_id": user["id"]})
    plan = await db.fetch_one("plan_by_name", {"name": sub["plan"] if sub else "free"})
    async with db.transaction() as tx:
        count_row = await tx.fetch_one("key_count_active", {"user_id": user["id"]})
        active = count_row["n"] if count_row else 0
        if plan is not None and plan["max_keys"] and active >= plan["max_keys"]:
            raise AccountError(
                "plan %(plan)s allows %(max)d active key(s); revoke one or change plan",
                plan=repr(plan["name"]), max=plan["max_keys"])
        raw, prefix = generate_key()
        key_id = await tx.insert("key_insert", {
            "user_id": user["id"], "name": name, "prefix": prefix,
            "key_hash": hash_key(raw), "now": time.time(),
        })
    return NewKey(key_id=key_id, raw=raw, prefix=prefix)


async def revoke_key(db: Store, prefix: str) -> int:
    """Revoke the active key with this display prefix; refuses an ambiguous prefix."""
    rows = [r for r in await db.fetch_all("keys_by_prefix", {"prefix": prefix})
            if r["revoked_at"] is None]
    if not rows:
        raise AccountError("no active key with prefix %(prefix)s", prefix=repr(prefix))
    if len(rows) > 1:
        raise AccountError("prefix %(prefix)s matches %(count)d keys", prefix=repr(prefix),
                           count=len(rows))
    return await db.execute("key_revoke_by_prefix", {"prefix": prefix, "now": time.time()})


async def set_user_status(db: Store, email: str, status: str) -> None:
    changed = await db.execute("user_set_status", {
        "email": normalize_email(email), "status": status, "now": time.time()})
    if not changed:
        raise AccountError("no user with e-mail %(email)s", email=email)


async def set_plan(db: Store, email: str, plan: str) -> None:
    """Change a user's plan at once (the period and its usage carry on)."""
    user = await db.fetch_one("user_by_email", {"email": normalize_email(email)})
    if user is None:
        raise AccountError("no user with e-mail %(email)s", email=email)
    if await db.fetch_one("plan_by_name", {"name": plan}) is None:
        raise AccountError("unknown plan %(plan)s", plan=repr(plan))
    await db.execute("subscription_set_plan",
                     {"user_id": user["id"], "plan": plan, "now": time.time()})


async def set_key_rpm(db: Store, key_id: int, rpm: int | None) -> None:
    """Give one key its own requests-per-minute limit (None: back to the plan's)."""
    await db.execute("key_set_rpm", {"key_id": key_id, "rpm": rpm, "now": time.time()})


async def end_sessions(db: Store, user_id: int, epoch: int) -> bool:
    """Every signed-in cookie of this user stops working (the session epoch moves on), if
    `epoch` (the asking cookie's) is still the current one; True when it was."""
    return bool(await db.execute("user_end_sessions", {"id": user_id, "epoch": epoch}))
