"""Convert an OpenAI Chat Completions stream into an Anthropic Messages stream, read by read.

The converter is a pure state machine: raw upstream bytes in (split anywhere), Anthropic SSE
bytes out. The server owns the socket, the timeouts and the keep-alive pings; it calls
`feed` per read, `finish` at upstream EOF and `abort` when it gives up on the upstream.

The rules it follows are docs/protocol.md §8 (and §7's finish reasons, §9's usage), the
design rules of tests/fixtures/README.md; a comment names the fixture that shows each
surprising one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.protocol import anthropic_events as events
from gateway.protocol.anthropic_events import DELTA_END
from gateway.protocol.openai_response import STOP_REASONS, finish_outcome, usage_from_openai
from gateway.protocol.sse import SSEEvent, SSEParser
from gateway.protocol.tool_ids import client_tool_id, id_salt
from gateway.protocol.usage import Usage

log = logging.getLogger(__name__)

__all__ = ["STOP_REASONS", "OpenAIStreamConverter"]

EOF_BEFORE_FINISH = "upstream stream ended before a finish_reason"

# Words in an upstream error that mean "try again later"; Claude Code retries overloaded_error.
_OVERLOAD_HINTS = (
    "overload",
    "rate limit",
    "rate_limit",
    "ratelimit",
    "too many requests",
    "capacity",
    "throttl",
    "busy",
    "try again later",
)
_OVERLOAD_CODES = frozenset({429, 503, 529, "429", "503", "529"})
_MAX_ERROR_MESSAGE = 500

# Kind of the open content block.
_NONE = 0
_THINKING = 1
_TEXT = 2
_TOOL = 3


@dataclass(slots=True, eq=False)
class _ToolCall:
    """One upstream tool call, keyed by its `tool_calls[].index`."""

    id: str
    name: str
    id_generated: bool
    # Argument fragments received while another block was open; sent when this block opens.
    held: list[str] = field(default_factory=list)
    opened: bool = False
    sent: bool = False
    closed: bool = False


class OpenAIStreamConverter:
    """Streams one OpenAI chat completion out as one Anthropic message.

    Before the first upstream chunk is parsed nothing is emitted, so a failure at that point
    (`conv.error` set while `conv.started` is False) can still become an HTTP error status.
    """

    def __init__(
        self,
        model: str,
        message_id: str,
        input_tokens: int = 0,
    ) -> None:
        self._model = model
        self._message_id = message_id
        self._input_estimate = input_tokens
        # No stop_sequences here: OpenAI does not say which stop string ended the text and
        # strips the match from the output, so a `stop` finish is `end_turn` with
        # `stop_sequence: null` whatever the client sent.
        self._parser = SSEParser()
        self._out: list[bytes] = []
        self._started = False
        self._done = False
        self._error: tuple[str, str] | None = None
        self.error_payload: dict[str, Any] | None = None  # an upstream error event, as sent
        self._salt = id_salt(message_id)

        self._open_kind = _NONE
        self._open_index = -1
        self._next_index = 0
        self._delta_prefix = b""

        self._calls: dict[int, _ToolCall] = {}
        self._pending: list[_ToolCall] = []
        self._open_call: _ToolCall | None = None
        self._last_tool_index = 0
        self._tool_count = 0

        self._stop_reason: str | None = None
        self._upstream_usage: dict[str, Any] | None = None
        self._final_usage: Usage | None = None
        self._chars = 0  # emitted text, thinking and argument characters, for the estimate

    # -- public interface -------------------------------------------------------------

    @property
    def started(self) -> bool:
        """message_start has been emitted."""
        return self._started

    @property
    def done(self) -> bool:
        """message_stop or an error event has been emitted; further input is ignored."""
        return self._done

    @property
    def error(self) -> tuple[str, str] | None:
        """(error_type, message) of the error event that ended the stream, if any."""
        return self._error

    @property
    def usage(self) -> Usage:
        """Usage known so far: the upstream's report, else an estimate (`estimated=True`)."""
        if self._final_usage is not None:
            return self._final_usage
        if self._upstream_usage is not None:
            return self._convert_usage(self._upstream_usage)[1]
        return self._estimated_usage(minimum=0)

    def feed(self, chunk: bytes) -> bytes:
        """Convert one upstream read; returns the Anthropic bytes it completed (maybe b"")."""
        if self._done:
            return b""
        parsed = self._parser.feed(chunk)
        if not parsed:
            return b""
        self._handle_events(parsed)
        return self._take_output()

    def finish(self) -> bytes:
        """Upstream EOF: end the message normally, or with an error if it was cut short."""
        if self._done:
            return b""
        self._handle_events(self._parser.close())
        if not self._done:
            if self._stop_reason is not None:
                # eof_without_done: EOF after a finish_reason is a normal end.
                self._end_message()
            else:
                # broken_mid_text: EOF before any finish_reason means the answer is cut off.
                self._fail("api_error", EOF_BEFORE_FINISH)
        return self._take_output()

    def abort(self, error_type: str, message: str) -> bytes:
        """Gateway-side failure (idle timeout, socket error): end the stream with an error.

        Idempotent; b"" once the stream is done. If the upstream already sent its
        finish_reason, the answer is complete and only usage was outstanding, so the message
        ends normally with estimated usage instead.
        """
        if self._done:
            return b""
        self._fail(error_type, message)
        return self._take_output()

    # -- event handling ---------------------------------------------------------------

    def _take_output(self) -> bytes:
        out = self._out
        data = b"".join(out)
        out.clear()
        return data

    def _handle_events(self, parsed: list[SSEEvent]) -> None:
        for event in parsed:
            data = event.data
            if data == "[DONE]":
                self._on_done_marker()
            else:
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    stripped = data.strip()
                    if not stripped:
                        continue  # an empty data event carries nothing; some proxies send them
                    if stripped == "[DONE]":
                        self._on_done_marker()
                        return
                    self._fail("api_error", "upstream sent a stream chunk that is not valid JSON")
                    return
                if type(chunk) is not dict:
                    self._fail("api_error", "upstream sent a stream chunk that is not an object")
                    return
                if chunk.get("error") is not None or event.event == "error":
                    self._on_upstream_error(chunk)
                    return
                try:
                    self._on_chunk(chunk)
                except (AttributeError, TypeError, IndexError, KeyError) as exc:
                    # A chunk of the wrong shape (e.g. `choices` not a list of objects).
                    log.warning("malformed upstream chunk in %s: %r", self._message_id, exc)
                    self._fail("api_error", "upstream sent a malformed stream chunk")
            if self._done:
                return

    def _on_chunk(self, chunk: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            self._out.append(
                events.message_start(self._message_id, self._model, self._input_estimate)
            )
            self._out.append(events.PING)
        choices = chunk.get("choices")
        # Moonshot/Kimi put stream usage in choices[0].usage, not at the top level
        # (earendil-works/pi#2017, higress-group/higress#1568).
        usage = chunk.get("usage") or (choices[0].get("usage") if choices else None)
        if choices and self._stop_reason is None:
            # Only choice 0: the gateway never asks for n > 1.
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                self._on_delta(delta)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self._on_finish(finish_reason)
                if self._done:
                    return
        if usage and isinstance(usage, dict):  # a list or a string is no usage at all
            self._upstream_usage = usage
            # finish_chunk_with_content_and_usage: usage in (or after) the finish chunk ends
            # the message at once; usage before it (continuous usage stats) only updates.
            if self._stop_reason is not None:
                self._end_message()

    def _on_delta(self, delta: dict[str, Any]) -> None:
        # The order within one delta is thinking, text, tools: reasoning always precedes
        # the answer it leads to (reasoning_then_text).
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            if type(reasoning) is not str:
                reasoning = _text_of(reasoning)
            if reasoning:
                if self._open_kind != _THINKING:
                    self._open_block(_THINKING)
                self._out.append(self._delta_prefix + orjson.dumps(reasoning) + DELTA_END)
                self._chars += len(reasoning)
        text = delta.get("content")
        if text:
            if type(text) is not str:
                text = _text_of(text)
            if text:
                if self._open_kind != _TEXT:
                    self._open_block(_TEXT)
                self._out.append(self._delta_prefix + orjson.dumps(text) + DELTA_END)
                self._chars += len(text)
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            self._on_tool_fragments(tool_calls)
        else:
            function_call = delta.get("function_call")
            if function_call:
                # Legacy single function call: same as tool call index 0 without an id.
                self._on_tool_fragments([{"index": 0, "function": function_call}])

    def _on_tool_fragments(self, fragments: list[dict[str, Any]]) -> None:
        for fragment in fragments:
            function = fragment.get("function") or {}
            call = self._call_for(fragment, function)
            arguments = function.get("arguments")
            if not arguments:
                continue
            if type(arguments) is not str:
                # Some upstreams send the arguments as an object instead of JSON text.
                arguments = orjson.dumps(arguments).decode()
            self._chars += len(arguments)
            if call is self._open_call:
                self._out.append(self._delta_prefix + orjson.dumps(arguments) + DELTA_END)
                call.sent = True
            elif call.closed:
                # Its block was closed when another kind of content arrived; there is no
                # way to add to a closed block, so the fragment is lost.
                log.warning("late tool argument fragment dropped in %s", self._message_id)
            else:
                # parallel_tools_interleaved: fragments of a call whose block is not open
                # yet wait until it opens.
                call.held.append(arguments)
        # A call's block waits for its name: the client cannot run a tool called "".
        if self._open_kind != _TOOL and self._pending and self._pending[0].name:
            self._open_next_tool()

    def _call_for(self, fragment: dict[str, Any], function: dict[str, Any]) -> _ToolCall:
        """The call a fragment belongs to; registers a new call when it starts one."""
        tool_id = fragment.get("id") or ""
        index = fragment.get("index")
        if type(index) is not int:
            # No index: a known id continues its call, a new id starts one, no id continues
            # the latest call.
            known = [i for i, c in self._calls.items() if c.id == tool_id] if tool_id else []
            if known:
                index = known[0]
            elif tool_id and self._calls:
                index = max(self._calls) + 1
            else:
                index = self._last_tool_index
        self._last_tool_index = index
        call = self._calls.get(index)
        if call is not None:
            if not call.opened and not call.name:
                call.name = function.get("name") or ""
            if not tool_id or tool_id == call.id:
                # tool_call_fragmented: later fragments repeat the index with `"id": ""`.
                return call
            if call.id_generated and not call.opened:
                call.id = tool_id
                call.id_generated = False
                return call
            # A different id under a used index: some upstreams number every call 0.
        name = function.get("name") or ""
        call = _ToolCall(
            id=tool_id or f"call_{self._message_id.removeprefix('msg_')}_{self._tool_count}",
            name=name,
            id_generated=not tool_id,
        )
        self._calls[index] = call
        self._pending.append(call)
        self._tool_count += 1
        return call

    def _on_finish(self, finish_reason: str) -> None:
        self._close_block()
        while self._pending:
            self._open_next_tool()
            self._close_block()
        outcome = finish_outcome(str(finish_reason))
        if isinstance(outcome, tuple):
            # e.g. DeepSeek's insufficient_system_resource: the text so far is not the whole
            # answer, and a normal message_stop would make it look complete.
            self._fail(*outcome)
            return
        stop_reason = outcome
        if self._tool_count:
            if stop_reason == "end_turn":
                # Some upstreams finish with `stop` after tool calls; the client must still
                # see tool_use or it will not run them.
                stop_reason = "tool_use"
        elif stop_reason == "tool_use":
            # No tool block was produced, so there is nothing for the client to run.
            stop_reason = "end_turn"
        self._stop_reason = stop_reason

    def _on_done_marker(self) -> None:
        if self._stop_reason is not None:
            self._end_message()
        else:
            self._fail("api_error", EOF_BEFORE_FINISH)

    def _on_upstream_error(self, payload: dict[str, Any]) -> None:
        error = payload.get("error", payload)
        message = ""
        clues: list[str] = []
        overloaded = False
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code = error.get("code")
            overloaded = code in _OVERLOAD_CODES
            clues = [message, str(code or ""), str(error.get("type") or "")]
        elif isinstance(error, str):
            message = error
            clues = [message]
        lowered = " ".join(clues).lower()
        if not overloaded:
            overloaded = any(hint in lowered for hint in _OVERLOAD_HINTS)
        log.warning("upstream error payload in %s: %.200s", self._message_id, message)
        self.error_payload = payload
        # The upstream's wording helps the user; it is capped so a huge body is not echoed.
        text = f"upstream error: {message}" if message else "upstream sent an error"
        self._fail("overloaded_error" if overloaded else "api_error", text[:_MAX_ERROR_MESSAGE])

    # -- blocks -----------------------------------------------------------------------

    def _open_block(self, kind: int, call: _ToolCall | None = None) -> None:
        self._close_block()
        index = self._next_index
        self._next_index = index + 1
        self._open_kind = kind
        self._open_index = index
        if kind == _TEXT:
            self._out.append(events.text_block_start(index))
            self._delta_prefix = events.delta_prefix(index, "text_delta")
        elif kind == _THINKING:
            self._out.append(events.thinking_block_start(index))
            self._delta_prefix = events.delta_prefix(index, "thinking_delta")
        else:
            assert call is not None
            self._open_call = call
            call.opened = True
            # The client sees an id unique to this answer (gateway/protocol/tool_ids.py).
            self._out.append(events.tool_use_block_start(
                index, client_tool_id(call.id, self._salt), call.name))
            self._delta_prefix = events.delta_prefix(index, "input_json_delta")

    def _open_next_tool(self) -> None:
        call = self._pending.pop(0)
        self._open_block(_TOOL, call)
        if call.held:
            joined = "".join(call.held)
            call.held.clear()
            self._out.append(self._delta_prefix + orjson.dumps(joined) + DELTA_END)
            call.sent = True

    def _close_block(self) -> None:
        if self._open_kind == _NONE:
            return
        call = self._open_call
        if call is not None:
            if not call.sent:
                # tool_empty_arguments: the client parses the joined input, and "" is not JSON.
                self._out.append(self._delta_prefix + b'"{}"' + DELTA_END)
                call.sent = True
            call.closed = True
            self._open_call = None
        self._out.append(events.block_stop(self._open_index))
        self._open_kind = _NONE

    # -- endings ----------------------------------------------------------------------

    def _end_message(self) -> None:
        if self._upstream_usage is not None:
            usage_fields, usage = self._convert_usage(self._upstream_usage)
        else:
            usage = self._estimated_usage(minimum=1)
            # usage_missing: the client only needs a positive count; flagged for accounting.
            usage_fields = {"output_tokens": usage.output_tokens}
            log.info(
                "upstream sent no usage for %s; estimated %d output tokens",
                self._message_id,
                usage.output_tokens,
            )
        self._out.append(events.message_delta(self._stop_reason, None, usage_fields))
        self._out.append(events.MESSAGE_STOP)
        self._final_usage = usage
        self._done = True

    def _fail(self, error_type: str, message: str) -> None:
        if self._stop_reason is not None:
            # Every block is complete and closed; only usage was still to come. An error
            # event now would make the client retry (and pay for) a finished answer.
            log.warning("%s after finish_reason in %s: %s", error_type, self._message_id, message)
            self._end_message()
            return
        self._close_block()
        self._out.append(events.error_event(error_type, message))
        self._final_usage = self.usage
        self._error = (error_type, message)
        self._done = True

    # -- usage ------------------------------------------------------------------------

    def _estimated_usage(self, minimum: int) -> Usage:
        # usage_missing: N = max(1, ceil(characters / 4)) at the end of a message.
        return Usage(
            input_tokens=self._input_estimate,
            output_tokens=max(minimum, (self._chars + 3) // 4),
            estimated=True,
        )

    def _convert_usage(self, raw: dict[str, Any]) -> tuple[dict[str, int], Usage]:
        """message_delta usage fields and the Usage record for an upstream usage object,
        through the one conversion non-stream bodies use too (`usage_from_openai`)."""
        usage = usage_from_openai(raw) or Usage(estimated=True)
        if usage.estimated:
            usage.output_tokens = max(1, (self._chars + 3) // 4)
        if not isinstance(raw.get("prompt_tokens"), int):
            usage.input_tokens = self._input_estimate
        fields = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
        if usage.cache_read_input_tokens or _reports_cache(raw):
            fields["cache_read_input_tokens"] = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens:
            fields["cache_creation_input_tokens"] = usage.cache_creation_input_tokens
        return fields, usage


def _reports_cache(raw: dict[str, Any]) -> bool:
    details = raw.get("prompt_tokens_details")
    return (isinstance(details, dict) and "cached_tokens" in details) \
        or "prompt_cache_hit_tokens" in raw or "cached_tokens" in raw


def _text_of(value: object) -> str:
    """Text of a content value that is not a plain string (a list of typed parts)."""
    if isinstance(value, list):
        return "".join(
            part["text"]
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
