"""Provider for `protocol = "anthropic"`: pass-through to an Anthropic-compatible endpoint.

The model name is rewritten, `role: "system"` messages are folded into `system`, and
tool-call ids are made unique for the client (Kimi's Anthropic endpoint repeats
`functions.NAME:i` on every turn; gateway/protocol/tool_ids.py) and decoded again on the way
up. Otherwise the upstream's stream bytes go to the client untouched as they arrive:
`AnthropicUsageTap` watches them for usage, and only `content_block_start` events of tool
calls are re-serialized.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.config import ProviderConfig
from gateway.errors import STATUS_OF
from gateway.protocol.anthropic_events import error_event
from gateway.protocol.anthropic_tap import AnthropicUsageTap
from gateway.protocol.cache_normalize import normalize_volatile_system
from gateway.protocol.openai_request import without_client_metadata
from gateway.protocol.openai_response import anthropic_error_from_openai
from gateway.protocol.sse import MAX_EVENT_BYTES, SSEEventTooLarge
from gateway.protocol.tool_ids import (
    events_with_client_ids,
    history_with_upstream_ids,
    id_salt,
    message_with_client_ids,
)
from gateway.protocol.upstream_checks import anthropic_message_problem, token_count
from gateway.protocol.usage import Usage
from gateway.providers.base import Call, Reply, UpstreamError
from gateway.providers.http import (
    BufferedReply,
    UpstreamResponse,
    UpstreamStream,
    client_session,
    malformed_answer,
    open_upstream,
    read_body,
    status_error,
    transport_error,
)

TRUNCATED = "the upstream stream ended before message_stop"


class PassThroughReply(UpstreamStream):
    """Forwards complete SSE events as they arrive, tapping usage on the way."""

    def __init__(self, response: UpstreamResponse, provider: str, salt: str) -> None:
        self._tap = AnthropicUsageTap()
        self._salt = salt
        self._ended = False
        self._deltas = 0  # content_block_delta events seen, for usage of a cut-off stream
        self._tail = bytearray()  # the event still arriving (never holds a separator)
        super().__init__(response, provider)

    def _on_data(self, data: bytes) -> bytes:
        # Forward only up to the last complete event, so a stream that breaks mid-event can
        # still be ended with a clean `error` event instead of a half-written one; the tap
        # then sees whole events only, which lets it skip blocks without usage in them.
        # Only the seam and the new bytes are searched, so an event that arrives in many
        # small reads costs linear time, and one that never ends is cut at MAX_EVENT_BYTES.
        self._deltas += data.count(b'"content_block_delta"')
        tail = self._tail
        if not tail:
            cut = _end_of_events(data, 0)
            if cut == 0:
                tail += data
                self._check_size()
                return b""
            tail += data[cut:]
            block = data[:cut]
        else:
            start = max(len(tail) - 3, 0)
            tail += data
            cut = _end_of_events(tail, start)
            if cut == 0:
                self._check_size()
                return b""
            block = bytes(tail[:cut])
            del tail[:cut]
        block = events_with_client_ids(block, self._salt)
        self._tap.feed_complete(block)
        return block

    def _check_size(self) -> None:
        if len(self._tail) > MAX_EVENT_BYTES:
            raise SSEEventTooLarge(MAX_EVENT_BYTES)

    def _on_eof(self) -> bytes:
        tap = self._tap
        out = bytes(self._tail) + b"\n\n" if self._tail.strip() else b""
        out = events_with_client_ids(out, self._salt)
        tap.feed_complete(out)
        if not (tap.saw_message_stop or tap.error):
            out += self.abort("api_error", TRUNCATED)
        self._ended = True
        return out

    def _early_failure(self) -> UpstreamError | None:
        if self._tap.error is None or self._tap.saw_message_start:
            return None
        error_type, message = self._tap.error
        # The upstream's own type and status: 529 only for a real overload.
        retryable = error_type in ("overloaded_error", "api_error", "rate_limit_error",
                                   "timeout_error")
        return UpstreamError(self._provider, "stream_error", message,
                             client_status=STATUS_OF.get(error_type, 502),
                             error_type=error_type, retryable=retryable)

    @property
    def usage(self) -> Usage:
        """The upstream's figures; for a stream cut off before its `message_delta` (client
        gone, upstream broke) the output is estimated as one token per delta seen."""
        usage = self._tap.usage
        if self._tap.stop_reason is None and self._deltas > usage.output_tokens:
            usage.output_tokens = self._deltas
            usage.estimated = True
        return usage

    @property
    def failed(self) -> tuple[str, str] | None:
        return self._tap.error

    def abort(self, error_type: str, message: str) -> bytes:
        if self._ended or self._tap.saw_message_stop or self._tap.error:
            return b""
        self._ended = True
        self._tap.error = (error_type, message)
        return error_event(error_type, message)

def _end_of_events(data: bytes | bytearray, start: int) -> int:
    """Index just past the last event separator (LF LF or CRLF CRLF) at or after `start`,
    0 when there is none."""
    lf = data.rfind(b"\n\n", start)
    crlf = data.rfind(b"\r\n\r\n", start)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class AnthropicProvider:
    """Relays Messages requests to an Anthropic-compatible upstream."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.url = config.base_url + "/v1/messages"
        self._session = client_session(config)
        key = config.api_key
        # Vendors differ on which header they read; both carry the same provider key.
        self._auth = {"x-api-key": key, "Authorization": f"Bearer {key}"} if key else {}

    def _payload(self, call: Call, body: dict[str, Any]) -> bytes:
        if self.config.normalize_prompt_cache:
            body = normalize_volatile_system(body)
        body = {**body, "model": call.upstream_model}
        body = with_system_messages_folded(body)
        history = history_with_upstream_ids(body.get("messages"))
        if history is not None:
            body["messages"] = history  # the upstream sees its own tool-call ids
        if isinstance(body.get("system"), list):
            body["system"] = without_client_metadata(body["system"])
        if self.config.inject_cache_control:
            body["system"] = with_cache_control(body.get("system"))
        return orjson.dumps(body)

    def _headers(self, call: Call) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self._auth}
        headers["anthropic-version"] = call.headers.get("anthropic-version", "2023-06-01")
        if "anthropic-beta" in call.headers:
            headers["anthropic-beta"] = call.headers["anthropic-beta"]
        return headers

    async def send(self, call: Call) -> Reply:
        call.sent_at = call.sent_at or time.perf_counter()
        response = await open_upstream(self._session, self.config, self.url,
                                       self._payload(call, call.body), self._headers(call))
        if response.status != 200:
            body = await read_body(response, self.config)
            raise status_error(self.config.name, response.status,
                               anthropic_error_from_openai(response.status, body),
                               response.headers.get("retry-after"), body)
        if not call.stream:
            raw = await read_body(response, self.config)
            usage = usage_of_message(raw, self.config.name)  # 502 for a malformed answer
            return BufferedReply(message_with_client_ids(raw, id_salt(call.message_id)), usage)
        reply = PassThroughReply(response, self.config.name, id_salt(call.message_id))
        await reply.start(self.config)
        return reply

    async def count_tokens(self, call: Call) -> int | None:
        if not self.config.count_tokens:
            return None
        body = {k: v for k, v in call.body.items() if k not in ("max_tokens", "stream")}
        try:
            response = await open_upstream(self._session, self.config, self.url + "/count_tokens",
                                           self._payload(call, body), self._headers(call))
            raw = await read_body(response, self.config)
        except UpstreamError:
            return None
        if response.status != 200:
            return None
        try:
            value = orjson.loads(raw).get("input_tokens")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return value if isinstance(value, int) else None

    async def close(self) -> None:
        await self._session.close()


