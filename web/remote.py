"""The remote-control pages: the user's sessions, the phone terminal, ending a session.

Only the owner sees a session: anyone else gets the same 404 as for an id that does not
exist. The terminal itself is `static/js/remote.js` talking to the hub at `/remote-ws`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.config import CONFIG
from gateway.errors import ApiError
from gateway.remote.hub import REMOTE_HUB, RemoteHub
from gateway.remote.sessions import RemoteSession, owned_session, sessions_of
from web.api import reply
from web.guards import api_user, require_user
from web.i18n import N_, _, ngettext
from web.responses import (
    NO_STORE,
    db_of,
    flash,
    form_data,
    htmx_redirect,
    htmx_target,
    render,
    safe_next,
)
from web.sessions import SiteUser
from web.site import CONTENT_SECURITY_POLICY

END_REASON = N_("ended by the user")
# Why the hub ends a session (gateway/remote/hub.py), listed so the catalogue has them.
HUB_REASONS = (N_("the terminal exited"), N_("expired"))
LIST_TARGET = "remote-sessions"
# xterm.js's DOM renderer writes <style> elements and style attributes (cell sizes, 24-bit
# colours), so this one page allows inline styles. Scripts stay 'self' only, and images,
# fonts and connections stay 'self', so injected CSS could not send anything elsewhere.
TERMINAL_CSP = CONTENT_SECURITY_POLICY.replace("style-src 'self'",
                                               "style-src 'self' 'unsafe-inline'")

BADGES = {"connected": "badge-ok", "waiting": "", "offline": "badge-warn",
          "ended": "badge-muted", "expired": "badge-muted"}
LABELS = {
    "connected": N_("Bridge connected"),
    "waiting": N_("Waiting for the bridge"),
    "offline": N_("Bridge offline"),
    "ended": N_("Ended"),
    "expired": N_("Expired"),
}


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as the pages show it: its row plus what the hub knows right now."""

    session: RemoteSession
    state: str  # connected | waiting | offline | ended | expired

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def label(self) -> str:
        return _(LABELS[self.state])

    @property
    def badge(self) -> str:
        return BADGES[self.state]

    @property
    def is_open(self) -> bool:
        return self.state not in ("ended", "expired")

    def as_json(self, public_url: str) -> dict[str, Any]:
        s = self.session
        return {"id": s.id, "state": self.state, "open": self.is_open,
                "created_at": s.created_at, "expires_at": s.expires_at,
                "ended_at": s.ended_at, "end_reason": s.end_reason,
                "url": f"{public_url}/remote/{s.id}"}


def view(session: RemoteSession, hub: RemoteHub) -> SessionView:
    if session.status in ("ended", "expired") or session.ended_at is not None:
        state = "expired" if session.status == "expired" else "ended"
    elif time.time() >= session.expires_at:
        state = "expired"  # the sweeper has not got to it yet
    elif hub.bridge_connected(session.id):
        state = "connected"
    else:
        state = "offline" if session.status == "connected" else "waiting"
    return SessionView(session, state)


def _hours(hours: float) -> str:
    if hours == int(hours):
        return ngettext("%(num)d hour", "%(num)d hours", int(hours))
    figure = f"{hours:g}"
    return _("%(hours)s hours", hours=figure)


def hub_of(request: web.Request) -> RemoteHub:
    hub = request.app.get(REMOTE_HUB)
    if hub is None:
        raise web.HTTPNotFound(reason=_("Remote control is not running"))
    return hub


async def _own_view(request: web.Request, user: SiteUser) -> SessionView:
    """The signed-in user's session named in the URL; 404 for anyone else's or none."""
    session = await owned_session(db_of(request), request.match_info["session_id"], user.id)
    if session is None:
        raise web.HTTPNotFound(reason=_("No such remote session"))
    return view(session, hub_of(request))


async def _list_context(request: web.Request, user: SiteUser) -> dict[str, Any]:
    hub = hub_of(request)
    sessions = await sessions_of(db_of(request), user.id)
    return {"sessions": [view(s, hub) for s in sessions],
            "remote_enabled": request.app[CONFIG].remote.enabled,
            "session_length": _hours(request.app[CONFIG].remote.session_hours)}


async def sessions_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    ctx = await _list_context(request, user)
    if htmx_target(request) == LIST_TARGET:
        return await render(request, "partials/remote_sessions.html", ctx, forms=True,
                            headers=NO_STORE)
    return await render(request, "pages/remote_list.html", ctx, forms=True, headers=NO_STORE)


async def terminal_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    current = await _own_view(request, user)
    live = current.is_open and request.app[CONFIG].remote.enabled
    return await render(request, "pages/remote_terminal.html",
                        {"remote": current, "live": live}, forms=True,
                        headers={**NO_STORE, "Content-Security-Policy": TERMINAL_CSP})


async def end_session(request: web.Request) -> web.Response:
    """End the user's own session: the hub tells the bridge (which exits) and the viewers."""
    user = await require_user(request)
    current = await _own_view(request, user)
    if current.is_open:
        await hub_of(request).end(current.id, END_REASON)
    if htmx_target(request) == LIST_TARGET:
        ctx = await _list_context(request, user)
        return await render(request, "partials/remote_sessions.html", ctx, forms=True,
                            headers=NO_STORE)
    form = await form_data(request)
    await flash(request, _("The remote session was ended; its bridge has been told to exit.")
                if current.is_open else _("That remote session had already ended."))
    return htmx_redirect(request, safe_next(form.get("next"), "/remote"))


# ---- JSON for scripts (and the terminal page's reconnect check) -----------------------

async def api_sessions(request: web.Request) -> web.Response:
    user = await api_user(request)
    hub = hub_of(request)
    base = request.app[CONFIG].public_url
    sessions = await sessions_of(db_of(request), user.id)
    return reply({"sessions": [view(s, hub).as_json(base) for s in sessions]})


async def _api_own(request: web.Request) -> RemoteSession:
    user = await api_user(request)
    session = await owned_session(db_of(request), request.match_info["session_id"], user.id)
    if session is None:
        raise ApiError("not_found_error", "no such remote session")
    return session


async def api_session(request: web.Request) -> web.Response:
    session = await _api_own(request)
    return reply(view(session, hub_of(request)).as_json(request.app[CONFIG].public_url))


async def api_end_session(request: web.Request) -> web.Response:
    session = await _api_own(request)
    hub = hub_of(request)
    if view(session, hub).is_open:
        await hub.end(session.id, END_REASON)
        session = await owned_session(db_of(request), session.id, session.user_id) or session
    return reply(view(session, hub).as_json(request.app[CONFIG].public_url))
