"""Encrypted cookie sessions: the secret, the cookie storage, and who is signed in.

The session is an aiohttp-session `EncryptedCookieStorage` cookie (Fernet: AES + HMAC), so
the server keeps no session table. The secret comes from `[web] session_secret` (or
`LLMAPI_SESSION_SECRET`), else it is generated once into `<data folder>/session.key` with
0600 permissions. The cookie is HttpOnly, SameSite=Lax, and Secure when the public URL is
https.

A session names its user and carries the user's session epoch (`users.session_epoch`) and
a stamp of the password hash, both checked against the database on every request. The
cookie lives in the browser, so ending a session means making its cookie worthless: sign-
out, a password change or reset, a suspension (CLI or admin page) and account deletion add
one to the epoch, and every cookie issued before stops working at once, a copied one too.
The epoch is per user, so signing out in one browser signs out all of them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.accounts.users import end_sessions
from gateway.config import Config
from gateway.store.base import DATABASE

log = logging.getLogger("llmapi.sessions")

SESSION_COOKIE = "llmapi_session"
SECRET_FILE = "session.key"


def load_or_create_secret(config: Config) -> bytes:
    """The 32-byte site secret: from the config, else from (or newly into) the data folder."""
    if config.web.session_secret:
        return base64.urlsafe_b64decode(config.web.session_secret)
    path = config.data_dir / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # Written whole under a private name, then linked into place: a second process starting
    # at the same moment sees either no file or the complete key, never an empty one.
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    try:
        os.link(tmp, path)
    except FileExistsError:  # another process won the race: use its key
        return _read_secret(path)
    finally:
        tmp.unlink()
    log.info("generated a new session secret in %s", path)
    return base64.urlsafe_b64decode(key)


def _read_secret(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    secret = base64.urlsafe_b64decode(text)
    if len(secret) != 32:
        raise ValueError(f"{path} does not hold a 32-byte url-safe base64 key")
    return secret


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A separate 32-byte key per use of the site secret (cookies, sign-in tickets, ...)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"llmapi {purpose}".encode())
    return hkdf.derive(secret)


def fernet_for(secret: bytes, purpose: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret, purpose)))


def cookie_storage(config: Config, secret: bytes) -> EncryptedCookieStorage:
    return EncryptedCookieStorage(
        fernet_for(secret, "session cookie"), cookie_name=SESSION_COOKIE,
        max_age=config.web.session_max_age, path="/", httponly=True, samesite="Lax",
        secure=config.public_url.startswith("https://"))


@dataclass(frozen=True, slots=True)
class SiteUser:
    """The signed-in user, as pages and services need it."""

    id: int
    email: str
    name: str
    is_admin: bool
    has_password: bool
    language: str | None = None  # the site language last used (users.language)

    @property
    def display_name(self) -> str:
        return self.name or self.email


def password_stamp(password_hash: str) -> str:
    """Changes whenever the password does; never reveals anything about it."""
    return hashlib.sha256(b"llmapi session stamp:" + password_hash.encode()).hexdigest()[:16]


def site_user(row: Any) -> SiteUser:
    return SiteUser(id=row["id"], email=row["email"], name=row["name"],
                    is_admin=bool(row["is_admin"]), has_password=bool(row["password_hash"]),
                    language=row.get("language"))


_USER = web.RequestKey("site_user", SiteUser)
_USER_CHECKED = web.RequestKey("site_user_checked", bool)


async def signed_in_user(request: web.Request, load_user: Any) -> SiteUser | None:
    """The user of this request's session, or None. A session whose user is gone, no
    longer active, or whose epoch or password changed since sign-in is emptied on the way."""
    if request.get(_USER_CHECKED):
        return request.get(_USER)
    request[_USER_CHECKED] = True
    session = await get_session(request)
    user_id = session.get("uid")
    if user_id is None:
        return None
    row = await load_user(user_id)
    if (row is None or row["status"] != "active" or not row["email_verified"]
            or session.get("epoch") != row["session_epoch"]
            or session.get("stamp") != password_stamp(row["password_hash"])):
        _forget_user(session)
        return None
    user = site_user(row)
    request[_USER] = user
    return user


async def sign_in(request: web.Request, row: Any) -> Session:
    """Start a fresh session for the user (a new cookie, so a planted one is useless)."""
    keep = {k: v for k, v in (await get_session(request)).items() if k == "next"}
    session = await new_session(request)
    session.update(keep)
    session["uid"] = row["id"]
    session["stamp"] = password_stamp(row["password_hash"])
    session["epoch"] = row["session_epoch"]
    session["csrf"] = secrets.token_urlsafe(32)
    session["at"] = int(time.time())
    request[_USER] = site_user(row)
    request[_USER_CHECKED] = True
    return session


def forget_loaded_user(request: web.Request) -> None:
    """The user changed (e.g. their name): load them again for the rest of this request."""
    request.pop(_USER, None)
    request[_USER_CHECKED] = False


async def refresh_stamp(request: web.Request, row: Any) -> None:
    """Keep this browser signed in after its own password change (others are signed out):
    `row` is the user as the change left it (new password hash, new epoch)."""
    session = await get_session(request)
    session["stamp"] = password_stamp(row["password_hash"])
    session["epoch"] = row["session_epoch"]


async def sign_out(request: web.Request) -> None:
    """End every session of the signed-in user (a copy of this cookie included), then
    empty this browser's. A cookie whose epoch is already past ends nothing: holding a
    dead cookie must not let anyone sign the user out of their new sessions."""
    session = await get_session(request)
    user_id, epoch = session.get("uid"), session.get("epoch")
    if isinstance(user_id, int) and isinstance(epoch, int):
        await end_sessions(request.app[DATABASE], user_id, epoch)
    session.invalidate()
    request.pop(_USER, None)
    request[_USER_CHECKED] = True


def _forget_user(session: Session) -> None:
    for key in ("uid", "stamp", "epoch", "at"):
        session.pop(key, None)
