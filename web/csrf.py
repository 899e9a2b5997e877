"""CSRF tokens: one per session, required on every state-changing request to the site.

The token lives in the encrypted session cookie. A POST/PUT/PATCH/DELETE must echo it in
the `csrf_token` form field or the `X-CSRF-Token` header (the base template makes htmx send
the header on every request via `hx-headers` on <body>). Callbacks that other servers post
to (Alipay's notify URL /api/payment/notify, Google's form_post sign-in) cannot know a
token; they verify themselves by signature and are listed with `exempt_from_csrf`.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web
from aiohttp_session import get_session

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

CSRF_EXEMPT = web.AppKey("csrf_exempt_prefixes", list[str])
DEFAULT_EXEMPT = ["/api/payment/notify"]


class CsrfError(Exception):
    """The request changes state but did not carry this session's token."""


def exempt_from_csrf(app: web.Application, path_prefix: str) -> None:
    """Let requests under `path_prefix` through without a token (they must verify
    themselves, e.g. by a signature). Call before the app starts."""
    app.setdefault(CSRF_EXEMPT, list(DEFAULT_EXEMPT)).append(path_prefix)


def is_exempt(request: web.Request) -> bool:
    prefixes = request.app.get(CSRF_EXEMPT, DEFAULT_EXEMPT)
    return any(request.path.startswith(p) for p in prefixes)


async def csrf_token(request: web.Request) -> str:
    """This session's token, created (and the cookie set) on first use."""
    session = await get_session(request)
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


async def check_csrf(request: web.Request) -> None:
    """Raise `CsrfError` unless a state-changing request carries the session's token."""
    if request.method in SAFE_METHODS or is_exempt(request):
        return
    expected = (await get_session(request)).get("csrf")
    supplied = request.headers.get(CSRF_HEADER, "")
    if not supplied and request.content_type in FORM_TYPES:
        value = (await request.post()).get(CSRF_FIELD, "")
        supplied = value if isinstance(value, str) else ""
    if not isinstance(expected, str) or not expected or not supplied:
        raise CsrfError("this form has expired or did not come from this site; "
                        "reload the page and try again")
    if not hmac.compare_digest(expected.encode(), supplied.encode()):
        raise CsrfError("this form has expired or did not come from this site; "
                        "reload the page and try again")
