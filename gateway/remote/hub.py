"""The WebSocket hub at /remote-ws: joins a user's terminal bridge to their phone's browser.

Who may connect, checked before the upgrade (a session id alone grants nothing):
- the bridge (`?role=bridge`): an API key of the user who owns the session;
- a viewer (`?role=viewer`): a signed-in web session of that same user, from a page of this
  site (the Origin header must be the gateway's own).
Refusals are plain HTTP: 401 unauthenticated, 403 wrong origin, 404 no such session for this
user (existence is never revealed), 410 ended or expired.

Messages are JSON text frames: `{"type":"output","data":B64}` bridge -> viewers,
`{"type":"input","data":B64}` and `{"type":"resize","cols":C,"rows":R}` viewer -> bridge,
`{"type":"status",...}` hub -> everyone, `{"type":"ping"}` -> `{"type":"pong"}`. One bridge
per session (a new one replaces the old), any number of viewers; the last `buffer_bytes` of
output are replayed to a viewer that joins late. Frames over `max_message_bytes`, and
connections sending faster than `messages_per_second`, are closed. Heartbeats close dead
connections; every connection's end is recorded with its reason.

The hub keeps its rooms in this process. With several gateway instances a bridge and its
viewer may land on different ones; docs/scale-out.md describes the Redis fan-out that
solves it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.accounting.keycache import KeyCache, api_key_from
from gateway.config import RemoteConfig
from gateway.errors import ApiError
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
HEARTBEAT = 20.0

ViewerAuth = Callable[[web.Request], Awaitable[int | None]]


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


@dataclass
class Room:
    """The live side of one remote session."""

    session_id: str
    bridge: web.WebSocketResponse | None = None
    viewers: set[web.WebSocketResponse] = field(default_factory=set)
    buffer: bytearray = field(default_factory=bytearray)

    def status(self) -> bytes:
        return orjson.dumps({"type": "status", "bridge": self.bridge is not None,
                             "viewers": len(self.viewers)})


class RemoteHub:
    def __init__(self, db: Store, keys: KeyCache, config: RemoteConfig, public_url: str,
                 viewer_user: ViewerAuth) -> None:
        self.db = db
        self.keys = keys
        self.config = config
        self.public_url = public_url
        self.viewer_user = viewer_user
        self.rooms: dict[str, Room] = {}
        self._closed_because: dict[web.WebSocketResponse, str] = {}  # closed by the hub

    def bridge_connected(self, session_id: str) -> bool:
        """Whether a bridge is connected to this session right now (for the pages)."""
        room = self.rooms.get(session_id)
        return room is not None and room.bridge is not None and not room.bridge.closed

    # ---- connection -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        role = request.query.get("role", "")
        session_id = request.query.get("session", "")
        if role not in ("bridge", "viewer") or not session_id:
            raise web.HTTPBadRequest(text="need ?role=bridge|viewer&session=ID")
        user_id = await (self._bridge_user(request) if role == "bridge"
                         else self._viewer_user(request))
        session = await owned_session(self.db, session_id, user_id)
        if session is None:
            raise web.HTTPNotFound(text="no such remote session")
        if not session.is_open:
            raise web.HTTPGone(text=f"this remote session has {session.status}")

        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=self.config.max_message_bytes)
        await ws.prepare(request)
        connection = await connection_opened(self.db, session_id, user_id, role)
        room = self.rooms.setdefault(session_id, Room(session_id))
        reason = "closed"
        try:
            if role == "bridge":
                await self._join_bridge(room, ws, session)
                reason = await self._relay(ws, room, self._from_bridge)
            else:
                await self._join_viewer(room, ws)
                reason = await self._relay(ws, room, self._from_viewer)
        except asyncio.CancelledError:
            reason = "server shutting down"
            raise
        finally:
            await self._leave(room, ws, role)
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

    async def _bridge_user(self, request: web.Request) -> int:
        try:
            key = await self.keys.authenticate(api_key_from(request))
        except ApiError as exc:
            raise web.HTTPUnauthorized(text=exc.message) from None
        return key.user_id

    async def _viewer_user(self, request: web.Request) -> int:
        origin = request.headers.get("Origin")
        if not origin or not self._same_site(origin, request):
            raise web.HTTPForbidden(text="cross-site WebSocket refused")
        user_id = await self.viewer_user(request)
        if user_id is None:
            raise web.HTTPUnauthorized(text="sign in first")
        return user_id

    def _same_site(self, origin: str, request: web.Request) -> bool:
        allowed = {_origin(self.public_url), f"{request.scheme}://{request.host}"}
        return origin.rstrip("/") in allowed

    async def _join_bridge(self, room: Room, ws: web.WebSocketResponse,
                           session: RemoteSession) -> None:
        old, room.bridge = room.bridge, ws
        if old is not None and not old.closed:
            self._closed_because[old] = "replaced by a new bridge"
            await old.close(code=CLOSE_REPLACED, message=b"another bridge took over")
        if session.status != "connected":
            await set_status(self.db, room.session_id, "connected")
        await self._broadcast(room, room.status())

    async def _join_viewer(self, room: Room, ws: web.WebSocketResponse) -> None:
        room.viewers.add(ws)
        if room.buffer:
            await ws.send_bytes(orjson.dumps({"type": "output", "data": base64.b64encode(
                bytes(room.buffer)).decode()}))
        await self._broadcast(room, room.status())

    async def _leave(self, room: Room, ws: web.WebSocketResponse, role: str) -> None:
        if role == "bridge" and room.bridge is ws:
            room.bridge = None
        room.viewers.discard(ws)
        if room.bridge is None and not room.viewers and not room.buffer:
            self.rooms.pop(room.session_id, None)
        else:
            await self._broadcast(room, room.status())

    async def _relay(self, ws: web.WebSocketResponse, room: Room,
                     handle: Callable[[Room, web.WebSocketResponse, dict[str, Any]],
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
                await handle(room, ws, data)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"bad message")
                return f"bad message: {exc}"
        if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            return "message too big"
        return "closed"

    # ---- messages ---------------------------------------------------------------------

    async def _from_bridge(self, room: Room, ws: web.WebSocketResponse,
                           data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind == "output":
            raw = base64.b64decode(data["data"], validate=True)
            room.buffer += raw
            overflow = len(room.buffer) - self.config.buffer_bytes
            if overflow > 0:
                del room.buffer[:overflow]
            frame = orjson.dumps({"type": "output", "data": data["data"]})
            await self._send_all(room.viewers, frame)
        elif kind == "status" and data.get("state") == "exited":
            # shielded: ending closes this very connection, which cancels this handler
            await asyncio.shield(self.end(room.session_id, "the terminal exited"))
        elif kind == "ping":
            await ws.send_bytes(b'{"type":"pong"}')

    async def _from_viewer(self, room: Room, ws: web.WebSocketResponse,
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
        if room.bridge is not None and not room.bridge.closed:
            await room.bridge.send_bytes(frame)

    async def _broadcast(self, room: Room, frame: bytes) -> None:
        targets = set(room.viewers)
        if room.bridge is not None:
            targets.add(room.bridge)
        await self._send_all(targets, frame)

    @staticmethod
    async def _send_all(targets: set[web.WebSocketResponse], frame: bytes) -> None:
        for target in list(targets):
            if not target.closed:
                with contextlib.suppress(ConnectionError):
                    await target.send_bytes(frame)

    # ---- ending -----------------------------------------------------------------------

    async def end(self, session_id: str, reason: str, status: str = "ended") -> None:
        """End a session: record it, tell everyone, close every connection to it."""
        await end_session(self.db, session_id, reason, status)
        await self._close_room(session_id, reason, status)

    async def _close_room(self, session_id: str, reason: str, status: str) -> None:
        """Tell this instance's connections to a session that it ended, and close them."""
        room = self.rooms.pop(session_id, None)
        if room is None:
            return
        frame = orjson.dumps({"type": "status", "ended": True, "reason": reason})
        connections = [*room.viewers, *([room.bridge] if room.bridge else [])]
        for ws in connections:
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
        for session_id in list(self.rooms):
            session = await get_session(self.db, session_id)
            if session is None or not session.is_open:
                status = session.status if session is not None else "ended"
                await self._close_room(session_id, status, status)
                closed += 1
        return closed

    async def run_room_check(self) -> None:
        """Every `[remote] sweep_interval`: `close_ended_rooms` (this instance's own)."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.close_ended_rooms()
            except Exception:  # keep checking; a database outage now is fine later
                log.exception("remote room check failed")

    async def close_all(self) -> None:
        for room in list(self.rooms.values()):
            for ws in [*room.viewers, *([room.bridge] if room.bridge else [])]:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        self.rooms.clear()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


REMOTE_HUB = web.AppKey("remote_hub", RemoteHub)
"""The remote-control WebSocket hub (app.py: `remote_hub`)."""
