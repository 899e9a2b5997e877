"""The `Rooms` seam: who is connected to a remote session, and the fan-out between them.

The hub (gateway/remote/hub.py) decides who may connect and checks every frame; a `Rooms`
implementation only keeps the members of each session's room (one bridge, any number of
viewers), the last `buffer_bytes` of output for viewers who join late, and delivers frames:
output and status to the viewers, input to the bridge.

`LocalRooms` keeps all of that in this process. Several instances work with it as long as
both ends of a session reach the same instance, which the balancer guarantees by hashing
the session id (deploy/haproxy.cfg, docs/deploy.md: "Remote control"). A Redis
implementation (pub/sub per session, buffer in Redis; docs/scale-out.md) would implement
the same methods, so the hub, the pages and the bridge would not change.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from aiohttp import web

Socket = web.WebSocketResponse


@dataclass
class Room:
    """The live side of one remote session in this process."""

    session_id: str
    bridge: Socket | None = None
    viewers: set[Socket] = field(default_factory=set)
    buffer: bytearray = field(default_factory=bytearray)

    def status(self) -> bytes:
        return orjson.dumps({"type": "status", "bridge": self.bridge is not None,
                             "viewers": len(self.viewers)})

    def members(self) -> list[Socket]:
        return [*self.viewers, *([self.bridge] if self.bridge is not None else [])]


class Rooms(Protocol):
    """Membership, replay buffer and delivery for every session's room."""

    async def join_bridge(self, session_id: str, ws: Socket) -> Socket | None:
        """`ws` is the session's bridge now; returns the bridge it replaced (the caller
        closes that one). Everyone in the room gets the new status."""

    async def join_viewer(self, session_id: str, ws: Socket) -> None:
        """Add a viewer: it gets the buffered output first, then everyone the status."""

    async def leave(self, session_id: str, ws: Socket) -> None:
        """Remove a connection (whatever its role); the others get the new status."""

    async def output(self, session_id: str, raw: bytes, frame: bytes) -> None:
        """Bridge output: `raw` joins the replay buffer, `frame` goes to every viewer."""

    async def to_bridge(self, session_id: str, frame: bytes) -> None:
        """A viewer's input or resize, to the session's bridge (dropped when none)."""

    def bridge_connected(self, session_id: str) -> bool:
        """Whether a bridge is connected to this session now."""

    def close_room(self, session_id: str) -> list[Socket]:
        """Forget the room; returns this process's connections to it, for the caller to
        tell and close."""

    def session_ids(self) -> list[str]:
        """Sessions with a room in this process."""


async def send_all(targets: list[Socket], frame: bytes) -> None:
    """`frame` to each open target; a connection that just went away is skipped (its own
    handler records the end)."""
    for target in targets:
        if not target.closed:
            with contextlib.suppress(ConnectionError):
                await target.send_bytes(frame)


class LocalRooms:
    """Rooms in this process's memory (one instance, or sessions routed by id)."""

    def __init__(self, buffer_bytes: int) -> None:
        self.buffer_bytes = buffer_bytes
        self.rooms: dict[str, Room] = {}

    def _room(self, session_id: str) -> Room:
        return self.rooms.setdefault(session_id, Room(session_id))

    async def join_bridge(self, session_id: str, ws: Socket) -> Socket | None:
        room = self._room(session_id)
        old, room.bridge = room.bridge, ws
        await send_all(room.members(), room.status())
        return old if old is not None and old is not ws else None

    async def join_viewer(self, session_id: str, ws: Socket) -> None:
        room = self._room(session_id)
        room.viewers.add(ws)
        if room.buffer:
            await send_all([ws], orjson.dumps({"type": "output", "data": _b64(room.buffer)}))
        await send_all(room.members(), room.status())

    async def leave(self, session_id: str, ws: Socket) -> None:
        room = self.rooms.get(session_id)
        if room is None:
            return
        if room.bridge is ws:
            room.bridge = None
        room.viewers.discard(ws)
        if room.bridge is None and not room.viewers and not room.buffer:
            self.rooms.pop(session_id, None)
        else:
            await send_all(room.members(), room.status())

    async def output(self, session_id: str, raw: bytes, frame: bytes) -> None:
        room = self._room(session_id)
        room.buffer += raw
        overflow = len(room.buffer) - self.buffer_bytes
        if overflow > 0:
            del room.buffer[:overflow]
        await send_all(list(room.viewers), frame)

    async def to_bridge(self, session_id: str, frame: bytes) -> None:
        room = self.rooms.get(session_id)
        if room is not None and room.bridge is not None:
            await send_all([room.bridge], frame)

    def bridge_connected(self, session_id: str) -> bool:
        room = self.rooms.get(session_id)
        return room is not None and room.bridge is not None and not room.bridge.closed

    def close_room(self, session_id: str) -> list[Socket]:
        room = self.rooms.pop(session_id, None)
        return room.members() if room is not None else []

    def session_ids(self) -> list[str]:
        return list(self.rooms)


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode()
