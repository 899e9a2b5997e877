"""Sign up, verify the e-mail code, log in and out, and sign in with Google."""

from __future__ import annotations

import json
import secrets
from urllib.parse import quote

from aiohttp import web
from aiohttp_session import get_session
from cryptography.fernet import InvalidToken

from gateway.accounts import recovery
from gateway.accounts import signup as site_accounts
from gateway.accounts.google import GoogleSignInError
from gateway.accounts.signup import SiteAccountError
from gateway.config import CONFIG
from gateway.paths import GOOGLE_CALLBACK
from web.guards import current_user
from web.i18n import _, translated
from web.responses import (
    client_ip,
    db_of,
    flash,
    form_data,
    public_url,
    redirect,
    render,
    safe_next,
    site_of,
)
from web.sessions import sign_in, sign_out

TICKET_TTL = 120  # seconds between Google's callback and our finish step


async def login_page(request: web.Request) -> web.Response:
    next_url = safe_next(request.query.get("next"))
    if await current_user(request) is not None:
        redirect(next_url)
    return await render(request, "pages/login.html", {"next": next_url, "errors": {},
                                                      "email": ""}, forms=True)


async def login_submit(request: web.Request) -> web.Response:
    form = await form_data(request)
    next_url = safe_next(form.get("next"))
    email = form.get("email", "")
    try:
        result = await site_accounts.log_in(db_of(request), site_of(request).throttle, email,
                                            form.get("password", ""), client_ip(request))
    except SiteAccountError as exc:
        status = 429 if exc.retry_after else 422
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return await render(request, "pages/login.html", {
            "next": next_url, "email": email, "errors": {exc.field or "form": translated(exc)}},
            status=status, forms=True, headers=headers)
    if result.needs_verification:
        await _start_verification(request, result.user["email"],
                                  site_accounts.registration_stamp(result.user["password_hash"]))
        # a code sent less than a minute ago is not repeated: the one in the inbox works
        await site_accounts.send_code_if_due(db_of(request), site_of(request).mailer,
                                             result.user["email"], public_url(request))
        await flash(request, _("Your e-mail address is not verified yet: enter the code we sent."))
        redirect("/register/verify")
    session = await sign_in(request, result.user)
    session["flash"] = _("Welcome back, %(name)s.",
                         name=display_name(result.user["name"] or result.user["email"]))
    redirect(next_url)


def display_name(name: str) -> str:
    """A name for the end of a sentence: "Carol C." must not become "Carol C.."."""
    return name.rstrip(".")


async def logout(request: web.Request) -> web.Response:
    await sign_out(request)
    redirect("/")


async def register_page(request: web.Request) -> web.Response:
    if await current_user(request) is not None:
        redirect("/dashboard")
    return await render(request, "pages/register.html",
                        {"errors": {}, "email": "", "name": "",
                         "plan": await _plan_asked(request, request.query.get("plan"))},
                        forms=True)


async def _plan_asked(request: web.Request, name: str | None) -> str:
    """A paid plan chosen on /pricing, carried through sign-up into checkout ("" if none)."""
    if not name:
        return ""
    row = await db_of(request).fetch_one("plan_by_name", {"name": name})
    return name if row is not None and str(row["price_month"]) not in ("0", "0.0") else ""


async def register_submit(request: web.Request) -> web.Response:
    if not request.app[CONFIG].web.registration:
        raise web.HTTPForbidden(reason=_("Registration is closed on this server"))
    form = await form_data(request)
    plan = await _plan_asked(request, form.get("plan"))
    try:
        registration = await site_accounts.register(
            db_of(request), site_of(request).mailer, form.get("email", ""),
            form.get("password", ""), form.get("name", ""), public_url(request))
    except SiteAccountError as exc:
        return await render(request, "pages/register.html", {
            "errors": {exc.field or "form": translated(exc)}, "email": form.get("email", ""),
            "name": form.get("name", ""), "plan": plan}, status=422, forms=True)
    await _start_verification(request, registration.email, registration.stamp)
    if plan:
        (await get_session(request))["want_plan"] = plan
    redirect("/register/verify")


async def _start_verification(request: web.Request, email: str, stamp: str | None = None
                              ) -> None:
    """Remember the address being verified and, when this browser just set (or proved)
    its password, that password's stamp: only then does verifying keep the password."""
    session = await get_session(request)
    session["verify_email"] = email
    if stamp is not None:
        session["reg_stamp"] = stamp


async def _verification_email(request: web.Request, form: dict[str, str] | None = None) -> str:
    stored = (await get_session(request)).get("verify_email")
    if isinstance(stored, str) and stored:
        return stored
    return (form or {}).get("email", "") or request.query.get("email", "")


async def verify_page(request: web.Request) -> web.Response:
    return await render(request, "pages/verify.html", {
        "email": await _verification_email(request), "errors": {}}, forms=True)


async def verify_submit(request: web.Request) -> web.Response:
    form = await form_data(request)
    email = await _verification_email(request, form)
    stamp = (await get_session(request)).get("reg_stamp")
    try:
        verified = await site_accounts.verify(db_of(request), email, form.get("code", ""),
                                              stamp if isinstance(stamp, str) else "")
    except SiteAccountError as exc:
        return await render(request, "pages/verify.html", {
            "email": email, "errors": {exc.field or "form": translated(exc)}}, status=422,
            forms=True)
    plan = (await get_session(request)).get("want_plan")
    session = await sign_in(request, verified.user)
    session.pop("verify_email", None)
    if not verified.password_kept:
        session["flash"] = _("Your e-mail address is verified. The password for this "
                             "account was chosen in another browser, so it was removed: "
                             "choose one below.")
        redirect("/settings")
    if isinstance(plan, str) and plan:
        session["flash"] = _("Your e-mail address is verified. Pay for the plan you chose "
                             "below, or stay on the free plan.")
        redirect("/billing?plan=" + quote(plan))
    session["flash"] = _("Your e-mail address is verified. Create your first API key below.")
    redirect("/dashboard")


