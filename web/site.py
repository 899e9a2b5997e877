"""Mount the web site on the gateway app: templates, sessions, CSRF, static files, routes.

`setup_site(app, config)` mounts the plumbing; `build_app` then adds `web.routes`. The API
hot path (`/v1/`, `/health`, `/metrics`) bypasses everything here: no session cookie is
read or written and no CSRF check runs there. Everything else goes through the session
middleware, then the CSRF check, then gets a strict Content-Security-Policy (every script,
style and image comes from this server; nothing loads from elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import aiohttp
import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session import STORAGE_KEY, get_session, session_middleware
from babel.dates import format_date
from cryptography.fernet import Fernet

from gateway.accounts.google import GoogleVerifier
from gateway.accounts.mail import Mailer, purge_expired
from gateway.accounts.quota_notices import QuotaNotices
from gateway.accounts.throttle import LoginThrottle
from gateway.config import CONFIG, Config
from gateway.errors import ERROR_PAGE, ApiError
from gateway.paths import GOOGLE_CALLBACK, is_api_path, is_hot_path
from gateway.reports.dashboard import change
from gateway.resources import resource_dir
from gateway.store.base import DATABASE, Store
from web import i18n
from web.blog import Post, load_posts
from web.csrf import CsrfError, check_csrf, exempt_from_csrf
from web.sessions import (
    SiteUser,
    cookie_storage,
    fernet_for,
    load_or_create_secret,
    signed_in_user,
)
from web.usage_chart import compact

log = logging.getLogger("llmapi.site")

# aiohttp-session 2.12 stores its request keys as plain strings; that is its business.
warnings.filterwarnings("ignore", category=NotAppKeyWarning, module="aiohttp_session")

TEMPLATES_DIR = resource_dir("templates")
STATIC_DIR = resource_dir("static")
BLOG_DIR = TEMPLATES_DIR / "blog"
LOCALE_DIR = TEMPLATES_DIR / "locale"


@dataclass(slots=True)
class SiteServices:
    """The site's long-lived helpers (created at start-up, closed on shutdown)."""

    mailer: Mailer
    throttle: LoginThrottle
    google: GoogleVerifier | None
    tickets: Fernet              # short-lived sign-in tickets (Google flow)
    posts: list[Post]
    quota: QuotaNotices          # the 80 % / 100 % quota e-mails (its own background task)


SITE = web.AppKey("site", SiteServices)


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'")


def add_security_headers(response: web.StreamResponse, csp: str) -> None:
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")


