"""Read an upstream Chat Completions stream into chunk objects, keeping each event's raw data.

For openai-protocol upstreams serving the OpenAI ingress: the Chat ingress forwards each
event's data bytes untouched (nothing re-serialized), the Responses ingress converts the
parsed chunks. Either way this reader is the one place that notices the end (`[DONE]`), the
finish reason, the usage and an `{"error": ...}` payload. SSE framing rules (comments,
CR/LF variants, `data:` without a space) are `SSEParser`'s.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol.sse import SSEParser

Pair = tuple[bytes | None, dict[str, Any]]
"""(raw data bytes to forward as is, or None; the parsed chunk)."""


class ChatStreamReader:
    """Incremental reader: `feed` per upstream read, `close` at EOF."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.done = False  # `data: [DONE]` seen
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.chunks = 0

    def feed(self, data: bytes) -> list[Pair]:
        return self._read(self._parser.feed(data))

    def close(self) -> list[Pair]:
        return self._read(self._parser.close())

    def _read(self, events: list[Any]) -> list[Pair]:
        out: list[Pair] = []
        for event in events:
            if self.done:
                break
            text = event.data.strip()
            if not text:
                continue
            if text == "[DONE]":
                self.done = True
                break
            try:
                chunk = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # not JSON: nothing a client could use either
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk and "choices" not in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                self.error = str(message or "the upstream reported an error")[:500]
            else:
                self.chunks += 1
                if isinstance(chunk.get("usage"), dict):
                    self.usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("finish_reason"):
                        self.finish_reason = str(choice["finish_reason"])
            out.append((text.encode(), chunk))
        return out
