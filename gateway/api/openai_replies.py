"""Replies in the OpenAI client's format, whichever protocol the upstream spoke.

Each class implements `gateway.providers.base.Reply`, so `relay` (gateway/api/messages.py)
writes and accounts them exactly like an Anthropic reply:

- `ChatUpstreamStream`: an openai-protocol upstream's Chat stream. Its events go to a
  *sink*: `ChatSink` forwards each event's data bytes untouched (Chat ingress; the usage
  chunk the gateway asked for is held back when the client did not ask), `ResponsesSink`
  converts them to Responses events.
- `ChatUpstreamBody`: the same upstream, non-stream.
- `FromAnthropicStream` / `from_anthropic_body`: any Anthropic-speaking provider's reply
  (anthropic protocol, demo), converted to Chat chunks and then to the sink.

Failure after the first byte follows the client protocol: a Chat stream ends with a
`data: {"error": ...}` payload (the OpenAI SDKs raise APIError on it), a Responses stream
with `response.failed`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from gateway.protocol.anthropic_to_chat import AnthropicToChat, message_to_completion
from gateway.protocol.chat_stream_reader import ChatStreamReader, Pair
from gateway.protocol.chat_to_responses import ChatToResponses, completion_to_response
from gateway.protocol.openai_errors import stream_error_payload
from gateway.protocol.openai_response import usage_from_openai
from gateway.protocol.responses_to_chat import ResponsesContext
from gateway.protocol.usage import Usage
from gateway.providers.base import Reply, UpstreamError
from gateway.providers.http import BufferedReply, UpstreamResponse, UpstreamStream

EOF_BEFORE_FINISH = "the upstream stream ended before a finish_reason"
DONE = b"data: [DONE]\n\n"


class Sink(Protocol):
    """Turns Chat chunk pairs into the client's stream bytes."""

    def feed(self, pairs: list[Pair]) -> bytes: ...

    def end(self) -> bytes: ...

    def fail(self, error_type: str, message: str) -> bytes: ...


class ChatSink:
    """Chat ingress: `data:` events as the client expects them, `[DONE]` at the end."""

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self.ended = False

    def feed(self, pairs: list[Pair]) -> bytes:
        out = []
        for raw, chunk in pairs:
            if self.ended:
                break
            if "error" in chunk and "choices" not in chunk:
                self.ended = True
            elif not self._include_usage and chunk.get("choices") == [] and "usage" in chunk:
                continue  # the gateway asked for usage for its accounting, the client did not
            out.append(b"data: " + (raw if raw is not None else orjson.dumps(chunk)) + b"\n\n")
        return b"".join(out)

    def end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        return DONE

    def fail(self, error_type: str, message: str) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        return b"data: " + orjson.dumps({"error": stream_error_payload(error_type, message)}) \
            + b"\n\n"


class ResponsesSink:
    """Responses ingress: typed events from `ChatToResponses`."""

    def __init__(self, ctx: ResponsesContext, response_id: str, created_at: int) -> None:
        self.conv = ChatToResponses(ctx, response_id, created_at)

    def _start(self) -> bytes:
        return b"" if self.conv.started else self.conv.start()

    def feed(self, pairs: list[Pair]) -> bytes:
        if not pairs:  # nothing from the upstream yet: failover is still possible
            return b""
        head = self._start()
        return head + self.conv.feed([chunk for _, chunk in pairs])

    def end(self) -> bytes:
        return self._start() + self.conv.end()

    def fail(self, error_type: str, message: str) -> bytes:
        code = "rate_limit_exceeded" if error_type == "rate_limit_error" else "server_error"
        return self._start() + self.conv.fail(message, code)

    @property
    def ended(self) -> bool:
        return self.conv.ended


