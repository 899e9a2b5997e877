"""The signed-in user's pages: dashboard (with its HTMX fragments), keys, settings, orders."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp_session import get_session

from gateway.accounts import recovery
from gateway.accounts import signup as site_accounts
from gateway.accounts.signup import SiteAccountError
from gateway.accounts.users import AccountError, NewKey
from gateway.events import USER_EVENTS, UserChanged
from gateway.reports import dashboard
from web.guards import require_user
from web.i18n import _, translated
from web.responses import (
    NO_STORE,
    db_of,
    flash,
    form_data,
    htmx_redirect,
    int_param,
    is_htmx,
    public_url,
    redirect,
    render,
    site_of,
)
from web.sessions import SiteUser, forget_loaded_user, refresh_stamp, sign_out
from web.usage_chart import layout_chart

FRAGMENTS = {
    "overview": "partials/overview.html",
    "chart": "partials/usage_chart.html",
    "requests": "partials/recent_requests.html",
    "keys": "partials/keys.html",
}
CHART_RANGES = (7, 30)


async def _dashboard_context(request: web.Request, user: SiteUser,
                             parts: tuple[str, ...] = tuple(FRAGMENTS)) -> dict[str, Any]:
    db = db_of(request)
    ctx: dict[str, Any] = {"base_url": public_url(request)}
    if "overview" in parts or "keys" in parts:
        ctx["overview"] = await dashboard.overview(db, user.id)
    if "chart" in parts:
        days = int_param(request.query.get("days"), 30, 7, 30)
        days = days if days in CHART_RANGES else 30
        ctx["chart"] = layout_chart(await dashboard.daily_usage(db, user.id, days))
        ctx["days"] = days
        ctx["chart_ranges"] = CHART_RANGES
    if "requests" in parts:
        ctx["requests"] = await dashboard.recent_requests(db, user.id)
    if "keys" in parts:
        ctx["keys"] = await dashboard.list_keys(db, user.id)
        ctx.setdefault("new_key", None)
        ctx.setdefault("key_error", "")
    return ctx


async def dashboard_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    ctx = await _dashboard_context(request, user)
    return await render(request, "pages/dashboard.html", ctx, forms=True)


async def dashboard_fragment(request: web.Request) -> web.Response:
    user = await require_user(request)
    name = request.match_info["name"]
    if name not in FRAGMENTS:
        raise web.HTTPNotFound()
    ctx = await _dashboard_context(request, user, (name,))
    return await render(request, FRAGMENTS[name], ctx, forms=True)


async def create_key(request: web.Request) -> web.Response:
    user = await require_user(request)
    form = await form_data(request)
    new_key: NewKey | None = None
    error = ""
    try:
        new_key = await dashboard.add_key(db_of(request), user.id, user.email,
                                          form.get("name", ""))
    except AccountError as exc:
        error = translated(exc)
    status = 422 if error else 201
    if is_htmx(request):
        ctx = await _dashboard_context(request, user, ("keys",))
        ctx.update(new_key=new_key, key_error=error)
        return await render(request, "partials/keys.html", ctx, status=status, forms=True,
                            headers={**NO_STORE, "HX-Trigger": "keys-changed"})
    # Without JavaScript the whole page comes back with the key shown once (no redirect:
    # the raw key must not travel through a URL or the session cookie).
    ctx = await _dashboard_context(request, user)
    ctx.update(new_key=new_key, key_error=error)
    return await render(request, "pages/dashboard.html", ctx, status=status, forms=True,
                        headers=NO_STORE)


async def revoke_key(request: web.Request) -> web.Response:
    user = await require_user(request)
    try:
        key_id = int(request.match_info["key_id"])
        await dashboard.revoke_own_key(db_of(request), user.id, key_id)
    except (ValueError, AccountError):
        raise web.HTTPNotFound(reason=_("No such key")) from None
    await request.app[USER_EVENTS].publish(UserChanged(user.id))  # every instance, now
    if is_htmx(request):
        ctx = await _dashboard_context(request, user, ("keys",))
        ctx["revoked"] = True  # the notice takes the focus the removed button had
        return await render(request, "partials/keys.html", ctx, forms=True,
                            headers={"HX-Trigger": "keys-changed"})
    await flash(request, _("The key was revoked; requests using it now fail."))
    redirect("/dashboard#keys")


async def _settings_extra(request: web.Request, user: SiteUser) -> dict[str, Any]:
    """What the settings partials need beyond the user: a pending e-mail change, and the
    paid time a deletion would give up (so the page can warn before it happens)."""
    session = await get_session(request)
    pending = session.get("pending_email")
    sub = await db_of(request).fetch_one("dash_plan_of_user", {"user_id": user.id})
    paid_left = None
    now = time.time()
    if sub is not None and sub["paid_until"] and sub["paid_until"] > now:
        paid_left = {"plan": sub["plan"], "paid_until": sub["paid_until"],
                     "days": max(1, int((sub["paid_until"] - now) // 86400))}
    return {"pending_email": pending if isinstance(pending, str) else "",
            "paid_left": paid_left}


async def settings_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    return await render(request, "pages/settings.html", {
        "errors": {}, "saved": "", **await _settings_extra(request, user)}, forms=True)


async def _settings_reply(request: web.Request, user: SiteUser, partial: str,
                          errors: dict[str, str], saved: str) -> web.Response:
    status = 422 if errors else 200
    extra = await _settings_extra(request, user)
    if is_htmx(request):
        return await render(request, partial, {"errors": errors, "saved": saved, **extra},
                            status=status, forms=True)
    if not errors:
        await flash(request, saved)
        redirect("/settings")
    return await render(request, "pages/settings.html",
                        {"errors": errors, "saved": "", **extra}, status=status, forms=True)


async def change_email(request: web.Request) -> web.Response:
    """Step one of an e-mail change: a code to the new address."""
    user = await require_user(request)
    form = await form_data(request)
    try:
        new_email = await recovery.request_email_change(
            db_of(request), site_of(request).mailer, user.id, form.get("new_email", ""),
            public_url(request))
    except SiteAccountError as exc:
        return await _settings_reply(request, user, "partials/settings_email.html",
                                     {exc.field or "new_email": translated(exc)}, "")
    (await get_session(request))["pending_email"] = new_email
    return await _settings_reply(request, user, "partials/settings_email.html", {},
                                 _("A code is on its way to %(email)s.", email=new_email))


async def confirm_email(request: web.Request) -> web.Response:
    """Step two: the code from the new address moves the account there."""
    user = await require_user(request)
    form = await form_data(request)
    session = await get_session(request)
    pending = session.get("pending_email")
    new_email = pending if isinstance(pending, str) and pending else form.get("new_email", "")
    try:
        await recovery.confirm_email_change(db_of(request), site_of(request).mailer, user.id,
                                            new_email, form.get("code", ""),
                                            public_url(request))
    except SiteAccountError as exc:
        return await _settings_reply(request, user, "partials/settings_email.html",
                                     {exc.field or "code": translated(exc)}, "")
    session.pop("pending_email", None)
    forget_loaded_user(request)
    return await _settings_reply(request, user, "partials/settings_email.html", {},
                                 _("Your e-mail address is now %(email)s.", email=new_email))


async def change_name(request: web.Request) -> web.Response:
    user = await require_user(request)
    form = await form_data(request)
    try:
        await site_accounts.change_name(db_of(request), user.id, form.get("name", ""))
    except SiteAccountError as exc:
        return await _settings_reply(request, user, "partials/settings_name.html",
                                     {exc.field or "name": translated(exc)}, "")
    forget_loaded_user(request)  # the page shows the new name
    return await _settings_reply(request, user, "partials/settings_name.html", {},
                                 _("Your name was saved."))


async def change_password(request: web.Request) -> web.Response:
    user = await require_user(request)
    form = await form_data(request)
    try:
        await site_accounts.change_password(
            db_of(request), user.id, form.get("current_password", ""),
            form.get("new_password", ""), form.get("confirm_password", ""))
    except SiteAccountError as exc:
        return await _settings_reply(request, user, "partials/settings_password.html",
                                     {exc.field or "current_password": translated(exc)}, "")
    # this browser stays signed in: it takes the new password stamp and session epoch
    await refresh_stamp(request, await db_of(request).fetch_one("user_by_id", {"id": user.id}))
    return await _settings_reply(request, user, "partials/settings_password.html", {},
                                 _("Your password was changed; other browsers are signed out."))


async def delete_account(request: web.Request) -> web.Response:
    user = await require_user(request)
    form = await form_data(request)
    try:
        await site_accounts.delete_account(db_of(request), user.id,
                                           form.get("confirm_email", ""))
    except SiteAccountError as exc:
        return await _settings_reply(request, user, "partials/settings_delete.html",
                                     {exc.field or "confirm_email": translated(exc)}, "")
    await request.app[USER_EVENTS].publish(UserChanged(user.id))  # every instance, now
    await sign_out(request)
    await flash(request, _("Your account was deleted and its keys revoked."))
    return htmx_redirect(request, "/")


async def orders_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    orders = await dashboard.list_orders(db_of(request), user.id)
    return await render(request, "pages/orders.html", {"orders": orders})
