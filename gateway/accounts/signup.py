"""The site's account flows: register and verify by e-mail code, log in, change, delete.

Every function takes plain values and returns rows or raises `SiteAccountError` with a
message fit to show next to the form field it names. Sessions and HTTP stay in web/.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.accounts import codes as email_codes
from gateway.accounts.mail import Mailer
from gateway.accounts.throttle import LoginThrottle
from gateway.accounts.users import (
    AccountError,
    create_user,
    hash_password,
    normalize_email,
    verify_password,
)
from gateway.store.base import Store

REGISTER = "register"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_NAME = 100
_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f.]{2,}$")


@functools.cache
def _dummy_hash() -> str:
    """A real scrypt hash to check against when the e-mail is unknown, so the answer takes
    as long for a missing account as for a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


class SiteAccountError(Exception):
    """A problem the user can fix; `field` names the form field it belongs to.

    `message` is an English gettext message with `%(name)s` placeholders filled from
    `params`, so the site can show it in the visitor's language (`_(message, **params)`);
    `str(exc)` is the English text for logs and the JSON API."""

    def __init__(self, message: str, field: str = "", retry_after: int = 0,
                 **params: Any) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params
        self.field = field
        self.retry_after = retry_after


def clean_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise SiteAccountError("enter a valid e-mail address, like you@example.com", "email")
    try:
        return normalize_email(email)
    except AccountError as exc:
        raise SiteAccountError(str(exc), "email") from None


def clean_name(name: str) -> str:
    name = " ".join(name.split())
    if len(name) > MAX_NAME:
        raise SiteAccountError("keep the name under %(max)d characters", "name", max=MAX_NAME)
    return name