async def resend_submit(request: web.Request) -> web.Response:
    form = await form_data(request)
    email = await _verification_email(request, form)
    try:
        await site_accounts.resend_code(db_of(request), site_of(request).mailer, email,
                                        public_url(request))
    except SiteAccountError as exc:
        return await render(request, "pages/verify.html", {
            "email": email, "errors": {exc.field or "form": translated(exc)}},
            status=429 if exc.retry_after else 422, forms=True,
            headers={"Retry-After": str(exc.retry_after)} if exc.retry_after else None)
    await _start_verification(request, email)
    await flash(request, _("A new code is on its way. Codes are valid for 30 minutes."))
    redirect("/register/verify")


async def google_start(request: web.Request) -> web.Response:
    verifier = site_of(request).google
    if verifier is None:
        raise web.HTTPNotFound()
    session = await get_session(request)
    session["g_state"] = state = secrets.token_urlsafe(24)
    session["g_nonce"] = nonce = secrets.token_urlsafe(24)
    session["next"] = safe_next(request.query.get("next"))
    raise web.HTTPFound(verifier.authorization_url(public_url(request) + GOOGLE_CALLBACK,
                                                   state, nonce))


async def google_callback(request: web.Request) -> web.Response:
    """Google posts the ID token here (cross-site, so without our SameSite=Lax cookie):
    verify it, then hand it to the browser's own session through a short-lived ticket."""
    verifier = site_of(request).google
    if verifier is None:
        raise web.HTTPNotFound()
    form = await form_data(request)
    if form.get("error"):
        return await _google_failed(request, _("Google sign-in was cancelled (%(error)s).",
                                              error=form["error"]))
    try:
        identity = await verifier.verify(form.get("id_token", ""))
    except GoogleSignInError as exc:
        return await _google_failed(request, _("Google sign-in failed: %(error)s.",
                                              error=str(exc)))
    ticket = site_of(request).tickets.encrypt(json.dumps({
        "sub": identity.subject, "email": identity.email,
        "email_verified": identity.email_verified, "name": identity.name,
        "nonce": identity.nonce, "state": form.get("state", "")}).encode())
    raise web.HTTPSeeOther("/login/google/finish?ticket=" + ticket.decode())


async def google_finish(request: web.Request) -> web.Response:
    if site_of(request).google is None:
        raise web.HTTPNotFound()
    try:
        data = json.loads(site_of(request).tickets.decrypt(
            request.query.get("ticket", "").encode(), ttl=TICKET_TTL))
    except (InvalidToken, ValueError):
        return await _google_failed(request, _("This sign-in link has expired; try again."))
    session = await get_session(request)
    state, nonce = session.pop("g_state", ""), session.pop("g_nonce", "")
    next_url = safe_next(session.pop("next", None))
    if not state or not secrets.compare_digest(str(data.get("state", "")), str(state)) \
            or not nonce or not secrets.compare_digest(str(data.get("nonce", "")), str(nonce)):
        return await _google_failed(request, _("This sign-in was not started in this browser; "
                                               "try again."))
    try:
        user = await site_accounts.google_user(
            db_of(request), str(data["sub"]), str(data["email"]), bool(data["email_verified"]),
            str(data["name"]))
    except SiteAccountError as exc:
        return await _google_failed(request, translated(exc))
    new = await sign_in(request, user)
    new["flash"] = _("Signed in with Google as %(email)s.", email=user["email"])
    redirect(next_url)


async def _google_failed(request: web.Request, message: str) -> web.Response:
    return await render(request, "pages/login.html", {
        "next": "/dashboard", "email": "", "errors": {"form": message}}, status=400,
        forms=True)


async def forgot_page(request: web.Request) -> web.Response:
    return await render(request, "pages/password_forgot.html", {"errors": {}, "email": ""},
                        forms=True)


async def forgot_submit(request: web.Request) -> web.Response:
    form = await form_data(request)
    try:
        email = await recovery.request_reset(db_of(request), site_of(request).mailer,
                                             form.get("email", ""), public_url(request))
    except SiteAccountError as exc:
        return await render(request, "pages/password_forgot.html", {
            "errors": {exc.field or "email": translated(exc)},
            "email": form.get("email", "")}, status=422, forms=True)
    (await get_session(request))["reset_email"] = email
    # The same answer whether or not the address has an account.
    await flash(request, _("If %(email)s has an account, a code is on its way to it.",
                           email=email))
    redirect("/password/reset")


async def reset_page(request: web.Request) -> web.Response:
    stored = (await get_session(request)).get("reset_email")
    return await render(request, "pages/password_reset.html", {
        "errors": {}, "email": stored if isinstance(stored, str) else ""}, forms=True)


async def reset_submit(request: web.Request) -> web.Response:
    form = await form_data(request)
    stored = (await get_session(request)).get("reset_email")
    email = stored if isinstance(stored, str) and stored else form.get("email", "")
    try:
        await recovery.reset_password(db_of(request), email, form.get("code", ""),
                                      form.get("new_password", ""),
                                      form.get("confirm_password", ""))
    except SiteAccountError as exc:
        return await render(request, "pages/password_reset.html", {
            "errors": {exc.field or "code": translated(exc)}, "email": email},
            status=422, forms=True)
    session = await get_session(request)
    session.pop("reset_email", None)
    await flash(request, _("Your password was changed and every other sign-in ended. "
                           "Log in with the new password."))
    redirect("/login")
