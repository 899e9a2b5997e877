"""Something about a user changed: a tiny publish/subscribe bus instead of callbacks.

Whoever changes a user's keys, plan, status or billing period publishes `UserChanged`;
whoever caches something about users (the key cache, the limits) subscribes and drops or
resets what it holds. Publishers never import subscribers, so payments need not know the
key cache exists. In one process delivery is a direct call (`UserEvents`).

With several instances (`[redis] url`), `RedisEvents` also sends each event on the Redis
channel `llmapi:user-changed`; every other instance delivers it to its own subscribers with
`origin = REMOTE`, and its key cache reloads at once: a key revoked, a user suspended or a
plan changed on one instance (or by the CLI, `announce`) is felt everywhere within
milliseconds. Redis pub/sub delivers at most once; a message lost while an instance is
disconnected is covered by the key cache's own poll of the database (every 0.4 s), and a
reconnect triggers one poll at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("llmapi.events")

CHANNEL = "llmapi:user-changed"
RECONNECT_DELAY = 0.5
REMOTE: object = object()
"""`UserChanged.origin` of an event heard from another instance (or the CLI)."""
_UNREACHABLE = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class UserChanged:
    # 0: "something changed, user unknown" (the CLI's word): reload whatever changed
    user_id: int
    # A paid order started a new billing period (start, end): counters begin at zero now.
    period: tuple[float, float] | None = None
    # Who published it, so a subscriber can skip the changes it announced itself.
    origin: object = None
    # False: every instance finds this change by itself (the key cache's poll): not sent
    # to the other instances.
    broadcast: bool = True


Subscriber = Callable[[UserChanged], Awaitable[None] | None]
"""Called with each event; may be a coroutine function (awaited in turn)."""


class UserEvents:
    """In-process delivery: every subscriber is called, in subscription order."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def publish(self, event: UserChanged) -> None:
        """Deliver to every subscriber; one failing subscriber does not stop the others."""
        await self.deliver(event)

    async def deliver(self, event: UserChanged) -> None:
        for subscriber in self._subscribers:
            try:
                result = subscriber(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("subscriber %r failed on %r", subscriber, event)

    async def run(self) -> None:
        """Nothing to listen to in one process."""
        return None

    async def close(self) -> None:
        return None


def _message(instance: str, event: UserChanged) -> bytes:
    return orjson.dumps({"from": instance, "user_id": event.user_id,
                         "period": list(event.period) if event.period else None})


class RedisEvents(UserEvents):
    """In-process delivery plus the Redis channel shared by every instance."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        super().__init__()
        self.instance = secrets.token_hex(6)
        self.timeout = timeout
        self._publisher: Redis = Redis.from_url(url, socket_timeout=timeout,
                                                socket_connect_timeout=timeout)
        # no read timeout on the listening connection: it is idle most of the time
        self._listener: Redis = Redis.from_url(url, socket_connect_timeout=timeout)
        self.connected = asyncio.Event()
        self.heard = 0
        self._up: bool | None = None

    async def publish(self, event: UserChanged) -> None:
        await self.deliver(event)
        if not event.broadcast or event.origin is REMOTE:
            return
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self._publisher.publish(CHANNEL, _message(self.instance, event))
        except _UNREACHABLE as exc:  # the other instances' polls still see the change
            log.warning("could not announce the change of user %d on Redis (%s); the "
                        "other instances see it by polling within a second",
                        event.user_id, type(exc).__name__)

    def _state(self, up: bool, exc: BaseException | None = None) -> None:
        """Log each change of the listener's state once."""
        if up == self._up:
            return
        self._up = up
        if up:
            log.info("listening for user changes on Redis (%s)", CHANNEL)
        else:
            log.error("user-change channel on Redis lost (%s: %s); polling the database "
                      "until it is back", type(exc).__name__, exc)

    async def run(self) -> None:
        """Listen on the channel; reconnect after a loss and poll once (what was sent
        meanwhile is lost to pub/sub, not to the database)."""
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._state(True)
                self.connected.set()
                await self.deliver(UserChanged(0, origin=REMOTE, broadcast=False))
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        await self._heard(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                self._state(False, exc)
                await asyncio.sleep(RECONNECT_DELAY)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _heard(self, data: Any) -> None:
        try:
            payload = orjson.loads(data)
            if payload.get("from") == self.instance:
                return
            period = payload.get("period")
            event = UserChanged(int(payload.get("user_id") or 0),
                                (float(period[0]), float(period[1])) if period else None,
                                origin=REMOTE, broadcast=False)
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, IndexError):
            log.warning("ignored a malformed message on %s", CHANNEL)
            return
        self.heard += 1
        await self.deliver(event)

    async def close(self) -> None:
        await self._publisher.aclose()
        await self._listener.aclose()


async def announce(url: str, user_id: int = 0, timeout: float = 0.5) -> bool:
    """From outside a gateway (the CLI): tell every instance that something changed.
    False when Redis could not be reached (the instances' polls still see the change)."""
    client: Redis = Redis.from_url(url, socket_timeout=timeout,
                                   socket_connect_timeout=timeout)
    try:
        async with asyncio.timeout(timeout * 2):
            await client.publish(CHANNEL, _message("cli", UserChanged(user_id)))
        return True
    except _UNREACHABLE:
        return False
    finally:
        await client.aclose()


USER_EVENTS = web.AppKey("user_events", UserEvents)
"""The user-changed bus (app.py: `user_events`)."""
