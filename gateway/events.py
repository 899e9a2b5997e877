"""Something about a user changed: a tiny publish/subscribe bus instead of callbacks.

Whoever changes a user's keys, plan, status or billing period publishes `UserChanged`;
whoever caches something about users (the key cache, the limits) subscribes and drops or
resets what it holds. Publishers never import subscribers, so payments need not know the
key cache exists. In one process delivery is a direct call; a bus shared by several
instances (issue 16: Redis pub/sub) implements the same two methods.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("llmapi.events")


@dataclass(frozen=True, slots=True)
class UserChanged:
    user_id: int
    # A paid order started a new billing period (start, end): counters begin at zero now.
    period: tuple[float, float] | None = None
    # Who published it, so a subscriber can skip the changes it announced itself.
    origin: object = None


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
        for subscriber in self._subscribers:
            try:
                result = subscriber(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("subscriber %r failed on %r", subscriber, event)


USER_EVENTS = web.AppKey("user_events", UserEvents)
"""The user-changed bus (app.py: `user_events`)."""
