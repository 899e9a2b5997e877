"""Forgotten passwords and changes of e-mail address, both proven by an e-mailed code.

A reset request answers the same whether or not the address has an account (no one learns
who is registered), and sends at most one code a minute. The code is the same 6-digit,
hashed, few-attempts code as sign-up (`codes.py`), under its own purpose so a sign-up code
cannot reset a password. Setting the new password changes the password stamp, which signs
out every other browser (web/sessions.py).

An e-mail change sends the code to the *new* address (proving the user receives mail
there) and, once confirmed, a notice to the old one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.accounts import codes as email_codes
from gateway.accounts.mail import Mailer
from gateway.accounts.signup import (
    SiteAccountError,
    check_new_password,
    clean_email,
    code_error,
)
from gateway.accounts.users import hash_password
from gateway.store.base import Store

RESET = "reset"


def change_purpose(user_id: int) -> str:
    """Codes for an e-mail change belong to one user: another cannot use them."""
    return f"change-email:{user_id}"


async def request_reset(db: Store, mailer: Mailer, email: str, site_url: str) -> str:
    """Send a reset code if the address has an active, verified account. Returns the
    cleaned address; raises only for an address that is not one."""
    email = clean_email(email)
    user = await db.fetch_one("user_by_email", {"email": email})
    if user is None or user["status"] != "active" or not user["email_verified"]:
        return email
    if await email_codes.seconds_until_resend(db, email, RESET):
        return email  # the code sent a moment ago still works
    code = await email_codes.issue_code(db, email, RESET)
    await mailer.send_template("reset_code", email, code=code,
                               expires_at=time.time() + email_codes.CODE_TTL,
                               minutes=email_codes.CODE_TTL // 60, site_url=site_url)
    return email


async def reset_password(db: Store, email: str, code: str, new: str, confirm: str) -> Any:
    """Check the code and set the new password; returns the user row."""
    email = clean_email(email)
    check_new_password(new, email, "new_password")
    if new != confirm:
        raise SiteAccountError("the two new passwords differ", "confirm_password")
    user = await db.fetch_one("user_by_email", {"email": email})
    if user is None or user["status"] != "active":
        raise code_error(email_codes.CodeError(email_codes.CodeProblem.MISSING))
    try:
        await email_codes.check_code(db, email, RESET, code)
    except email_codes.CodeError as exc:
        raise code_error(exc) from None
    password_hash = await asyncio.to_thread(hash_password, new)
    await db.execute("site_user_set_password",
                     {"id": user["id"], "password_hash": password_hash, "now": time.time()})
    return await db.fetch_one("user_by_id", {"id": user["id"]})


async def request_email_change(db: Store, mailer: Mailer, user_id: int, new_email: str,
                               site_url: str) -> str:
    """Send a confirmation code to the new address; returns it cleaned."""
    new_email = clean_email(new_email)
    user = await db.fetch_one("user_by_id", {"id": user_id})
    if user is None:
        raise SiteAccountError("this account no longer exists")
    if new_email == user["email"]:
        raise SiteAccountError("this is already your e-mail address", "new_email")
    if await db.fetch_one("user_by_email", {"email": new_email}) is not None:
        raise SiteAccountError("another account uses this e-mail address", "new_email")
    wait = await email_codes.seconds_until_resend(db, new_email, change_purpose(user_id))
    if wait:
        raise SiteAccountError("a code was just sent; you can ask again in %(wait)d s",
                               "new_email", retry_after=wait, wait=wait)
    code = await email_codes.issue_code(db, new_email, change_purpose(user_id))
    await mailer.send_template("change_email_code", new_email, code=code,
                               expires_at=time.time() + email_codes.CODE_TTL,
                               minutes=email_codes.CODE_TTL // 60, site_url=site_url)
    return new_email


async def confirm_email_change(db: Store, mailer: Mailer, user_id: int, new_email: str,
                               code: str, site_url: str) -> str:
    """Check the code sent to `new_email`, then move the account to it."""
    new_email = clean_email(new_email)
    user = await db.fetch_one("user_by_id", {"id": user_id})
    if user is None:
        raise SiteAccountError("this account no longer exists")
    try:
        await email_codes.check_code(db, new_email, change_purpose(user_id), code)
    except email_codes.CodeError as exc:
        raise code_error(exc) from None
    if not await db.execute("site_user_set_email", {"id": user_id, "email": new_email,
                                                    "now": time.time()}):
        raise SiteAccountError("another account uses this e-mail address", "new_email")
    await mailer.send_template("email_changed", user["email"], new_email=new_email,
                               site_url=site_url)
    return new_email
