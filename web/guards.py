"""Who may see what: signed-in pages redirect to /login, admin pages answer 403."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from aiohttp import web

from gateway.errors import ApiError
from web.i18n import N_
from web.responses import db_of, safe_next
from web.sessions import SiteUser, signed_in_user


async def current_user(request: web.Request) -> SiteUser | None:
    db = db_of(request)
    return await signed_in_user(request, lambda uid: db.fetch_one("user_by_id", {"id": uid}))


def login_url(request: web.Request) -> str:
    """/login?next=<the page the visitor was on> (for htmx, the page, not the fragment)."""
    here = request.path_qs
    if request.headers.get("HX-Request") == "true":
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        here = safe_next(current.path + (f"?{current.query}" if current.query else ""), "/")
    return "/login?next=" + quote(here, safe="/")


async def require_user(request: web.Request) -> SiteUser:
    """The signed-in user; a signed-out visitor goes to /login?next=<this page>."""
    user = await current_user(request)
    if user is None:
        if request.headers.get("HX-Request") == "true":  # htmx: navigate the whole page
            raise web.HTTPNoContent(headers={"HX-Redirect": login_url(request)})
        raise web.HTTPFound(login_url(request))
    return user


async def require_admin(request: web.Request) -> SiteUser:
    user = await require_user(request)
    if not user.is_admin:
        # the reason is the status line (ASCII); the error page shows it translated
        raise web.HTTPForbidden(reason=N_("Administrators only"))
    return user


async def api_user(request: web.Request) -> SiteUser:
    """For /api/*: 401 in the Anthropic error shape instead of a redirect."""
    user = await current_user(request)
    if user is None:
        raise ApiError("authentication_error",
                       "sign in first: POST /api/auth/login (session cookie)")
    return user


async def api_admin(request: web.Request) -> SiteUser:
    user = await api_user(request)
    if not user.is_admin:
        raise ApiError("permission_error", "administrators only")
    return user
