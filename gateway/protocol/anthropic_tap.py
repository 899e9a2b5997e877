"""Watch an Anthropic SSE stream passing through untouched and record its usage and ending.

Used on the pass-through path (Anthropic-protocol upstream): the bytes go to the client as
they are, and the tap only reads them. It is cheap because only `message_start`,
`message_delta`, `message_stop` and `error` are ever decoded: the token-by-token
`content_block_delta` events are skipped by the parser (`feed`) or, for blocks of whole
events (`feed_complete`, what the pass-through uses), not even parsed.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.protocol.sse import SSEEvent, SSEParser
from gateway.protocol.usage import Usage

log = logging.getLogger(__name__)

_WATCHED = ("message_start", "message_delta", "message_stop", "error")
_MARKERS = tuple((f"event: {name}\n".encode(), name) for name in _WATCHED)


def _data_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value[:1] == b" " else value
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class AnthropicUsageTap:
    """Records usage, stop reason, message_stop and error events of one Anthropic stream."""

    def __init__(self) -> None:
        self._parser = SSEParser(only_events=_WATCHED)
        self._counts: dict[str, int] = dict.fromkeys(_USAGE_FIELDS, 0)
        self.saw_message_start = False
        self.saw_message_stop = False
        self.stop_reason: str | None = None
        self.error: tuple[str, str] | None = None

    @property
    def usage(self) -> Usage:
        """Usage as reported so far (message_delta values override message_start ones)."""
        counts = self._counts
        return Usage(
            input_tokens=counts["input_tokens"],
            output_tokens=counts["output_tokens"],
            cache_read_input_tokens=counts["cache_read_input_tokens"],
            cache_creation_input_tokens=counts["cache_creation_input_tokens"],
        )

    def feed(self, chunk: bytes) -> None:
        """Look at the next bytes sent to the client."""
        for event in self._parser.feed(chunk):
            self._on_event(event)

    def feed_complete(self, block: bytes) -> None:
        """Look at `block`, which holds whole events only (the pass-through cuts at event
        boundaries). A block that names none of the watched events, which is nearly every
        block of a long answer, costs one substring scan; a block in the canonical framing
        Anthropic-compatible servers send (`event: NAME\n`, LF line ends) has just its
        watched events cut out with `find`; anything else goes through the full parser."""
        if b"message_" not in block and b"error" not in block:
            return
        if b"\r" in block or b"event:m" in block or b"event:e" in block:
            parser = SSEParser(only_events=_WATCHED)
            for event in [*parser.feed(block), *parser.close()]:
                self._on_event(event)
            return
        found: list[tuple[int, SSEEvent]] = []
        for marker, name in _MARKERS:
            start = block.find(marker)
            while start != -1:
                end = block.find(b"\n\n", start)
                end = len(block) if end == -1 else end
                if start == 0 or block[start - 1] == 10:  # at a line start
                    lines = block[start:end].split(b"\n")
                    data = b"\n".join(_data_value(line) for line in lines
                                      if line.startswith(b"data:"))
                    found.append((start, SSEEvent(name, data.decode("utf-8", "replace"))))
                start = block.find(marker, end)
        for _, event in sorted(found, key=lambda item: item[0]):  # stream order
            self._on_event(event)

    def close(self) -> None:
        """Upstream EOF: look at a final event that lacked its blank line."""
        for event in self._parser.close():
            self._on_event(event)

    def _on_event(self, event: SSEEvent) -> None:
        name = event.event
        if name == "message_stop":
            self.saw_message_stop = True
            return
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            log.warning("undecodable %s event from an Anthropic upstream", name)
            return
        if not isinstance(data, dict):
            return
        if name == "message_start":
            self.saw_message_start = True
            message = data.get("message")
            if isinstance(message, dict):
                self._record(message.get("usage"))
        elif name == "message_delta":
            self._record(data.get("usage"))
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        else:
            error = data.get("error")
            if isinstance(error, dict):
                error_type = str(error.get("type") or "api_error")
                self.error = (error_type, str(error.get("message") or ""))
            else:
                self.error = ("api_error", str(error or ""))

    def _record(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        counts = self._counts
        for key in _USAGE_FIELDS:
            value = usage.get(key)
            # Later events override earlier ones; null (sent by some proxies) keeps the old value.
            if isinstance(value, int):
                counts[key] = value