class ChatUpstreamStream(UpstreamStream):
    """An openai-protocol upstream's Chat stream, out through a sink."""

    def __init__(self, response: UpstreamResponse, provider: str, sink: Sink,
                 input_estimate: int) -> None:
        self._reader = ChatStreamReader()
        self._sink = sink
        self._estimate = input_estimate
        self._error: tuple[str, str] | None = None
        self._ended = False
        self._output_chars = 0
        super().__init__(response, provider)

    def _take(self, pairs: list[Pair]) -> bytes:
        for _, chunk in pairs:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict):
                    self._output_chars += len(str(delta.get("content") or "")) + \
                        len(str(delta.get("reasoning_content") or ""))
        out = self._sink.feed(pairs)
        reader = self._reader
        if reader.error is not None and self._error is None:
            self._error = ("overloaded_error", reader.error)
            self._ended = True
            return out
        if reader.done and not self._ended:
            self._ended = True
            out += self._sink.end()
        return out

    def _on_data(self, data: bytes) -> bytes:
        return self._take(self._reader.feed(data))

    def _on_eof(self) -> bytes:
        out = self._take(self._reader.close())
        if self._ended:
            return out
        if self._reader.finish_reason is not None:  # no [DONE], but the answer was whole
            self._ended = True
            return out + self._sink.end()
        return out + self.abort("api_error", EOF_BEFORE_FINISH)

    def _complete(self) -> bool:
        return self._ended

    def _early_failure(self) -> UpstreamError | None:
        if self._error is None or self._reader.chunks:
            return None
        return UpstreamError(self._provider, "stream_error", self._error[1],
                             client_status=529, error_type="overloaded_error", retryable=True)

    @property
    def usage(self) -> Usage:
        usage = usage_from_openai(self._reader.usage)
        if usage is None:  # the upstream reported nothing: estimate, and say so
            usage = Usage(input_tokens=self._estimate,
                          output_tokens=max(1, -(-self._output_chars // 4)), estimated=True)
        return usage

    @property
    def failed(self) -> tuple[str, str] | None:
        return self._error

    def abort(self, error_type: str, message: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        self._error = (error_type, message)
        return self._sink.fail(error_type, message)


class Buffered(BufferedReply):
    """A complete non-stream answer, already in the client's format; closing it closes the
    upstream reply it was made from, if any."""

    def __init__(self, body: bytes, usage: Usage, inner: Reply | None = None) -> None:
        super().__init__(body, usage)
        self._inner = inner

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def chat_upstream_body(completion: dict[str, Any], raw: bytes,
                       responses: tuple[ResponsesContext, str] | None) -> Buffered:
    """A non-stream Chat completion for the Chat ingress (bytes untouched) or converted."""
    usage = usage_from_openai(completion.get("usage")) or Usage(estimated=True)
    if responses is None:
        return Buffered(raw, usage)
    ctx, response_id = responses
    return Buffered(orjson.dumps(completion_to_response(completion, ctx, response_id,
                                                        int(time.time()))), usage)


class FromAnthropicStream:
    """An Anthropic SSE reply (anthropic protocol, demo) out as Chat chunks through a sink."""

    stream = True
    body = b""

    def __init__(self, inner: Reply, conv: AnthropicToChat, sink: Sink) -> None:
        self._inner = inner
        self._conv = conv
        self._sink = sink
        self._ended = False

    def _pairs(self, chunks: list[dict[str, Any]]) -> bytes:
        out = self._sink.feed([(None, c) for c in chunks])
        if self._conv.done and not self._ended:
            self._ended = True
            if self._conv.error is None:
                out += self._sink.end()
        return out

    async def chunks(self) -> AsyncIterator[bytes]:
        async for data in self._inner.chunks():
            if self._ended:
                break
            out = self._pairs(self._conv.feed(data))
            if out:
                yield out
        if not self._ended:
            out = self._pairs(self._conv.finish())
            if out:
                yield out

    @property
    def usage(self) -> Usage:
        return self._inner.usage

    @property
    def failed(self) -> tuple[str, str] | None:
        return self._inner.failed or self._conv.error

    def abort(self, error_type: str, message: str) -> bytes:
        self._inner.abort(error_type, message)  # marks the inner reply as failed
        if self._ended:
            return b""
        self._ended = True
        self._conv.error = self._conv.error or (error_type, message)
        return self._sink.fail(error_type, message)

    async def close(self) -> None:
        await self._inner.close()


def from_anthropic_body(inner: Reply, completion_id: str, model: str,
                        responses: tuple[ResponsesContext, str] | None) -> Buffered:
    """A non-stream Anthropic message as a Chat completion or a Responses response."""
    try:
        message = orjson.loads(inner.body)
    except orjson.JSONDecodeError:
        message = {}
    if not isinstance(message, dict):
        message = {}
    created = int(time.time())
    completion = message_to_completion(message, completion_id, model, created,
                                       keep_signature=responses is not None)
    if responses is None:
        return Buffered(orjson.dumps(completion), inner.usage, inner)
    ctx, response_id = responses
    return Buffered(orjson.dumps(completion_to_response(completion, ctx, response_id,
                                                        created)), inner.usage, inner)