def check_new_password(password: str, email: str = "", field: str = "password") -> None:
    if len(password) < MIN_PASSWORD:
        raise SiteAccountError("use at least %(min)d characters", field, min=MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        raise SiteAccountError("use at most %(max)d characters", field, max=MAX_PASSWORD)
    if email and password.strip().lower() == email:
        raise SiteAccountError("the password must not be your e-mail address", field)


def registration_stamp(password_hash: str) -> str:
    """What the registering browser keeps (in its session) to prove, when the code is
    typed, that the pending account's password is still the one it set."""
    return hashlib.sha256(b"llmapi registration:" + password_hash.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Registration:
    email: str  # cleaned
    stamp: str  # registration_stamp of the password written; "" when none was


async def register(db: Store, mailer: Mailer, email: str, password: str, name: str,
                   site_url: str) -> Registration:
    """Start a registration and e-mail a code.

    The answer is the same whether or not the address already has an account (no account
    discovery through this form): an existing, verified owner gets a notice instead.
    Registering a pending address again replaces its password (the newest wins), so the
    caller keeps `stamp` for `verify`: only the browser whose password is the current one
    keeps it when the account is verified.
    """
    email = clean_email(email)
    name = clean_name(name)
    check_new_password(password, email)
    wait = await email_codes.seconds_until_resend(db, email, REGISTER)
    existing = await db.fetch_one("user_by_email", {"email": email})
    if existing is not None and existing["email_verified"]:
        last = await db.fetch_one("mail_latest_to", {"to_addr": email})
        if last is None or last["created_at"] < time.time() - email_codes.RESEND_INTERVAL:
            await mailer.send_template("already_registered", email, site_url=site_url)
        return Registration(email, "")
    password_hash = await asyncio.to_thread(hash_password, password)
    if existing is None:
        try:
            user_id = await create_user(db, email, name=name, verified=False)
        except AccountError as exc:  # registered a moment ago by a concurrent request
            raise SiteAccountError(str(exc), "email") from None
        now = time.time()
        await db.execute("site_user_mark_pending", {"id": user_id, "now": now})
        await db.execute("site_user_set_password",
                         {"id": user_id, "password_hash": password_hash, "now": now})
    else:
        await db.execute("site_user_retry_registration", {
            "id": existing["id"], "name": name, "password_hash": password_hash,
            "now": time.time()})
    if wait == 0:
        await send_code(db, mailer, email, site_url)
    return Registration(email, registration_stamp(password_hash))


async def send_code(db: Store, mailer: Mailer, email: str, site_url: str) -> None:
    code = await email_codes.issue_code(db, email, REGISTER)
    await mailer.send_template("verify_code", email, code=code,
                               expires_at=time.time() + email_codes.CODE_TTL,
                               minutes=email_codes.CODE_TTL // 60, site_url=site_url)


async def send_code_if_due(db: Store, mailer: Mailer, email: str, site_url: str) -> bool:
    """Send a new code unless one went out less than a minute ago; True if sent."""
    if await email_codes.seconds_until_resend(db, email, REGISTER):
        return False
    await send_code(db, mailer, email, site_url)
    return True


async def resend_code(db: Store, mailer: Mailer, email: str, site_url: str) -> None:
    """Another code for a pending registration, at most one a minute."""
    email = clean_email(email)
    wait = await email_codes.seconds_until_resend(db, email, REGISTER)
    if wait:
        raise SiteAccountError("a code was just sent; you can ask again in %(wait)d s", "code",
                               retry_after=wait, wait=wait)
    user = await db.fetch_one("user_by_email", {"email": email})
    if user is not None and not user["email_verified"]:
        await send_code(db, mailer, email, site_url)


@dataclass(frozen=True, slots=True)
class Verified:
    user: Any
    password_kept: bool  # False: the password was set elsewhere and is gone


async def verify(db: Store, email: str, code: str, stamp: str = "") -> Verified:
    """Check the e-mailed code; the account becomes active.

    The code proves whoever types it reads the mailbox, not that they chose the pending
    account's password: anyone may register a pending address again with their own
    (pre-account takeover). So the password stays only when `stamp` (kept by the browser
    that registered, or that proved the password at the login form) matches it; else it
    is emptied, in the same conditional update, and the owner sets one in Settings."""
    email = clean_email(email)
    user = await db.fetch_one("user_by_email", {"email": email})
    if user is None or user["email_verified"]:
        raise code_error(email_codes.CodeError(email_codes.CodeProblem.MISSING))
    try:
        await email_codes.check_code(db, email, REGISTER, code)
    except email_codes.CodeError as exc:
        raise code_error(exc) from None
    row = await db.fetch_one("user_by_id", {"id": user["id"]})
    seen = row["password_hash"] if row is not None else ""
    keep = bool(stamp and seen) and hmac.compare_digest(registration_stamp(seen), stamp)
    await db.execute("site_user_verify_by_code", {"id": user["id"], "seen": seen,
                                                  "keep": int(keep), "now": time.time()})
    verified = await db.fetch_one("user_by_id", {"id": user["id"]})
    kept = keep and verified is not None and verified["password_hash"] == seen
    return Verified(verified, kept)


def code_error(exc: email_codes.CodeError, field: str = "code") -> SiteAccountError:
    """The form's words for a refused code (literal here so the catalogue extracts them)."""
    problem = email_codes.CodeProblem
    if exc.problem is problem.EXPIRED:
        return SiteAccountError("this code has expired; ask for a new one", field)
    if exc.problem is problem.LOCKED:
        return SiteAccountError("too many wrong codes; ask for a new one", field)
    if exc.problem is problem.WRONG:
        return SiteAccountError("this code is not right (attempts left: %(left)d)", field,
                                left=exc.attempts_left)
    return SiteAccountError("no code was sent to this address, or it was already used; "
                            "ask for a new one", field)


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: Any
    needs_verification: bool = False


async def log_in(db: Store, throttle: LoginThrottle, email: str, password: str,
                 ip: str) -> LoginResult:
    """Check the password within the throttling limits. A correct password on an address
    still waiting for its code returns `needs_verification` instead of signing in."""
    try:
        email = clean_email(email)
    except SiteAccountError:
        raise SiteAccountError("wrong e-mail address or password", "password") from None
    # The check is claimed before the scrypt hash (gateway/accounts/throttle.py), so a
    # burst of guesses sent at once gets no more checks than the limits allow.
    claim = await throttle.claim(email, ip)
    if claim.retry_after:
        raise SiteAccountError("too many failed attempts; try again in %(wait)s",
                               "password", retry_after=claim.retry_after,
                               wait=_duration(claim.retry_after))
    user = await db.fetch_one("user_by_email", {"email": email})
    stored = user["password_hash"] if user is not None and user["password_hash"] else ""
    ok = await asyncio.to_thread(verify_password, password, stored or _dummy_hash())
    if user is None or not stored or not ok:
        raise SiteAccountError("wrong e-mail address or password", "password")
    await throttle.succeeded(claim, email, ip)
    if user["status"] == "suspended":
        raise SiteAccountError("this account is suspended; contact the operator", "email")
    if user["status"] == "deleted":
        raise SiteAccountError("wrong e-mail address or password", "password")
    if not user["email_verified"]:
        return LoginResult(user, needs_verification=True)
    return LoginResult(user)


def _duration(seconds: int) -> str:
    return f"{seconds} s" if seconds < 120 else f"{(seconds + 59) // 60} minutes"


async def change_name(db: Store, user_id: int, name: str) -> str:
    name = clean_name(name)
    await db.execute("site_user_set_name", {"id": user_id, "name": name, "now": time.time()})
    return name


async def change_password(db: Store, user_id: int, current: str, new: str,
                          confirm: str) -> str:
    """Set a new password after checking the current one; returns the new hash."""
    user = await db.fetch_one("user_by_id", {"id": user_id})
    if user is None:
        raise SiteAccountError("this account no longer exists")
    if user["password_hash"] and not await asyncio.to_thread(
            verify_password, current, user["password_hash"]):
        raise SiteAccountError("the current password is not right", "current_password")
    check_new_password(new, user["email"], "new_password")
    if new != confirm:
        raise SiteAccountError("the two new passwords differ", "confirm_password")
    password_hash = await asyncio.to_thread(hash_password, new)
    await db.execute("site_user_set_password",
                     {"id": user_id, "password_hash": password_hash, "now": time.time()})
    return str(password_hash)


async def delete_account(db: Store, user_id: int, typed_email: str) -> None:
    """Delete after the user typed their own e-mail address. The row stays, emptied of
    everything personal (orders and usage refer to it); every key is revoked at once."""
    user = await db.fetch_one("user_by_id", {"id": user_id})
    if user is None:
        raise SiteAccountError("this account no longer exists")
    if typed_email.strip().lower() != user["email"]:
        raise SiteAccountError("type your e-mail address exactly to confirm", "confirm_email")
    now = time.time()
    async with db.transaction() as tx:
        await tx.execute("site_user_revoke_keys", {"user_id": user_id, "now": now})
        await tx.execute("site_user_forget_identities", {"user_id": user_id})
        await tx.execute("site_user_anonymize", {
            "id": user_id, "email": f"deleted-{user_id}-{secrets.token_hex(4)}@deleted.invalid",
            "now": now})


async def google_user(db: Store, subject: str, email: str, email_verified: bool,
                      name: str) -> Any:
    """The user a verified Google identity signs in as: the linked one, else the account
    with the same (Google-verified) address, else a new account. A pending account with
    that address was registered by someone who never proved they read its mail: Google's
    word makes it the signer's, and nothing that registrant set survives (`_claim_pending`)."""
    user = await db.fetch_one("identity_user", {"provider": "google", "subject": subject})
    if user is None:
        if not email_verified:
            raise SiteAccountError("Google has not verified this e-mail address")
        email = clean_email(email)
        user = await db.fetch_one("user_by_email", {"email": email})
        if user is None:
            user_id = await create_user(db, email, name=clean_name(name)[:MAX_NAME])
        else:
            user_id = user["id"]
            if not user["email_verified"]:
                await _claim_pending(db, user_id, email, clean_name(name)[:MAX_NAME])
        await db.insert("identity_insert", {"user_id": user_id, "provider": "google",
                                            "subject": subject, "now": time.time()})
        user = await db.fetch_one("user_by_id", {"id": user_id})
    if user is None or user["status"] in ("suspended", "deleted"):
        raise SiteAccountError("this account is suspended; contact the operator")
    return user


async def _claim_pending(db: Store, user_id: int, email: str, name: str) -> None:
    """Pre-account takeover defence: an attacker registers the victim's address with a
    password and leaves it pending, then waits for the victim to sign in with Google. The
    link drops that password, name and every open code (and any key), so the attacker's
    password opens nothing and their code verifies nothing."""
    now = time.time()
    async with db.transaction() as tx:
        if not await tx.execute("site_user_claim_by_google",
                                {"id": user_id, "name": name, "now": now}):
            return  # verified a moment ago by its code: it is the owner's, with their password
        await tx.execute("code_revoke_all", {"email": email, "now": now})
        await tx.execute("site_user_revoke_keys", {"user_id": user_id, "now": now})
