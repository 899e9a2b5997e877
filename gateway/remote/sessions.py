"""Remote-control sessions in the database: create, look up with ownership, end, expire."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.store.base import Store

OPEN_STATUSES = ("waiting", "connected")


@dataclass(frozen=True, slots=True)
class RemoteSession:
    id: str
    user_id: int
    status: str  # waiting | connected | ended | expired
    created_at: float
    expires_at: float
    ended_at: float | None
    end_reason: str | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES and self.ended_at is None \
            and time.time() < self.expires_at


def _session(row: Any) -> RemoteSession:
    return RemoteSession(id=row["id"], user_id=row["user_id"], status=row["status"],
                         created_at=row["created_at"], expires_at=row["expires_at"],
                         ended_at=row["ended_at"], end_reason=row["end_reason"])


async def create_session(db: Store, user_id: int, hours: float) -> RemoteSession:
    """A new waiting session; its id is 128 random bits (and still grants nothing alone)."""
    now = time.time()
    session_id = "rc_" + secrets.token_urlsafe(16)
    await db.insert("remote_session_insert", {"id": session_id, "user_id": user_id,
                                              "now": now, "expires_at": now + hours * 3600})
    return RemoteSession(session_id, user_id, "waiting", now, now + hours * 3600, None, None)


async def get_session(db: Store, session_id: str) -> RemoteSession | None:
    row = await db.fetch_one("remote_session_by_id", {"id": session_id})
    return _session(row) if row else None


async def owned_session(db: Store, session_id: str, user_id: int) -> RemoteSession | None:
    """The session if this user owns it; None otherwise (never say which)."""
    found = await get_session(db, session_id)
    return found if found is not None and found.user_id == user_id else None


async def sessions_of(db: Store, user_id: int, limit: int = 50) -> list[RemoteSession]:
    rows = await db.fetch_all("remote_sessions_of_user", {"user_id": user_id, "limit": limit})
    return [_session(r) for r in rows]


async def set_status(db: Store, session_id: str, status: str) -> None:
    await db.execute("remote_session_set_status", {"id": session_id, "status": status})


async def end_session(db: Store, session_id: str, reason: str,
                      status: str = "ended") -> bool:
    """Record the end once; False when it had already ended."""
    return await db.execute("remote_session_end", {"id": session_id, "status": status,
                                                   "now": time.time(), "reason": reason}) > 0


async def expire_sessions(db: Store) -> list[str]:
    """End every session past its expiry; returns their ids."""
    rows = await db.fetch_all("remote_sessions_expired", {"now": time.time()})
    expired = []
    for row in rows:
        if await end_session(db, row["id"], "expired", status="expired"):
            expired.append(row["id"])
    return expired


async def connection_opened(db: Store, session_id: str, user_id: int, role: str) -> int:
    return await db.insert("remote_connection_insert", {
        "session_id": session_id, "user_id": user_id, "role": role, "now": time.time()})


async def connection_closed(db: Store, connection_id: int, reason: str) -> None:
    await db.execute("remote_connection_end", {"id": connection_id, "now": time.time(),
                                               "reason": reason})
