"""JSON endpoints for scripts: /api/auth/*, /api/dashboard/*, /api/admin/* (session cookie).

Same services and rules as the pages. Writes need the CSRF token: `GET /api/auth/csrf`
returns it (and sets the session cookie); send it back as `X-CSRF-Token`. Errors use the
Anthropic error shape like the rest of the API.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web
from aiohttp_session import get_session

from gateway.accounts import signup as site_accounts
from gateway.accounts.signup import SiteAccountError
from gateway.accounts.users import AccountError
from gateway.config import CONFIG
from gateway.errors import ApiError
from gateway.events import USER_EVENTS, UserChanged
from gateway.reports import admin, dashboard, margin
from gateway.reports.health import health_snapshot
from web.csrf import csrf_token
from web.guards import api_admin, api_user
from web.responses import client_ip, db_of, form_data, int_param, public_url, site_of
from web.sessions import SiteUser, sign_in, sign_out, site_user


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=_default), status=status,
                        content_type="application/json", headers={"Cache-Control": "no-store"})


def _invalid(exc: SiteAccountError | AccountError) -> ApiError:
    message = str(exc)
    field = getattr(exc, "field", "")
    return ApiError("invalid_request_error", f"{field}: {message}" if field else message)


def _me(user: SiteUser) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name, "is_admin": user.is_admin}


# --- /api/auth -----------------------------------------------------------------------

async def auth_csrf(request: web.Request) -> web.Response:
    return reply({"csrf_token": await csrf_token(request)})


async def auth_me(request: web.Request) -> web.Response:
    return reply(_me(await api_user(request)))


async def auth_register(request: web.Request) -> web.Response:
    if not request.app[CONFIG].web.registration:
        raise ApiError("permission_error", "registration is closed on this server")
    form = await form_data(request)
    try:
        registration = await site_accounts.register(
            db_of(request), site_of(request).mailer, form.get("email", ""),
            form.get("password", ""), form.get("name", ""), public_url(request))
    except SiteAccountError as exc:
        raise _invalid(exc) from None
    # like the form: only this cookie's holder keeps the password when verifying
    (await get_session(request))["reg_stamp"] = registration.stamp
    return reply({"email": registration.email,
                  "next": "POST /api/auth/verify with email and code"}, 202)


async def auth_verify(request: web.Request) -> web.Response:
    form = await form_data(request)
    stamp = (await get_session(request)).get("reg_stamp")
    try:
        verified = await site_accounts.verify(db_of(request), form.get("email", ""),
                                              form.get("code", ""),
                                              stamp if isinstance(stamp, str) else "")
    except SiteAccountError as exc:
        raise _invalid(exc) from None
    session = await sign_in(request, verified.user)
    return reply({"user": _me(site_user(verified.user)), "csrf_token": session["csrf"],
                  "password_kept": verified.password_kept})


async def auth_resend(request: web.Request) -> web.Response:
    form = await form_data(request)
    try:
        await site_accounts.resend_code(db_of(request), site_of(request).mailer,
                                        form.get("email", ""), public_url(request))
    except SiteAccountError as exc:
        raise ApiError("rate_limit_error", str(exc),
                       headers={"retry-after": str(exc.retry_after or 60)}) from None
    return reply({"sent": True}, 202)


async def auth_login(request: web.Request) -> web.Response:
    form = await form_data(request)
    try:
        result = await site_accounts.log_in(db_of(request), site_of(request).throttle,
                                            form.get("email", ""), form.get("password", ""),
                                            client_ip(request))
    except SiteAccountError as exc:
        if exc.retry_after:
            raise ApiError("rate_limit_error", str(exc),
                           headers={"retry-after": str(exc.retry_after)}) from None
        raise ApiError("authentication_error", str(exc)) from None
    if result.needs_verification:
        raise ApiError("permission_error",
                       "e-mail address not verified: POST /api/auth/verify with the code")
    session = await sign_in(request, result.user)
    return reply({"user": _me(site_user(result.user)), "csrf_token": session["csrf"]})


async def auth_logout(request: web.Request) -> web.Response:
    await sign_out(request)
    return reply({"signed_out": True})


# --- /api/dashboard ------------------------------------------------------------------

async def dash_overview(request: web.Request) -> web.Response:
    user = await api_user(request)
    ov = await dashboard.overview(db_of(request), user.id)
    return reply({**dataclasses.asdict(ov), "quota_percent": ov.quota_percent,
                  "tokens_left": ov.tokens_left})


async def dash_usage(request: web.Request) -> web.Response:
    user = await api_user(request)
    days = int_param(request.query.get("days"), 30, 1, 90)
    series = await dashboard.daily_usage(db_of(request), user.id, days)
    return reply({"days": [{**dataclasses.asdict(d), "tokens": d.tokens} for d in series]})


async def dash_requests(request: web.Request) -> web.Response:
    user = await api_user(request)
    limit = int_param(request.query.get("limit"), 20, 1, 200)
    return reply({"requests": await dashboard.recent_requests(db_of(request), user.id, limit)})


async def dash_keys(request: web.Request) -> web.Response:
    user = await api_user(request)
    return reply({"keys": await dashboard.list_keys(db_of(request), user.id)})


async def dash_create_key(request: web.Request) -> web.Response:
    user = await api_user(request)
    form = await form_data(request)
    try:
        key = await dashboard.add_key(db_of(request), user.id, user.email, form.get("name", ""))
    except AccountError as exc:
        raise _invalid(exc) from None
    return reply({"id": key.key_id, "key": key.raw, "prefix": key.prefix,
                  "note": "shown once: store it now"}, 201)


async def dash_revoke_key(request: web.Request) -> web.Response:
    user = await api_user(request)
    try:
        await dashboard.revoke_own_key(db_of(request), user.id,
                                       int(request.match_info["key_id"]))
    except (ValueError, AccountError):
        raise ApiError("not_found_error", "no such active key") from None
    await request.app[USER_EVENTS].publish(UserChanged(user.id))  # every instance, now
    return reply({"revoked": True})


async def dash_orders(request: web.Request) -> web.Response:
    user = await api_user(request)
    return reply({"orders": await dashboard.list_orders(db_of(request), user.id)})


# --- /api/admin ----------------------------------------------------------------------

async def admin_stats(request: web.Request) -> web.Response:
    await api_admin(request)
    return reply(dataclasses.asdict(await admin.platform_stats(db_of(request))))


async def admin_users(request: web.Request) -> web.Response:
    await api_admin(request)
    q = request.query
    page = await admin.search_users(db_of(request), admin.UserFilter(
        query=q.get("q", ""), plan=q.get("plan", ""), status=q.get("status", ""),
        page=int_param(q.get("page"), 1, 1, 1_000_000)))
    return reply({"users": page.users, "total": page.total, "page": page.page,
                  "pages": page.pages})


async def admin_update_user(request: web.Request) -> web.Response:
    actor = await api_admin(request)
    form = await form_data(request)
    try:
        user_id = int(request.match_info["user_id"])
        if "status" in form:
            await admin.change_status(db_of(request), actor, user_id, form["status"],
                                      client_ip(request))
        if "plan" in form:
            await admin.change_plan(db_of(request), actor, user_id, form["plan"],
                                    client_ip(request))
        await request.app[USER_EVENTS].publish(UserChanged(user_id))  # every instance, now
        return reply(await admin.user_row(db_of(request), user_id))
    except ValueError:
        raise ApiError("not_found_error", "no such user") from None
    except AccountError as exc:
        raise _invalid(exc) from None


async def admin_costs(request: web.Request) -> web.Response:
    await api_admin(request)
    providers = [p.name for p in request.app[CONFIG].providers]
    report = await admin.cost_report(db_of(request), providers,
                                     int_param(request.query.get("days"), 30, 1, 90))
    return reply(dataclasses.asdict(report))


async def admin_margin(request: web.Request) -> web.Response:
    """The margin page as JSON: ?days=N (1-366, default 30); amounts are decimal strings."""
    await api_admin(request)
    report = await margin.margin_report(db_of(request),
                                        dict(request.app[CONFIG].site.exchange_rates),
                                        int_param(request.query.get("days"), 30, 1, 366))
    return reply(margin.report_json(report))


async def admin_health(request: web.Request) -> web.Response:
    await api_admin(request)
    return reply(health_snapshot(request.app))


async def admin_outbox(request: web.Request) -> web.Response:
    await api_admin(request)
    limit = int_param(request.query.get("limit"), 50, 1, 500)
    return reply({"mail": await admin.outbox(db_of(request), limit)})


async def admin_audit(request: web.Request) -> web.Response:
    await api_admin(request)
    entries, page, pages = await admin.audit_entries(
        db_of(request), int_param(request.query.get("page"), 1, 1, 1_000_000),
        f=admin.AuditFilter.from_query(request.query))
    return reply({"entries": entries, "page": page, "pages": pages})
