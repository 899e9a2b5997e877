"""Render pages and fragments, redirect after a post, read forms: the handlers' shared verbs."""

from __future__ import annotations

from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import STORAGE_KEY, get_session

from gateway.config import CONFIG
from gateway.forwarding import client_address
from gateway.store.base import DATABASE, Store
from web.csrf import csrf_token
from web.site import SITE, SiteServices, page_context

NO_STORE = {"Cache-Control": "no-store"}


def db_of(request: web.Request) -> Store:
    return request.app[DATABASE]


def site_of(request: web.Request) -> SiteServices:
    return request.app[SITE]


def public_url(request: web.Request) -> str:
    return request.app[CONFIG].public_url


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def htmx_target(request: web.Request) -> str:
    return request.headers.get("HX-Target", "") if is_htmx(request) else ""


async def render(request: web.Request, template: str, context: dict[str, Any] | None = None,
                 *, status: int = 200, forms: bool = False,
                 headers: dict[str, str] | None = None) -> web.Response:
    """Render a page or fragment. `forms=True` makes sure the session has a CSRF token
    (and so a cookie) before the template writes it into its forms."""
    ctx = {**await page_context(request), "flash": await take_flash(request),
           **(context or {})}
    if forms:
        ctx["csrf_token"] = await csrf_token(request)
    response = aiohttp_jinja2.render_template(template, request, ctx, status=status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


async def flash(request: web.Request, message: str) -> None:
    """A one-line notice shown on the next page this browser renders."""
    (await get_session(request))["flash"] = message


async def take_flash(request: web.Request) -> str:
    if STORAGE_KEY not in request:
        return ""
    session = await get_session(request)
    message = session.pop("flash", "") if "flash" in session else ""
    return message if isinstance(message, str) else ""


def redirect(location: str) -> NoReturn:
    """303 See Other: the browser follows with a GET (post/redirect/get)."""
    raise web.HTTPSeeOther(location)


def htmx_redirect(request: web.Request, location: str) -> web.Response:
    """For an htmx request a full-page navigation; for a plain form post a 303."""
    if is_htmx(request):
        return web.Response(status=204, headers={"HX-Redirect": location})
    redirect(location)


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """Only a path on this site: no scheme, no host, no `//evil.example` or backslashes."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in value):
        return default
    return value


async def form_data(request: web.Request) -> dict[str, str]:
    """The posted form (or JSON object) as strings; files and nested values are dropped."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v if isinstance(v, str) else str(v) for k, v in data.items()
                if isinstance(v, str | int | float | bool)}
    posted = await request.post()
    return {k: v for k, v in posted.items() if isinstance(v, str)}


def client_ip(request: web.Request) -> str:
    """The client's address for throttles and the audit log: the peer, or what a trusted
    reverse proxy forwarded (`[server] trusted_proxies`, gateway/forwarding.py)."""
    return client_address(request)


def int_param(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        number = default
    return min(max(number, low), high)