def setup_site(app: web.Application, config: Config) -> None:
    """Add the site (pages, /api/auth|dashboard|admin, static files) to the gateway app."""
    secret = load_or_create_secret(config)
    posts = load_posts(BLOG_DIR)
    sessions = session_middleware(cookie_storage(config, secret))
    csp = CONTENT_SECURITY_POLICY
    i18n.load_catalogues(LOCALE_DIR)
    default_language = config.site.default_language

    @web.middleware
    async def site_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_hot_path(request.path):
            return await handler(request)
        asked = i18n.normalise(request.query.get("lang"))
        i18n.set_language(request_language(request, default_language))

        async def checked(req: web.Request) -> web.StreamResponse:
            try:
                await check_csrf(req)
            except CsrfError as exc:
                if is_api_path(req.path):
                    raise ApiError("permission_error", f"CSRF token missing or wrong: {exc} "
                                   "(GET /api/auth/csrf, then send X-CSRF-Token)") from None
                raise web.HTTPForbidden(reason=i18n.N_("CSRF token missing or wrong")) from None
            try:
                response = await handler(req)
            except (web.HTTPException, ApiError) as exc:  # redirects, JSON errors
                if await is_private(req):
                    exc.headers.setdefault("Cache-Control", "no-store")
                raise
            if not response.prepared:
                add_security_headers(response, csp)
                if asked:
                    keep_language(response, asked)
                if await is_private(req):
                    response.headers.setdefault("Cache-Control", "no-store")
            return response

        return await sessions(request, checked)

    app.middlewares.append(site_middleware)
    exempt_from_csrf(app, GOOGLE_CALLBACK)

    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        filters=FILTERS, extensions=["jinja2.ext.i18n"])
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(  # type: ignore[attr-defined]
        i18n.jinja_gettext, i18n.jinja_ngettext, newstyle=True)
    env.globals.update(
        site_name="llmapi", public_url=config.public_url,
        google_enabled=config.google.enabled, registration_open=config.web.registration,
        static=_static_urls(), year=datetime.now(UTC).year, change=change)

    async def error_page(request: web.Request, status: int, message: str) -> web.Response:
        # The errors middleware sits outside this site's middleware: choose again.
        i18n.set_language(request_language(request, default_language))
        # aiohttp's default reason ("Method Not Allowed") only repeats the page's title
        standard = message == _status_phrase(status)
        context = {**await page_context(request), "status": status,
                   "message": i18n._(message) if message and not standard else ""}
        response = aiohttp_jinja2.render_template("pages/error.html", request, context,
                                                  status=status)
        add_security_headers(response, csp)
        if await is_private(request):  # it shows who is signed in
            response.headers["Cache-Control"] = "no-store"
        asked = i18n.normalise(request.query.get("lang"))
        if asked:
            keep_language(response, asked)
        return response

    app[ERROR_PAGE] = error_page
    app.router.add_static("/static/", STATIC_DIR, name="static")

    async def resources(app: web.Application) -> AsyncIterator[None]:
        db = app[DATABASE]
        timeout = aiohttp.ClientTimeout(total=10, connect=5)
        http = aiohttp.ClientSession(timeout=timeout) if config.google.enabled else None
        mailer = Mailer(config.mail, db, TEMPLATES_DIR, i18n.jinja_gettext,
                        i18n.jinja_ngettext)
        quota = QuotaNotices(db, mailer, config.public_url, default_language, i18n.using)
        app[SITE] = SiteServices(
            mailer=mailer,
            throttle=LoginThrottle.from_config(db, config.web),
            google=GoogleVerifier(config.google, http) if http is not None else None,
            tickets=fernet_for(secret, "sign-in ticket"),
            posts=posts, quota=quota)
        watcher = asyncio.create_task(quota.run(), name="quota-notices")
        sweeper = asyncio.create_task(sweep_outbox(db), name="outbox-sweeper")
        try:
            yield
        finally:
            for task in (watcher, sweeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if http is not None:
                await http.close()

    app.cleanup_ctx.append(resources)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


OUTBOX_SWEEP_INTERVAL = 60.0  # seconds an expired code may stay in the outbox unread


async def sweep_outbox(db: Store) -> None:
    """Codes leave the outbox when they expire even if nobody sends or reads mail."""
    while True:
        try:
            await purge_expired(db)
        except Exception:  # a busy or broken database: say so, try again next round
            log.exception("purging expired codes from the outbox failed")
        await asyncio.sleep(OUTBOX_SWEEP_INTERVAL)


async def is_private(request: web.Request) -> bool:
    """Does this answer depend on who asks? Then no cache may keep it (`no-store`): every
    JSON answer under /api/ (auth, dashboard, admin, payment), and every page or fragment
    for a browser whose session holds anything (signed in, or a form's CSRF token). Public
    pages for a visitor without a session, and static files, stay cacheable."""
    if request.path.startswith("/api/"):
        return True
    if request.path.startswith("/static/") or STORAGE_KEY not in request:
        return False
    return bool(await get_session(request))


def request_language(request: web.Request, default: str) -> str:
    return i18n.choose(request.query.get("lang"), request.cookies.get(i18n.COOKIE),
                       request.headers.get("Accept-Language"), default)


def keep_language(response: web.StreamResponse, language: str) -> None:
    """Remember a `?lang=` choice for a year (Lax and HttpOnly like the session cookie)."""
    response.set_cookie(i18n.COOKIE, language, max_age=i18n.COOKIE_MAX_AGE, path="/",
                        samesite="Lax", httponly=True)
    response.headers.add("Vary", "Cookie, Accept-Language")


def switch_links(request: web.Request) -> list[tuple[str, str, str]]:
    """(language, its own name, this page's URL in it) for the language switch."""
    links = []
    for language in i18n.LANGUAGES:
        query = {k: v for k, v in request.query.items() if k != "lang"}
        query["lang"] = language
        links.append((language, i18n.LANGUAGE_NAMES[language],
                      str(request.rel_url.with_query(query))))
    return links


async def page_context(request: web.Request) -> dict[str, Any]:
    """What every page template may use: the signed-in user, the CSRF token if the session
    has one (handlers that render forms make sure it does), the canonical URL. Computed at
    render time (not in a middleware), so the API hot path never pays for it and a page
    rendered right after signing in sees the new user."""
    user: SiteUser | None = None
    csrf = ""
    if STORAGE_KEY in request:
        db = request.app[DATABASE]
        user = await signed_in_user(request, lambda uid: db.fetch_one("user_by_id", {"id": uid}))
        token = (await get_session(request)).get("csrf")
        csrf = token if isinstance(token, str) else ""
    config = request.app[CONFIG]
    language = i18n.current_language()
    if user is not None and user.language != language:
        # Mail sent outside a request (quota warnings) uses the language last read here;
        # written only when it changed, so a page view costs no write.
        await request.app[DATABASE].execute("user_set_language",
                                            {"id": user.id, "language": language})
    return {"user": user, "csrf_token": csrf, "path": request.path,
            "canonical": config.public_url + request.path, "flash": "",
            "lang": language, "languages": switch_links(request),
            "og_locale": "zh_CN" if language == "zh-CN" else "en_US"}


def _static_urls() -> dict[str, str]:
    """`static['css/site.css']` -> `/static/css/site.css?v=<content hash>` (cache busting)."""
    urls: dict[str, str] = {}
    for file in sorted(STATIC_DIR.rglob("*")):
        if file.is_file():
            rel = file.relative_to(STATIC_DIR).as_posix()
            digest = hashlib.sha256(file.read_bytes()).hexdigest()[:10]
            urls[rel] = f"/static/{rel}?v={digest}"
    return urls


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _datetime(ts: float | None) -> str:
    moment = _utc(ts)
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _date(ts: float | None) -> str:
    moment = _utc(ts)
    return "—" if moment is None else moment.strftime("%Y-%m-%d")


def _iso(ts: float | None) -> str:
    moment = _utc(ts)
    return "" if moment is None else moment.isoformat(timespec="seconds")


def _ago(ts: float | None) -> str:
    if ts is None:
        return i18n._("never")
    seconds = max(0, int(datetime.now(UTC).timestamp() - ts))
    if seconds >= 86400:
        return i18n.ngettext("%(num)d day ago", "%(num)d days ago", seconds // 86400)
    if seconds >= 3600:
        return i18n.ngettext("%(num)d hour ago", "%(num)d hours ago", seconds // 3600)
    if seconds >= 60:
        return i18n.ngettext("%(num)d minute ago", "%(num)d minutes ago", seconds // 60)
    return i18n._("just now")


def _long_date(value: Any) -> str:
    """A date as people write it: "March 4, 2026" or "2026年3月4日"."""
    locale = "zh_CN" if i18n.current_language() == "zh-CN" else "en_US"
    return format_date(value, format="long", locale=locale)


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


FILTERS: dict[str, Any] = {
    "datetime": _datetime, "date": _date, "iso": _iso, "ago": _ago, "number": _number,
    "compact": compact, "long_date": _long_date,
}
