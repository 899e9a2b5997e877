"""Sign up, verify the e-mail code, log in and out, and sign in with Google."""

from __future__ import annotations

import json
import secrets

from aiohttp import web
from aiohttp_session import get_session
from cryptography.fernet import InvalidToken

from gateway.accounts import signup as site_accounts
from gateway.accounts.google import GoogleSignInError
from gateway.accounts.signup import SiteAccountError
from gateway.config import CONFIG
from gateway.paths import GOOGLE_CALLBACK
from web.guards import current_user
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
            "next": next_url, "email": email, "errors": {exc.field or "form": exc.message}},
            status=status, forms=True, headers=headers)
    if result.needs_verification:
        await _start_verification(request, result.user["email"])
        # a code sent less than a minute ago is not repeated: the one in the inbox works
        await site_accounts.send_code_if_due(db_of(request), site_of(request).mailer,
                                             result.user["email"], public_url(request))
        await flash(request, "Your e-mail address is not verified yet: enter the code we sent.")
        redirect("/register/verify")
    session = await sign_in(request, result.user)
    session["flash"] = f"Welcome back, {result.user['name'] or result.user['email']}."
    redirect(next_url)


async def logout(request: web.Request) -> web.Response:
    await sign_out(request)
    redirect("/")


async def register_page(request: web.Request) -> web.Response:
    if await current_user(request) is not None:
        redirect("/dashboard")
    return await render(request, "pages/register.html",
                        {"errors": {}, "email": "", "name": ""}, forms=True)


async def register_submit(request: web.Request) -> web.Response:
    if not request.app[CONFIG].web.registration:
        raise web.HTTPForbidden(reason="Registration is closed on this server")
    form = await form_data(request)
    try:
        email = await site_accounts.register(
            db_of(request), site_of(request).mailer, form.get("email", ""),
            form.get("password", ""), form.get("name", ""), public_url(request))
    except SiteAccountError as exc:
        return await render(request, "pages/register.html", {
            "errors": {exc.field or "form": exc.message}, "email": form.get("email", ""),
            "name": form.get("name", "")}, status=422, forms=True)
    await _start_verification(request, email)
    redirect("/register/verify")


async def _start_verification(request: web.Request, email: str) -> None:
    (await get_session(request))["verify_email"] = email


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
    try:
        user = await site_accounts.verify(db_of(request), email, form.get("code", ""))
    except SiteAccountError as exc:
        return await render(request, "pages/verify.html", {
            "email": email, "errors": {exc.field or "form": exc.message}}, status=422,
            forms=True)
    session = await sign_in(request, user)
    session.pop("verify_email", None)
    session["flash"] = "Your e-mail address is verified. Create your first API key below."
    redirect("/dashboard")


async def resend_submit(request: web.Request) -> web.Response:
    form = await form_data(request)
    email = await _verification_email(request, form)
    try:
        await site_accounts.resend_code(db_of(request), site_of(request).mailer, email,
                                        public_url(request))
    except SiteAccountError as exc:
        return await render(request, "pages/verify.html", {
            "email": email, "errors": {exc.field or "form": exc.message}},
            status=429 if exc.retry_after else 422, forms=True,
            headers={"Retry-After": str(exc.retry_after)} if exc.retry_after else None)
    await _start_verification(request, email)
    await flash(request, "A new code is on its way. Codes are valid for 30 minutes.")
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
        return await _google_failed(request, f"Google sign-in was cancelled ({form['error']}).")
    try:
        identity = await verifier.verify(form.get("id_token", ""))
    except GoogleSignInError as exc:
        return await _google_failed(request, f"Google sign-in failed: {exc}.")
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
        return await _google_failed(request, "This sign-in link has expired; try again.")
    session = await get_session(request)
    state, nonce = session.pop("g_state", ""), session.pop("g_nonce", "")
    next_url = safe_next(session.pop("next", None))
    if not state or not secrets.compare_digest(str(data.get("state", "")), str(state)) \
            or not nonce or not secrets.compare_digest(str(data.get("nonce", "")), str(nonce)):
        return await _google_failed(request, "This sign-in was not started in this browser; "
                                             "try again.")
    try:
        user = await site_accounts.google_user(
            db_of(request), str(data["sub"]), str(data["email"]), bool(data["email_verified"]),
            str(data["name"]))
    except SiteAccountError as exc:
        return await _google_failed(request, exc.message)
    new = await sign_in(request, user)
    new["flash"] = f"Signed in with Google as {user['email']}."
    redirect(next_url)


async def _google_failed(request: web.Request, message: str) -> web.Response:
    return await render(request, "pages/login.html", {
        "next": "/dashboard", "email": "", "errors": {"form": message}}, status=400,
        forms=True)
