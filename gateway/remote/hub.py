"""The WebSocket hub at /remote-ws: joins a user's terminal bridge to their phone's browser.

Who may connect, checked before the upgrade (a session id alone grants nothing):
- the bridge (`?role=bridge`): an API key of the user who owns the session;
- a viewer (`?role=viewer`): a signed-in web session of that same user, from a page of this
  site: the Origin header must be the origin of `[server] public_url` (when it is not set,
  of the derived default or of the loopback address the connection arrived on), never the
  request's own Host header, which a DNS-rebinding page controls.
Refusals are plain HTTP: 401 unauthenticated, 403 wrong origin, 404 no such session for this
user (existence is never revealed), 410 ended or expired.

Credentials are checked for as long as a connection lives, not only at the upgrade: when
the user changes (the key cache sees every change to a key, user or subscription row
within a second, on every instance, also those made by another instance or the CLI) the
hub closes, with code 4401, the user's bridges whose key was revoked and every connection
of a user who was suspended or deleted or whose sign-in sessions were ended (password
change, sign-out everywhere). Every `sweep_interval` the hub also re-checks all its live
connections, which catches a sign-out (it moves the session epoch without an event). A
bridge whose key still works may connect again.

Messages are JSON text frames: `{"type":"output","data":B64}` bridge -> viewers,
`{"type":"input","data":B64}` and `{"type":"resize","cols":C,"rows":R}` viewer -> bridge,
`{"type":"status",...}` hub -> everyone, `{"type":"hello","max_message_bytes":N}` hub -> a
bridge as it joins (the largest frame the hub takes: the bridge splits its output to fit),
`{"type":"ping"}` -> `{"type":"pong"}`. One bridge
per session (a new one replaces the old), any number of viewers; the last `buffer_bytes` of
output are replayed to a viewer that joins late. Frames over `max_message_bytes`, and
connections sending faster than `messages_per_second`, are closed. Heartbeats close dead
connections; every connection's end is recorded with its reason.

Membership and fan-out are behind the `Rooms` seam (gateway/remote/rooms.py). With several
instances both ends of a session reach the same one because the balancer hashes the
session id (deploy/haproxy.cfg).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.accounting.keycache import KeyCache, api_key_from
from gateway.accounts.users import hash_key
from gateway.config import RemoteConfig
from gateway.errors import ApiError
from gateway.events import UserChanged, UserEvents
from gateway.remote.rooms import LocalRooms, Rooms
from gateway.remote.sessions import (
    RemoteSession,
    connection_closed,
    connection_opened,
    end_session,
    expire_sessions,
    get_session,
    owned_session,
    set_status,
)
from gateway.store.base import Store

log = logging.getLogger("llmapi.remote")

CLOSE_ENDED = 4410     # the session ended or expired: a bridge should exit
CLOSE_REPLACED = 4000  # another bridge took over this session
CLOSE_REVOKED = 4401   # the credentials it connected with no longer hold
HEARTBEAT = 20.0

@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in viewer: the user and the session epoch their sign-in carries."""

    user_id: int
    epoch: int


ViewerAuth = Callable[[web.Request], Awaitable[Viewer | None]]


@dataclass(frozen=True, slots=True)
class Member:
    """Who one live connection belongs to, to check its credentials again later."""

    session_id: str
    user_id: int
    role: str
    key_hash: str = ""  # bridge: the API key it connected with (its SHA-256)
    epoch: int = 0      # the user's session epoch when it connected


