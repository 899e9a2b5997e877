"""The built-in `demo` provider: canned answers with no network, so a fresh install works."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.config import ProviderConfig
from gateway.protocol import anthropic_events as events
from gateway.protocol.usage import Usage
from gateway.providers.base import Call
from gateway.providers.http import BufferedReply

DEMO_TEXT = (
    "Hello from the llmapi demo provider. This answer was generated locally by the gateway, "
    "without calling any model. To use a real model, add a [[providers]] table to your "
    "config file (for example protocol = \"openai\" with the base_url and api_key of "
    "DashScope or DeepSeek) and start the gateway with --config FILE or LLMAPI_CONFIG."
)


class DemoReply(BufferedReply):
    """A finished answer, streamed word by word when asked."""

    def __init__(self, call: Call, text: str) -> None:
        self._call = call
        self._text = text
        self._words = text.split(" ")
        usage = Usage(input_tokens=call.input_estimate, output_tokens=len(self._words))
        body = b"" if call.stream else orjson.dumps({
            "id": call.message_id, "type": "message", "role": "assistant",
            "model": call.client_model, "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        })
        super().__init__(body, usage)
        self.stream = call.stream

    async def chunks(self) -> AsyncIterator[bytes]:
        if not self.stream:
            yield self.body
            return
        yield (events.message_start(self._call.message_id, self._call.client_model,
                                    self.usage.input_tokens)
               + events.PING + events.text_block_start(0))
        for i, word in enumerate(self._words):
            yield events.content_block_delta(0, "text_delta", word if i == 0 else " " + word)
        yield (events.block_stop(0)
               + events.message_delta("end_turn", None,
                                      {"output_tokens": self.usage.output_tokens})
               + events.MESSAGE_STOP)

    def abort(self, error_type: str, message: str) -> bytes:
        return events.error_event(error_type, message)


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
