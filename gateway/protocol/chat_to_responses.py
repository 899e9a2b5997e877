"""Chat Completions reply -> OpenAI Responses reply (the Responses ingress's last step).

`completion_to_response` converts a whole `chat.completion`; `ChatToResponses` turns a
stream of Chat chunk objects into typed Responses events. Pure, no I/O.
The rules: docs/protocol.md §13.

Event order, as the official SDK's `responses.stream()` accumulator requires it
(openai-python `lib/streaming/responses/_responses.py`: it raises unless
`response.created` comes first, unless every output item is added before its content
events, and unless every added item is done before `response.completed`; item ids must not
change between added and done):

    response.created, response.in_progress
    per output item, in output_index order (one open at a time, except parallel
    function calls, which stay open until the end so interleaved argument fragments
    still land on the right item):
      reasoning: output_item.added, reasoning_summary_part.added,
                 reasoning_summary_text.delta*, reasoning_summary_text.done,
                 reasoning_summary_part.done, output_item.done
      message:   output_item.added, content_part.added, output_text.delta*,
                 output_text.done, content_part.done, output_item.done
      function:  output_item.added, function_call_arguments.delta*,
                 function_call_arguments.done, output_item.done
      custom:    output_item.added, custom_tool_call_input.delta*,
                 custom_tool_call_input.done, output_item.done
                 (a call of a `custom` tool, `ResponsesContext.custom_tools`: the `input`
                 string of the Chat arguments `{"input": ...}` is decoded as it streams,
                 `CustomInputStream`; arguments of another shape go out as one delta when
                 the call closes)
    response.completed (or response.incomplete for `length` / `content_filter`,
    response.failed when the upstream broke), with the whole response and its usage.

Every event carries a `sequence_number` from 0. Codex CLI reads the items from
`response.output_item.done` and the usage from `response.completed`, and fails a turn whose
stream closes before `response.completed` (openai/codex issue 41340 and relays' reports of
"stream closed before response.completed"), so a stream always ends in one of the three.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol.responses_to_chat import (
    CustomInputStream,
    ResponsesContext,
    custom_input,
)

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """Responses `usage` for a Chat `usage` object (None when there is none)."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if not cached:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) \
        else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def response_object(ctx: ResponsesContext, response_id: str, created_at: int, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None,
                    incomplete: str | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `response` object, echoing the request's settings as OpenAI does."""
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": ctx.instructions, "max_output_tokens": ctx.max_output_tokens,
        "model": ctx.model, "output": output, "parallel_tool_calls": ctx.parallel_tool_calls,
        "previous_response_id": None,
        "reasoning": {"effort": ctx.reasoning.get("effort"),
                      "summary": ctx.reasoning.get("summary")},
        "store": False, "temperature": ctx.temperature, "text": ctx.text,
        "tool_choice": ctx.tool_choice, "tools": ctx.tools, "top_p": ctx.top_p,
        "truncation": "disabled", "usage": usage, "user": None, "metadata": ctx.metadata,
    }


def _status(finish: str | None) -> tuple[str, str | None]:
    reason = _INCOMPLETE.get(finish or "")
    return ("incomplete", reason) if reason else ("completed", None)


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}] if status == "completed" else []}


def _reasoning_item(item_id: str, text: str | None, signature: str,
                    ctx: ResponsesContext) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning",
                            "summary": [] if text is None
                            else [{"type": "summary_text", "text": text}]}
    if ctx.include_encrypted and signature:
        item["encrypted_content"] = signature
    return item


def _call_item(item_id: str, call_id: str, name: str, arguments: str,
               status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _custom_item(item_id: str, call_id: str, name: str, raw: str) -> dict[str, Any]:
    """A `custom_tool_call` output item (openai-python `ResponseCustomToolCall`)."""
    return {"id": item_id, "type": "custom_tool_call", "status": "completed",
            "call_id": call_id, "name": name, "input": raw}


def completion_to_response(completion: dict[str, Any], ctx: ResponsesContext,
                           response_id: str, created_at: int) -> dict[str, Any]:
    """A whole `chat.completion` as a `response` object."""
    base = response_id.removeprefix("resp_")
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(_reasoning_item(f"rs_{base}_0", reasoning,
                                      str(message.get("reasoning_signature") or ""), ctx))
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    if isinstance(content, str) and content:
        output.append(_message_item(f"msg_{base}_{len(output)}", content, "completed"))
    for k, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) \
            else orjson.dumps(arguments or {}).decode()
        call_id = str(call.get("id") or f"call_{base}_{k}")
        name = str(function.get("name") or "")
        if name in ctx.custom_tools:
            output.append(_custom_item(f"ctc_{base}_{len(output)}", call_id, name,
                                       custom_input(arguments)))
        else:
            output.append(_call_item(f"fc_{base}_{len(output)}", call_id, name, arguments,
                                     "completed"))
    status, incomplete = _status(choice.get("finish_reason"))
    return response_object(ctx, response_id, created_at, status, output,
                           responses_usage(completion.get("usage")), incomplete)


