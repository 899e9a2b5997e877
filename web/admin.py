"""The operator's pages: overview, users (search, filter, inline changes), costs, outbox, audit."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.accounts.users import AccountError
from gateway.config import CONFIG
from gateway.events import USER_EVENTS, UserChanged
from gateway.reports import admin, catalog
from gateway.reports.health import health_snapshot
from web.guards import require_admin
from web.i18n import _, translated
from web.responses import (
    client_ip,
    db_of,
    flash,
    form_data,
    htmx_target,
    int_param,
    is_htmx,
    redirect,
    render,
    safe_next,
)


async def overview_context(request: web.Request, parts: tuple[str, ...]) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    if "stats" in parts:
        ctx["stats"] = await admin.platform_stats(db_of(request))
    if "health" in parts:
        ctx["health"] = health_snapshot(request.app)
    return ctx


async def overview_page(request: web.Request) -> web.Response:
    await require_admin(request)
    ctx = await overview_context(request, ("stats", "health"))
    ctx["audit"], _, _ = await admin.audit_entries(db_of(request), 1, 8)
    return await render(request, "pages/admin/overview.html", ctx)


async def overview_fragment(request: web.Request) -> web.Response:
    await require_admin(request)
    name = request.match_info["name"]
    templates = {"stats": "partials/admin_stats.html", "health": "partials/admin_health.html"}
    if name not in templates:
        raise web.HTTPNotFound()
    return await render(request, templates[name], await overview_context(request, (name,)))


def _user_filter(query: Any) -> admin.UserFilter:
    return admin.UserFilter(query=query.get("q", "")[:200], plan=query.get("plan", ""),
                            status=query.get("status", ""),
                            page=int_param(query.get("page"), 1, 1, 1_000_000))


def _page_link(f: admin.UserFilter, page: int) -> str:
    params = {k: v for k, v in (("q", f.query), ("plan", f.plan), ("status", f.status))
              if v}
    if page > 1:
        params["page"] = str(page)
    return "/admin/users" + (f"?{urlencode(params)}" if params else "")


async def users_page(request: web.Request) -> web.Response:
    await require_admin(request)
    result = await admin.search_users(db_of(request), _user_filter(request.query))
    ctx = {
        "result": result, "plans": await catalog.plans(db_of(request)),
        "statuses": admin.STATUSES, "page_link": _page_link,
        "back": _page_link(result.filter, result.page),
    }
    if htmx_target(request) == "users-table":
        return await render(request, "partials/admin_users_table.html", ctx, forms=True)
    return await render(request, "pages/admin/users.html", ctx, forms=True)


async def _user_action(request: web.Request, field: str) -> web.Response:
    actor = await require_admin(request)
    form = await form_data(request)
    try:
        user_id = int(request.match_info["user_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    error = ""
    db = db_of(request)
    if (field == "status" and form.get("status") == "suspended" and not is_htmx(request)
            and form.get("confirm") != "1"):
        # Without JavaScript there is no confirm dialog: ask on a page of its own first.
        try:
            row = await admin.user_row(db, user_id)
        except AccountError:
            raise web.HTTPNotFound() from None
        return await render(request, "pages/admin/confirm_suspend.html", {
            "u": row, "back": safe_next(form.get("back"), "/admin/users")}, forms=True)
    try:
        if field == "status":
            await admin.change_status(db, actor, user_id, form.get("status", ""),
                                      client_ip(request))
        else:
            await admin.change_plan(db, actor, user_id, form.get("plan", ""), client_ip(request))
        await request.app[USER_EVENTS].publish(UserChanged(user_id))  # every instance, now
    except AccountError as exc:
        error = translated(exc)
    if is_htmx(request):
        try:
            row = await admin.user_row(db, user_id)
        except AccountError:
            raise web.HTTPNotFound() from None
        return await render(request, "partials/admin_user_row.html", {
            "u": row, "plans": await catalog.plans(db), "row_error": error,
            "row_saved": "" if error else _("Saved"), "back": safe_next(form.get("back"),
                                                                      "/admin/users")},
            status=422 if error else 200, forms=True)
    await flash(request, _("Not changed: %(error)s", error=error) if error else _("Saved."))
    redirect(safe_next(form.get("back"), "/admin/users"))


async def user_status(request: web.Request) -> web.Response:
    return await _user_action(request, "status")


async def user_plan(request: web.Request) -> web.Response:
    return await _user_action(request, "plan")


async def costs_page(request: web.Request) -> web.Response:
    await require_admin(request)
    providers = [p.name for p in request.app[CONFIG].providers]
    report = await admin.cost_report(db_of(request), providers)
    return await render(request, "pages/admin/costs.html", {"report": report})


async def outbox_page(request: web.Request) -> web.Response:
    await require_admin(request)
    mails = await admin.outbox(db_of(request))
    return await render(request, "pages/admin/outbox.html", {
        "mails": mails, "smtp": bool(request.app[CONFIG].mail.smtp_host)})


async def outbox_message_page(request: web.Request) -> web.Response:
    await require_admin(request)
    try:
        message = await admin.outbox_message(db_of(request), int(request.match_info["mail_id"]))
    except ValueError:
        message = None
    if message is None:
        raise web.HTTPNotFound()
    return await render(request, "pages/admin/outbox_message.html", {"mail": message})


def _audit_link(f: admin.AuditFilter, page: int) -> str:
    params = f.query()
    if page > 1:
        params["page"] = str(page)
    return "/admin/audit" + (f"?{urlencode(params)}" if params else "")


async def audit_page(request: web.Request) -> web.Response:
    """The log with its filters: a plain GET form (no JavaScript needed); with HTMX the
    form swaps only the results and keeps the URL in step."""
    await require_admin(request)
    f = admin.AuditFilter.from_query(request.query)
    entries, page, pages = await admin.audit_entries(
        db_of(request), int_param(request.query.get("page"), 1, 1, 1_000_000), f=f)
    ctx = {"entries": entries, "page": page, "pages": pages, "filter": f,
           "actions": await admin.audit_actions(db_of(request)), "audit_link": _audit_link}
    if htmx_target(request) == "audit-results":
        return await render(request, "partials/audit_results.html", ctx)
    return await render(request, "pages/admin/audit.html", ctx)
