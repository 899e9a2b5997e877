"""Anthropic Messages reply -> OpenAI Chat Completions reply (anthropic-protocol upstreams).

`message_to_completion` converts a whole message; `AnthropicToChat` converts a stream read
by read (raw Anthropic SSE bytes in, Chat Completions chunk objects out; the ingress
serializes them, or hands them on to the Responses converter). Pure, no I/O.
The rules: docs/protocol.md §12.

- text -> `content`; thinking -> `reasoning_content` (the field DeepSeek and Qwen use, which
  Chat clients that show reasoning read); with `keep_signature` the thinking block's
  signature travels in the internal `reasoning_signature` field, for the Responses
  converter only (it becomes a reasoning item's `encrypted_content`).
- every `tool_use` block -> its own `tool_calls[k]` (k counts tool calls, not blocks), first
  fragment with id, type and name and `arguments: ""`, then argument fragments.
- stop_reason end_turn / stop_sequence / pause_turn -> stop, max_tokens -> length,
  tool_use -> tool_calls, refusal -> content_filter.
- usage: prompt_tokens = input + cache reads + cache writes (OpenAI counts the whole
  prompt), `prompt_tokens_details.cached_tokens` = cache reads.
- an `error` event -> a final `{"error": {...}}` payload, as OpenAI ends a broken stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol.openai_errors import stream_error_payload
from gateway.protocol.sse import SSEParser
from gateway.protocol.usage import Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}
TRUNCATED = "the upstream stream ended before message_stop"


def chat_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI `usage` for Anthropic-style figures."""
    prompt = usage.input_tokens + usage.cache_read_input_tokens \
        + usage.cache_creation_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
    }


def usage_of(raw: Any, into: Usage | None = None) -> Usage:
    """Anthropic `usage` object -> Usage (fields absent keep their old value)."""
    usage = into if into is not None else Usage()
    if isinstance(raw, dict):
        for field, name in (("input_tokens", "input_tokens"),
                            ("output_tokens", "output_tokens"),
                            ("cache_read_input_tokens", "cache_read_input_tokens"),
                            ("cache_creation_input_tokens", "cache_creation_input_tokens")):
            value = raw.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(usage, name, value)
    return usage


def message_to_completion(message: dict[str, Any], completion_id: str, model: str,
                          created: int, keep_signature: bool = False) -> dict[str, Any]:
    """A whole Anthropic message as a `chat.completion` object."""
    texts: list[str] = []
    reasoning: list[str] = []
    signature = ""
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
            signature = str(block.get("signature") or signature)
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": orjson.dumps(block.get("input") or {})
                                       .decode()}})
    out_message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(texts) if texts or not calls else None,
                                   "refusal": None}
    if reasoning:
        out_message["reasoning_content"] = "".join(reasoning)
        if keep_signature and signature:
            out_message["reasoning_signature"] = signature
    if calls:
        out_message["tool_calls"] = calls
    finish = FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    if calls and finish == "stop":
        finish = "tool_calls"
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": out_message, "finish_reason": finish,
                     "logprobs": None}],
        "usage": chat_usage(usage_of(message.get("usage"))),
    }


class AnthropicToChat:
    """One Anthropic message stream out as Chat Completions chunks.

    `feed` / `finish` return chunk objects; `done` is True once `message_stop` or an
    `error` was seen (`error` then holds the Anthropic (type, message)).
    """

    def __init__(self, completion_id: str, model: str, created: int,
                 include_usage: bool, keep_signature: bool = False) -> None:
        self._id = completion_id
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._keep_signature = keep_signature
        self._parser = SSEParser()
        self._tool_of_block: dict[int, int] = {}
        self._finish: str | None = None
        self.usage = Usage()
        self.done = False
        self.error: tuple[str, str] | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": None}]}

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in self._parser.feed(data):
            if self.done:
                break
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(payload, dict):
                self._event(payload, out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """At the end of the upstream bytes: a stream without message_stop is an error."""
        out: list[dict[str, Any]] = []
        for event in self._parser.close():
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(payload, dict) and not self.done:
                self._event(payload, out)
        if not self.done:
            out.append(self.fail("api_error", TRUNCATED))
        return out

    def fail(self, error_type: str, message: str) -> dict[str, Any]:
        """The final error payload of a broken stream."""
        self.done = True
        self.error = (error_type, message)
        return {"error": stream_error_payload(error_type, message)}

    def _event(self, payload: dict[str, Any], out: list[dict[str, Any]]) -> None:
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                if delta.get("text"):
                    out.append(self._chunk({"content": delta["text"]}))
            elif dtype == "thinking_delta":
                if delta.get("thinking"):
                    out.append(self._chunk({"reasoning_content": delta["thinking"]}))
            elif dtype == "signature_delta":
                if self._keep_signature and delta.get("signature"):
                    out.append(self._chunk({"reasoning_signature": delta["signature"]}))
            elif dtype == "input_json_delta":
                k = self._tool_of_block.get(payload.get("index", -1))
                if k is not None and delta.get("partial_json"):
                    out.append(self._chunk({"tool_calls": [
                        {"index": k, "function": {"arguments": delta["partial_json"]}}]}))
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                k = len(self._tool_of_block)
                self._tool_of_block[payload.get("index", k)] = k
                out.append(self._chunk({"tool_calls": [
                    {"index": k, "id": block.get("id"), "type": "function",
                     "function": {"name": block.get("name"), "arguments": ""}}]}))
            elif block.get("type") == "text" and block.get("text"):
                out.append(self._chunk({"content": block["text"]}))
        elif kind == "message_start":
            message = payload.get("message") or {}
            usage_of(message.get("usage"), self.usage)
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "message_delta":
            usage_of(payload.get("usage"), self.usage)
            reason = (payload.get("delta") or {}).get("stop_reason")
            self._finish = FINISH_REASONS.get(str(reason), "stop")
            if self._tool_of_block and self._finish == "stop":
                self._finish = "tool_calls"
        elif kind == "message_stop":
            out.append(self._chunk({}, self._finish or "stop"))
            if self._include_usage:
                out.append({"id": self._id, "object": "chat.completion.chunk",
                            "created": self._created, "model": self._model, "choices": [],
                            "usage": chat_usage(self.usage)})
            self.done = True
        elif kind == "error":
            error = payload.get("error") or {}
            out.append(self.fail(str(error.get("type") or "api_error"),
                                 str(error.get("message") or "upstream error")))
