"""The built-in `demo` provider: canned answers with no network, so a fresh install works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.config import ProviderConfig
from gateway.protocol.usage import Usage
from gateway.providers.base import Call

DEMO_TEXT = (
    "Hello from the llmapi demo provider. This answer was generated locally by the gateway, "
    "without calling any model. To use a real model, add a [[providers]] table to your "
    "config file (for example protocol = \"openai\" with the base_url and api_key of "
    "DashScope or DeepSeek) and start the gateway with --config FILE or LLMAPI_CONFIG."
)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class DemoReply:
    """A finished answer, streamed word by word when asked."""

    def __init__(self, call: Call, text: str) -> None:
        self.stream = call.stream
        self._call = call
        self._text = text
        self._words = text.split(" ")
        self._usage = Usage(input_tokens=call.input_estimate, output_tokens=len(self._words))
        self.body = b"" if call.stream else orjson.dumps(self._message(final=True))

    def _message(self, final: bool) -> dict[str, Any]:
        return {
            "id": self._call.message_id, "type": "message", "role": "assistant",
            "model": self._call.client_model,
            "content": [{"type": "text", "text": self._text}] if final else [],
            "stop_reason": "end_turn" if final else None, "stop_sequence": None,
            "usage": {"input_tokens": self._usage.input_tokens,
                      "output_tokens": self._usage.output_tokens if final else 0},
        }

    async def chunks(self) -> AsyncIterator[bytes]:
        yield (_event("message_start", {"type": "message_start",
                                        "message": self._message(final=False)})
               + _event("ping", {"type": "ping"})
               + _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}}))
        for i, word in enumerate(self._words):
            piece = word if i == 0 else " " + word
            yield _event("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}})
        yield (_event("content_block_stop", {"type": "content_block_stop", "index": 0})
               + _event("message_delta", {
                   "type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": self._usage.output_tokens}})
               + _event("message_stop", {"type": "message_stop"}))

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def failed(self) -> tuple[str, str] | None:
        return None

    def abort(self, error_type: str, message: str) -> bytes:
        return _event("error", {"type": "error",
                                "error": {"type": error_type, "message": message}})

    async def close(self) -> None:
        return None


class DemoProvider:
    """Answers every request locally with `DEMO_TEXT`."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    async def send(self, call: Call) -> DemoReply:
        return DemoReply(call, DEMO_TEXT)

    async def count_tokens(self, call: Call) -> int | None:
        return None

    async def close(self) -> None:
        return None
