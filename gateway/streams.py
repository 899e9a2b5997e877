"""The client streams open right now, and the one task that keeps quiet ones alive.

A proxy or client may close a connection that stays silent while an upstream thinks, so
any stream silent for `ping_after` seconds gets an Anthropic `ping` event. The same
registry feeds the `llmapi_active_streams` gauge and the health report.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
PING_AFTER = 15.0  # seconds of silence before a keep-alive ping


class OpenStreams:
    """Open SSE responses -> monotonic time of their last write."""

    def __init__(self, ping_after: float = PING_AFTER) -> None:
        self.ping_after = ping_after
        self.last_write: dict[web.StreamResponse, float] = {}

    def __len__(self) -> int:
        return len(self.last_write)

    def opened(self, response: web.StreamResponse) -> None:
        self.last_write[response] = time.monotonic()

    def wrote(self, response: web.StreamResponse) -> None:
        self.last_write[response] = time.monotonic()

    def closed(self, response: web.StreamResponse) -> None:
        self.last_write.pop(response, None)

    async def ping_quiet_ones(self) -> None:
        """Send one `ping` to every stream silent for `ping_after` seconds."""
        now = time.monotonic()
        for response, last in list(self.last_write.items()):
            if now - last >= self.ping_after and response in self.last_write:
                self.last_write[response] = now
                try:
                    await response.write(PING)
                except (ConnectionError, RuntimeError):
                    self.last_write.pop(response, None)

    async def run_pings(self) -> None:
        while True:
            await asyncio.sleep(self.ping_after / 3)
            await self.ping_quiet_ones()


STREAMS = web.AppKey("streams", OpenStreams)
"""The open client streams (app.py: `streams`)."""