def usage_of_message(raw: bytes, provider: str) -> Usage:
    """The usage of a complete Anthropic message; `malformed_answer` (502) when the body is
    not a message a client could use (gateway/protocol/upstream_checks.py)."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise malformed_answer(provider, "the answer is not JSON") from None
    problem = anthropic_message_problem(message)
    if problem is not None:
        raise malformed_answer(provider, problem)
    usage = message.get("usage") or {}
    return Usage(
        input_tokens=token_count(usage.get("input_tokens")),
        output_tokens=token_count(usage.get("output_tokens")),
        cache_read_input_tokens=token_count(usage.get("cache_read_input_tokens")),
        cache_creation_input_tokens=token_count(usage.get("cache_creation_input_tokens")),
        estimated=not usage,
    )


def with_system_messages_folded(body: dict[str, Any]) -> dict[str, Any]:
    """Claude Code 2.1.154+ puts `role: "system"` entries inside `messages` (mid-conversation
    system messages); DeepSeek's Anthropic endpoint rejects them ("messages[1].role: unknown
    variant `system`, expected `user` or `assistant`", deepseek-ai/awesome-deepseek-agent
    #167), and so does vLLM's (a validation error: "Input should be 'user' or
    'assistant'"). What DashScope's does is not documented (docs/vendors.md). Their text is
    appended to the top-level system prompt, in order, which every Anthropic-compatible
    endpoint takes."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and m.get("role") == "system" for m in messages):
        return body
    system = body.get("system")
    blocks: list[Any] = [{"type": "text", "text": system}] if isinstance(system, str) and \
        system else list(system) if isinstance(system, list) else []
    kept: list[Any] = []
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") == "system"):
            kept.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            if content:
                blocks.append({"type": "text", "text": content})
        elif isinstance(content, list):
            blocks.extend(b for b in content if isinstance(b, dict) and b.get("type") == "text")
    return {**body, "system": blocks, "messages": kept}


def with_cache_control(system: Any) -> Any:
    """Mark the last system block for prompt caching, for upstreams that need it explicit."""
    if isinstance(system, str) and system:
        return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    if isinstance(system, list) and system and isinstance(system[-1], dict):
        return [*system[:-1], {**system[-1], "cache_control": {"type": "ephemeral"}}]
    return system


__all__ = ["AnthropicProvider", "transport_error"]