class TokenBucket:
    """Per-connection rate limit with bursts of twice the rate."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = rate * 2
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RemoteHub:
    def __init__(self, db: Store, keys: KeyCache, config: RemoteConfig, public_url: str,
                 viewer_user: ViewerAuth, *, public_url_configured: bool = True,
                 events: UserEvents | None = None, rooms: Rooms | None = None) -> None:
        self.db = db
        self.keys = keys
        self.config = config
        self.public_url = public_url
        self.public_url_configured = public_url_configured
        self.viewer_user = viewer_user
        self.rooms: Rooms = rooms or LocalRooms(config.buffer_bytes)
        self.members: dict[web.WebSocketResponse, Member] = {}
        self._closed_because: dict[web.WebSocketResponse, str] = {}  # closed by the hub
        self._checks: set[asyncio.Task[int]] = set()
        if events is not None:
            events.subscribe(self._user_changed)

    def bridge_connected(self, session_id: str) -> bool:
        """Whether a bridge is connected to this session right now (for the pages)."""
        return self.rooms.bridge_connected(session_id)

    # ---- connection -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        role = request.query.get("role", "")
        session_id = request.query.get("session", "")
        if role not in ("bridge", "viewer") or not session_id:
            raise web.HTTPBadRequest(text="need ?role=bridge|viewer&session=ID")
        member = await (self._bridge_member(request, session_id) if role == "bridge"
                        else self._viewer_member(request, session_id))
        user_id = member.user_id
        session = await owned_session(self.db, session_id, user_id)
        if session is None:
            raise web.HTTPNotFound(text="no such remote session")
        if not session.is_open:
            raise web.HTTPGone(text=f"this remote session has {session.status}")

        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=self.config.max_message_bytes)
        await ws.prepare(request)
        connection = await connection_opened(self.db, session_id, user_id, role)
        self.members[ws] = member
        reason = "closed"
        try:
            if role == "bridge":
                await self._join_bridge(session_id, ws, session)
                reason = await self._relay(ws, session_id, self._from_bridge)
            else:
                await self.rooms.join_viewer(session_id, ws)
                reason = await self._relay(ws, session_id, self._from_viewer)
        except asyncio.CancelledError:
            reason = "server shutting down"
            raise
        finally:
            self.members.pop(ws, None)
            await self.rooms.leave(session_id, ws)
            reason = self._closed_because.pop(ws, reason)
            if ws.close_code == WSCloseCode.ABNORMAL_CLOSURE and reason == "closed":
                reason = "connection lost"
            try:
                # shielded: closing the socket cancels this handler (handler_cancellation)
                await asyncio.shield(connection_closed(self.db, connection, reason))
            except Exception:  # shutting down: the database may already be closed
                log.warning("could not record the end of connection %s (%s)", connection,
                            reason, exc_info=True)
        return ws

    async def _bridge_member(self, request: web.Request, session_id: str) -> Member:
        raw = api_key_from(request)
        try:
            key = await self.keys.authenticate(raw)
        except ApiError as exc:
            raise web.HTTPUnauthorized(text=exc.message) from None
        row = await self.db.fetch_one("user_by_id", {"id": key.user_id})
        epoch = int(row["session_epoch"]) if row is not None else 0
        return Member(session_id, key.user_id, "bridge", hash_key(raw or ""), epoch)

    async def _viewer_member(self, request: web.Request, session_id: str) -> Member:
        origin = request.headers.get("Origin")
        if not origin or not self._same_site(origin, request):
            raise web.HTTPForbidden(text="cross-site WebSocket refused")
        viewer = await self.viewer_user(request)
        if viewer is None:
            raise web.HTTPUnauthorized(text="sign in first")
        return Member(session_id, viewer.user_id, "viewer", epoch=viewer.epoch)

    def _same_site(self, origin: str, request: web.Request) -> bool:
        """The Origin must be this site's: `public_url`'s origin. Without a configured
        `public_url`, also the literal address the connection arrived on (the local
        socket, not the Host header: a DNS-rebinding page sets Host to its own name)."""
        allowed = {_origin(self.public_url)}
        if not self.public_url_configured:
            local = request.transport.get_extra_info("sockname") if request.transport else None
            if isinstance(local, tuple) and len(local) >= 2:
                host = f"[{local[0]}]" if ":" in str(local[0]) else str(local[0])
                allowed.add(f"{request.scheme}://{host}:{local[1]}")
        return origin.rstrip("/") in allowed

    async def _join_bridge(self, session_id: str, ws: web.WebSocketResponse,
                           session: RemoteSession) -> None:
        # the bridge cuts its output frames to fit `[remote] max_message_bytes`
        await ws.send_bytes(orjson.dumps({"type": "hello",
                                          "max_message_bytes": self.config.max_message_bytes}))
        old = await self.rooms.join_bridge(session_id, ws)
        if old is not None and not old.closed:
            self._closed_because[old] = "replaced by a new bridge"
            await old.close(code=CLOSE_REPLACED, message=b"another bridge took over")
        if session.status != "connected":
            await set_status(self.db, session_id, "connected")

    async def _relay(self, ws: web.WebSocketResponse, session_id: str,
                     handle: Callable[[str, web.WebSocketResponse, dict[str, Any]],
                                      Awaitable[None]]) -> str:
        """Read frames until the connection ends; returns why it ended."""
        bucket = TokenBucket(self.config.messages_per_second)
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                return f"error: {ws.exception()}"
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            if not bucket.take():
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"rate limit")
                return "rate limit exceeded"
            try:
                data = orjson.loads(msg.data)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                await handle(session_id, ws, data)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"bad message")
                return f"bad message: {exc}"
        if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            return "message too big"
        return "closed"

    # ---- credentials that stop holding ------------------------------------------------

    def _user_changed(self, event: UserChanged) -> None:
        """Called on the user-changed bus (synchronously): check that user's connections
        in a task of their own."""
        if not any(m.user_id == event.user_id for m in self.members.values()):
            return
        task = asyncio.get_running_loop().create_task(self.recheck_user(event.user_id))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def recheck_user(self, user_id: int) -> int:
        """Close the user's connections whose credentials no longer hold; how many."""
        mine = [(ws, m) for ws, m in list(self.members.items()) if m.user_id == user_id]
        if not mine:
            return 0
        try:
            user = await self.db.fetch_one("user_by_id", {"id": user_id})
        except Exception:  # the database is away: check again at the next change
            log.warning("cannot re-check remote connections of user %s", user_id,
                        exc_info=True)
            return 0
        closing = []
        for ws, member in mine:
            why = await self._no_longer_allowed(member, user)
            if why and not ws.closed:
                # no frame first: the close code and reason say it (the page then asks the
                # JSON API why, and stops when the sign-in is over)
                self._closed_because[ws] = why
                closing.append(ws.close(code=CLOSE_REVOKED, message=why.encode()[:120]))
        # side by side: each close waits for its peer's answer (a slow phone must not hold
        # up the others)
        await asyncio.gather(*closing, return_exceptions=True)
        return len(closing)

    async def recheck_all(self) -> int:
        """`recheck_user` for every user with a live connection here: the fallback for
        changes that reach no user-changed event (a sign-out everywhere moves the session
        epoch but not the row's `updated_at`, which the key cache watches)."""
        closed = 0
        for user_id in {m.user_id for m in self.members.values()}:
            closed += await self.recheck_user(user_id)
        return closed

    async def _no_longer_allowed(self, member: Member, user: Any) -> str:
        if user is None or user["status"] != "active":
            return "account suspended" if user is not None else "account deleted"
        if int(user["session_epoch"]) != member.epoch:
            return "signed out everywhere (password changed or sessions ended)"
        if member.role == "bridge":
            key = await self.db.fetch_one("key_auth_by_hash", {"key_hash": member.key_hash})
            if key is None or key["revoked_at"] is not None:
                return "API key revoked"
        return ""

    # ---- messages ---------------------------------------------------------------------

    async def _from_bridge(self, session_id: str, ws: web.WebSocketResponse,
                           data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind == "output":
            raw = base64.b64decode(data["data"], validate=True)
            frame = orjson.dumps({"type": "output", "data": data["data"]})
            await self.rooms.output(session_id, raw, frame)
        elif kind == "status" and data.get("state") == "exited":
            # shielded: ending closes this very connection, which cancels this handler
            await asyncio.shield(self.end(session_id, "the terminal exited"))
        elif kind == "ping":
            await ws.send_bytes(b'{"type":"pong"}')

    async def _from_viewer(self, session_id: str, ws: web.WebSocketResponse,
                           data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind == "input":
            base64.b64decode(data["data"], validate=True)  # refuse garbage early
            frame = orjson.dumps({"type": "input", "data": data["data"]})
        elif kind == "resize":
            cols, rows = int(data["cols"]), int(data["rows"])
            if not (0 < cols <= 1000 and 0 < rows <= 1000):
                raise ValueError("bad terminal size")
            frame = orjson.dumps({"type": "resize", "cols": cols, "rows": rows})
        elif kind == "ping":
            await ws.send_bytes(b'{"type":"pong"}')
            return
        else:
            raise ValueError(f"unknown message type {kind!r}")
        await self.rooms.to_bridge(session_id, frame)

    # ---- ending -----------------------------------------------------------------------

    async def end(self, session_id: str, reason: str, status: str = "ended") -> None:
        """End a session: record it, tell everyone, close every connection to it."""
        await end_session(self.db, session_id, reason, status)
        await self._close_room(session_id, reason, status)

    async def _close_room(self, session_id: str, reason: str, status: str) -> None:
        """Tell this instance's connections to a session that it ended, and close them."""
        frame = orjson.dumps({"type": "status", "ended": True, "reason": reason})
        for ws in self.rooms.close_room(session_id):
            if not ws.closed:
                self._closed_because[ws] = f"session {status}: {reason}"
                with contextlib.suppress(ConnectionError):
                    await ws.send_bytes(frame)
                await ws.close(code=CLOSE_ENDED, message=reason.encode()[:120])

    async def sweep(self) -> None:
        """End every session past its expiry time (a must-run-once job: app.py runs it
        under the `remote.sweep` lease, so one instance writes the ends)."""
        for session_id in await expire_sessions(self.db):
            await self.end(session_id, "expired", status="expired")

    async def close_ended_rooms(self) -> int:
        """Close this instance's rooms whose session ended elsewhere (the sweep on the
        lease holder, an End pressed on another instance). Every instance runs it."""
        closed = 0
        for session_id in self.rooms.session_ids():
            session = await get_session(self.db, session_id)
            if session is None or not session.is_open:
                status = session.status if session is not None else "ended"
                await self._close_room(session_id, status, status)
                closed += 1
        return closed

    async def run_room_check(self) -> None:
        """Every `[remote] sweep_interval`, for this instance's own connections:
        `close_ended_rooms` and `recheck_all`."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.close_ended_rooms()
                await self.recheck_all()
            except Exception:  # keep checking; a database outage now is fine later
                log.exception("remote room check failed")

    async def close_all(self) -> None:
        for task in list(self._checks):
            task.cancel()
        for session_id in self.rooms.session_ids():
            for ws in self.rooms.close_room(session_id):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


REMOTE_HUB = web.AppKey("remote_hub", RemoteHub)
"""The remote-control WebSocket hub (app.py: `remote_hub`)."""
