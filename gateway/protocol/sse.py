"""Incremental Server-Sent Events parser: raw bytes in any split, complete events out.

Follows the WHATWG event-stream rules that matter to a proxy: CRLF, CR and LF line endings,
`:` comment lines, `field:value` with one optional space after the colon, several `data:`
lines joined with `\\n`, unknown fields (`id`, `retry`, ...) ignored, a leading UTF-8 BOM
dropped. Unlike a browser it also delivers a final event that lacks its blank line at EOF
(`close()`), because a truncated upstream stream must still be converted as far as it went.

This is the gateway's hot path, so the work is done with bytes methods (`replace`, `rfind`,
`split`) that run in C; Python code runs once per event, never once per character. UTF-8 is
only decoded per complete event, so a multi-byte character split across reads is harmless.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A


MAX_EVENT_BYTES = 8 * 1024 * 1024
"""The largest event a parser buffers (a whole tool call's arguments fit many times over);
an upstream that never ends an event is cut here instead of growing memory to its size."""


class SSEEventTooLarge(ValueError):
    """The stream went on for `MAX_EVENT_BYTES` without ending an event."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        super().__init__(f"an SSE event longer than {limit} bytes (no blank line ended it)")


class SSEEvent(NamedTuple):
    """One dispatched event: its `event:` name (None when absent) and its joined data."""

    event: str | None
    data: str


class SSEParser:
    """Turns a byte stream into `SSEEvent`s, buffering whatever is not yet a complete event.

    `only_events`, when given, drops events whose name is not in it before their data is
    decoded (events without an `event:` line are dropped too); the Anthropic usage tap uses
    it to skip the bulk of a stream cheaply.
    """

    __slots__ = ("_after_cr", "_at_start", "_limit", "_only", "_tail")

    def __init__(self, only_events: Collection[str] | None = None,
                 max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._limit = max_event_bytes
        # Bytes of the event still being received, line endings already normalised to LF.
        self._tail = bytearray()
        # The previous read ended with CR: a LF at the start of the next read is the second
        # half of that CRLF and must not count as another line break.
        self._after_cr = False
        self._at_start = True
        self._only = frozenset(only_events) if only_events is not None else None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume the next read; return the events it completed (possibly none)."""
        if not data:
            return []
        if self._after_cr:
            self._after_cr = False
            if data[0] == _LF:
                data = data[1:]
                if not data:
                    return []
        if b"\r" in data:
            self._after_cr = data[-1] == _CR
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        tail = self._tail
        if tail:
            # The buffered part held no blank line, so only the seam and the new bytes
            # need searching; this keeps many tiny reads of one big event linear.
            start = len(tail) - 1
            tail += data
            end = tail.rfind(b"\n\n", start)
            if end < 0:
                if len(tail) > self._limit:
                    raise SSEEventTooLarge(self._limit)
                return []
            complete = bytes(tail[:end])
            del tail[: end + 2]
        else:
            end = data.rfind(b"\n\n")
            if end < 0:
                tail += data
                if len(tail) > self._limit:
                    raise SSEEventTooLarge(self._limit)
                return []
            complete = data[:end]
            if end + 2 < len(data):
                tail += data[end + 2 :]
        return self._parse(complete)

    def close(self) -> list[SSEEvent]:
        """Flush at EOF: a last event without its terminating blank line still counts."""
        rest = bytes(self._tail)
        self._tail.clear()
        self._after_cr = False
        return self._parse(rest) if rest else []

    def _parse(self, complete: bytes) -> list[SSEEvent]:
        """Parse LF-normalised text made of whole events separated by blank lines."""
        if self._at_start:
            self._at_start = False
            if complete.startswith(_BOM):
                complete = complete[3:]
        only = self._only
        events: list[SSEEvent] = []
        for block in complete.split(b"\n\n"):
            # Fast path: the usual OpenAI event is one `data:` line and nothing else.
            if block[:5] == b"data:" and b"\n" not in block:
                if only is None:
                    value = block[6:] if block[5:6] == b" " else block[5:]
                    events.append(SSEEvent(None, value.decode("utf-8", "replace")))
                continue
            event = self._parse_block(block, only)
            if event is not None:
                events.append(event)
        return events

    @staticmethod
    def _parse_block(block: bytes, only: frozenset[str] | None) -> SSEEvent | None:
        """Parse one event made of several lines; None if it carries no data."""
        name: str | None = None
        data_lines: list[bytes] = []
        for line in block.split(b"\n"):
            if not line or line[0] == _COLON:
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data_lines.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace") or None
            # `id`, `retry` and unknown fields do not affect conversion.
        if not data_lines:
            return None
        if only is not None and name not in only:
            return None
        return SSEEvent(name, b"\n".join(data_lines).decode("utf-8", "replace"))