class _Item:
    __slots__ = ("call_id", "decoder", "id", "index", "kind", "name", "signature", "text")
    # kind: "reasoning", "message", "function_call" or "custom_tool_call"

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.text = ""  # message text, reasoning text or function arguments
        self.signature = ""
        self.call_id = ""
        self.name = ""
        self.decoder: CustomInputStream | None = None  # custom tool calls only


class ChatToResponses:
    """A Chat chunk stream out as Responses events (SSE bytes)."""

    def __init__(self, ctx: ResponsesContext, response_id: str, created_at: int) -> None:
        self._ctx = ctx
        self._id = response_id
        self._base = response_id.removeprefix("resp_")
        self._created_at = created_at
        self._seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None  # the open reasoning or message item
        self._calls: dict[int, _Item] = {}  # Chat tool_calls index -> open function item
        self._done_items: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self.started = False
        self.ended = False

    # -- encoding ---------------------------------------------------------------------

    def _event(self, out: list[bytes], kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")

    def _response(self, status: str, incomplete: str | None = None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
        output = [self._done_items[i] for i in sorted(self._done_items)]
        return response_object(self._ctx, self._id, self._created_at, status, output,
                               self._usage, incomplete, error)

    def start(self) -> bytes:
        out: list[bytes] = []
        self.started = True
        self._event(out, "response.created", response=self._response("in_progress"))
        self._event(out, "response.in_progress", response=self._response("in_progress"))
        return b"".join(out)

    # -- items ------------------------------------------------------------------------

    def _new(self, kind: str, prefix: str) -> _Item:
        index = len(self._items)
        item = _Item(kind, f"{prefix}_{self._base}_{index}", index)
        self._items.append(item)
        return item

    def _open_item(self, out: list[bytes], kind: str) -> _Item:
        if self._open is not None and self._open.kind == kind:
            return self._open
        self._close_open(out)
        if kind == "reasoning":
            item = self._new("reasoning", "rs")
            self._event(out, "response.output_item.added", output_index=item.index,
                        item=_reasoning_item(item.id, None, "", self._ctx))
            self._event(out, "response.reasoning_summary_part.added", item_id=item.id,
                        output_index=item.index, summary_index=0,
                        part={"type": "summary_text", "text": ""})
        else:
            item = self._new("message", "msg")
            self._event(out, "response.output_item.added", output_index=item.index,
                        item=_message_item(item.id, "", "in_progress"))
            self._event(out, "response.content_part.added", item_id=item.id,
                        output_index=item.index, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": [],
                              "logprobs": []})
        self._open = item
        return item

    def _close_open(self, out: list[bytes]) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        if item.kind == "reasoning":
            self._event(out, "response.reasoning_summary_text.done", item_id=item.id,
                        output_index=item.index, summary_index=0, text=item.text)
            self._event(out, "response.reasoning_summary_part.done", item_id=item.id,
                        output_index=item.index, summary_index=0,
                        part={"type": "summary_text", "text": item.text})
            done = _reasoning_item(item.id, item.text, item.signature, self._ctx)
        else:
            self._event(out, "response.output_text.done", item_id=item.id,
                        output_index=item.index, content_index=0, text=item.text,
                        logprobs=[])
            self._event(out, "response.content_part.done", item_id=item.id,
                        output_index=item.index, content_index=0,
                        part={"type": "output_text", "text": item.text, "annotations": [],
                              "logprobs": []})
            done = _message_item(item.id, item.text, "completed")
        self._done_items[item.index] = done
        self._event(out, "response.output_item.done", output_index=item.index, item=done)

    def _close_calls(self, out: list[bytes]) -> None:
        for item in sorted(self._calls.values(), key=lambda i: i.index):
            arguments = item.text if item.text.strip() else "{}"
            if item.kind == "custom_tool_call":
                raw = custom_input(arguments)
                sent = item.decoder.sent if item.decoder is not None else ""
                rest = raw[len(sent):] if raw.startswith(sent) else ""
                if rest:
                    self._event(out, "response.custom_tool_call_input.delta",
                                item_id=item.id, output_index=item.index, delta=rest)
                self._event(out, "response.custom_tool_call_input.done", item_id=item.id,
                            output_index=item.index, input=raw)
                done = _custom_item(item.id, item.call_id, item.name, raw)
                self._done_items[item.index] = done
                self._event(out, "response.output_item.done", output_index=item.index,
                            item=done)
                continue
            self._event(out, "response.function_call_arguments.done", item_id=item.id,
                        output_index=item.index, name=item.name, arguments=arguments)
            done = _call_item(item.id, item.call_id, item.name, arguments, "completed")
            self._done_items[item.index] = done
            self._event(out, "response.output_item.done", output_index=item.index, item=done)
        self._calls.clear()

    # -- chunks -----------------------------------------------------------------------

    def feed(self, chunks: list[dict[str, Any]]) -> bytes:
        """Events for the next Chat chunks (an `{"error": ...}` payload ends the stream)."""
        out: list[bytes] = []
        for chunk in chunks:
            if self.ended:
                break
            if "error" in chunk and "choices" not in chunk:
                error = chunk.get("error")
                message = error.get("message") if isinstance(error, dict) else str(error)
                out.append(self.fail(str(message or "upstream error")))
                break
            if isinstance(chunk.get("usage"), dict):
                self._usage = responses_usage(chunk["usage"])
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._choice(out, choice)
        return b"".join(out)

    def _choice(self, out: list[bytes], choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            item = self._open_item(out, "reasoning")
            item.text += reasoning
            self._event(out, "response.reasoning_summary_text.delta", item_id=item.id,
                        output_index=item.index, summary_index=0, delta=reasoning)
        signature = delta.get("reasoning_signature")
        if isinstance(signature, str) and self._open is not None \
                and self._open.kind == "reasoning":
            self._open.signature += signature
        content = delta.get("content")
        if isinstance(content, str) and content:
            item = self._open_item(out, "message")
            item.text += content
            self._event(out, "response.output_text.delta", item_id=item.id,
                        output_index=item.index, content_index=0, delta=content, logprobs=[])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_fragment(out, call)
        if choice.get("finish_reason"):
            self._finish = str(choice["finish_reason"])

    def _tool_fragment(self, out: list[bytes], call: dict[str, Any]) -> None:
        k = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(k)
        if item is None:
            self._close_open(out)
            name = function.get("name") or ""
            custom = name in self._ctx.custom_tools
            item = self._new("custom_tool_call" if custom else "function_call",
                             "ctc" if custom else "fc")
            item.call_id = call.get("id") or f"call_{self._base}_{k}"
            item.name = name
            if custom:
                item.decoder = CustomInputStream()
            self._calls[k] = item
            added = {"id": item.id, "type": "custom_tool_call", "status": "in_progress",
                     "call_id": item.call_id, "name": name, "input": ""} if custom \
                else _call_item(item.id, item.call_id, item.name, "", "in_progress")
            self._event(out, "response.output_item.added", output_index=item.index,
                        item=added)
        elif not item.name and function.get("name"):
            item.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text += arguments
            if item.kind == "function_call":
                self._event(out, "response.function_call_arguments.delta", item_id=item.id,
                            output_index=item.index, delta=arguments)
            elif item.decoder is not None:
                text = item.decoder.feed(arguments)
                if text:
                    self._event(out, "response.custom_tool_call_input.delta",
                                item_id=item.id, output_index=item.index, delta=text)

    def end(self) -> bytes:
        """The upstream finished: close every item and complete the response."""
        if self.ended:
            return b""
        out: list[bytes] = []
        self._close_open(out)
        self._close_calls(out)
        status, incomplete = _status(self._finish)
        self.ended = True
        self._event(out, f"response.{status}",
                    response=self._response(status, incomplete))
        return b"".join(out)

    def fail(self, message: str, code: str = "server_error") -> bytes:
        """The upstream broke: `response.failed` with what was finished so far."""
        if self.ended:
            return b""
        out: list[bytes] = []
        self.ended = True
        self._event(out, "response.failed", response=self._response(
            "failed", error={"code": code, "message": message}))
        return b"".join(out)
