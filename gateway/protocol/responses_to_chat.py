"""OpenAI Responses request -> Chat Completions request (the Responses ingress's first step).

The rules: docs/protocol.md §13.

Why through Chat Completions: it is the smallest set of converters that serves both
upstream protocols. A Responses request becomes a Chat body here; an openai-protocol
upstream gets that body as is, an anthropic-protocol upstream gets it through
`chat_to_anthropic` (the converter the Chat ingress uses anyway). On the way back,
Anthropic events become Chat chunks (`anthropic_to_chat`) and Chat chunks become Responses
events (`chat_to_responses`). Four converters instead of six, each tested on its own.

What the Chat body cannot say travels in two internal fields on assistant messages,
`reasoning_content` and `reasoning_signature` (a reasoning item's text and its
`encrypted_content`): `chat_to_anthropic` turns them into a signed thinking block;
`for_openai_upstream` removes them.

Stateless: the gateway stores no responses. `previous_response_id`, `conversation`,
`item_reference` input items and `background` are refused with a 400 that says so; clients
send the whole conversation in `input` (Codex CLI does, with `store: false`).

Tools: `function` tools (and the function tools inside a `namespace` group) are served.
`custom` tools (free-form input, optionally constrained by a grammar: Codex's
`apply_patch`) become a function tool with one string parameter, `input`, whose
description carries the tool's own description and its grammar; the reply side
(`chat_to_responses`) turns a call of it back into a `custom_tool_call` with the raw input,
and `custom_tool_call` / `custom_tool_call_output` input items go up as that function's
call and result. `ResponsesContext.custom_tools` names them. Built-in tools (web_search,
file_search, code_interpreter, computer use, image generation, mcp, local_shell, ...)
cannot be served by these upstreams: they are dropped and named in
`ResponsesContext.dropped_tools` (the ingress reports them in the `x-llmapi-dropped-tools`
header); a `tool_choice` that forces one of them is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.protocol.chat_to_anthropic import ConversionError

STATELESS = ("this gateway is stateless and stores no responses; send the whole "
             "conversation in `input` instead")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


@dataclass(slots=True)
class ResponsesContext:
    """What the reply needs from the request: echoed fields and conversion choices."""

    model: str
    stream: bool
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    reasoning: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    metadata: dict[str, Any] = field(default_factory=dict)
    include_encrypted: bool = False
    dropped_tools: list[str] = field(default_factory=list)
    custom_tools: set[str] = field(default_factory=set)  # names of `custom` tools


# The one parameter a `custom` tool becomes for a Chat upstream, and what the model is told.
CUSTOM_INPUT = "input"
CUSTOM_NOTE = ("This tool takes free-form text, not JSON arguments: put the tool's whole raw "
               "input, exactly as the tool expects it, in the `input` string.")


_CUSTOM_START = re.compile(r'\s*\{\s*"input"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}


class CustomInputStream:
    """Decodes the `input` string of `{"input": "..."}` arguments while they stream in, so
    a custom tool's raw input can go out as it arrives. `feed` returns the newly decoded
    text; it returns "" for arguments of any other shape (the caller then sends the whole
    input when the call closes) and stops at the string's closing quote."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pos = -1          # index in _buffer of the next undecoded character
        self.failed = False     # not `{"input": "...` : nothing streams
        self.closed = False     # the string ended
        self.sent = ""          # everything returned so far

    def feed(self, fragment: str) -> str:
        self._buffer += fragment
        if self.failed or self.closed:
            return ""
        if self._pos < 0:
            match = _CUSTOM_START.match(self._buffer)
            if match is None:
                compact = "".join(self._buffer.split())
                if not '{"input":"'.startswith(compact[:10]) or len(self._buffer) > 256:
                    self.failed = True  # some other shape; the end will tell
                return ""
            self._pos = match.end()
        out: list[str] = []
        buffer, i, end = self._buffer, self._pos, len(self._buffer)
        while i < end:
            char = buffer[i]
            if char == '"':
                self.closed = True
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            if i + 1 >= end:
                break  # the escape is split across fragments: wait for the rest
            kind = buffer[i + 1]
            if kind in _ESCAPES:
                out.append(_ESCAPES[kind])
                i += 2
                continue
            if kind != "u":
                self.failed = True
                break
            if i + 6 > end:
                break
            code = int(buffer[i + 2:i + 6], 16)
            if 0xD800 <= code < 0xDC00:  # a surrogate pair needs its second half
                if i + 12 > end:
                    break
                low = int(buffer[i + 8:i + 12], 16)
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                i += 12
            else:
                out.append(chr(code))
                i += 6
        self._pos = i
        text = "".join(out)
        self.sent += text
        return text


def custom_input(arguments: str) -> str:
    """The raw input of a `custom` tool call from the Chat arguments the model produced:
    `{"input": "..."}` as asked, else a lone string value, else the arguments as they are
    (a model that ignored the schema still gets its text through)."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict):
        value = parsed.get(CUSTOM_INPUT)
        if isinstance(value, str):
            return value
        strings = [v for v in parsed.values() if isinstance(v, str)]
        if len(parsed) == 1 and strings:
            return strings[0]
    elif isinstance(parsed, str):
        return parsed
    return arguments


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def responses_to_chat(body: Any) -> tuple[dict[str, Any], ResponsesContext]:
    """(Chat Completions body, context) for a Responses body; ConversionError on a problem."""
    if not isinstance(body, dict):
        raise ConversionError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConversionError("you must provide a model parameter", "model")
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise ConversionError(f"{name} is not supported: {STATELESS}", name)
    if body.get("background"):
        raise ConversionError("background responses are not supported: " + STATELESS,
                              "background")
    if body.get("prompt") is not None:
        raise ConversionError("stored prompt templates are not supported; send `input`",
                              "prompt")
    if body.get("top_logprobs"):
        raise ConversionError("logprobs are not supported by this gateway", "top_logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ConversionError("stream must be a boolean", "stream")
    ctx = ResponsesContext(model=model, stream=stream)
    chat: dict[str, Any] = {"model": model}
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ConversionError("instructions must be a string", "instructions")
        ctx.instructions = instructions
        if instructions:
            messages.append({"role": "system", "content": instructions})
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        messages.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list):
        _add_items(messages, raw_input)
    else:
        raise ConversionError("input must be a string or an array of input items", "input")
    if not any(m["role"] in ("user", "assistant", "tool") for m in messages):
        raise ConversionError("input must contain at least one user message", "input")
    chat["messages"] = messages

    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if not _is_int(max_output) or max_output < 1:
            raise ConversionError("max_output_tokens must be a positive integer",
                                  "max_output_tokens")
        ctx.max_output_tokens = chat["max_tokens"] = max_output
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConversionError(f"{name} must be a number", name)
            chat[name] = value
            setattr(ctx, name, float(value))
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        ctx.reasoning = {"effort": reasoning.get("effort"),
                         "summary": reasoning.get("summary")}
        if isinstance(reasoning.get("effort"), str):
            chat["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if isinstance(text, dict):
        ctx.text = {"format": {"type": "text"}, **text}
        response_format = _response_format(text.get("format"))
        if response_format is not None:
            chat["response_format"] = response_format
    include = body.get("include")
    ctx.include_encrypted = isinstance(include, list) and \
        "reasoning.encrypted_content" in include
    if isinstance(body.get("metadata"), dict):
        ctx.metadata = body["metadata"]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        chat["user"] = user
    _add_tools(chat, ctx, body)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, ctx


def for_openai_upstream(chat: dict[str, Any]) -> dict[str, Any]:
    """The Chat body without the internal reasoning fields (not Chat Completions)."""
    messages = []
    for message in chat["messages"]:
        if "reasoning_content" in message or "reasoning_signature" in message:
            message = {k: v for k, v in message.items()
                       if k not in ("reasoning_content", "reasoning_signature")}
        messages.append(message)
    return {**chat, "messages": messages}


def _text(part: dict[str, Any], where: str) -> str:
    value = part.get("text")
    if not isinstance(value, str):
        raise ConversionError(f"{where}.text must be a string", where)
    return value


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ConversionError(f"{where}.content must be a string or an array", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _text(part, at)})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise ConversionError(f"{at}: input_image needs image_url (file_id is not "
                                      "supported: this gateway stores no files)", at)
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise ConversionError(f"{at}: content type {kind!r} is not supported "
                                  "(input_text, output_text and input_image are)", at)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _open_assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message being built, or a new one (consecutive assistant-side items
    of one turn - reasoning, text, function calls - form one Chat message)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    message: dict[str, Any] = {"role": "assistant", "content": None}
    messages.append(message)
    return message


def _add_items(messages: list[dict[str, Any]], items: list[Any]) -> None:
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ConversionError(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ConversionError(f"{where}.role must be user, assistant, system or "
                                      "developer", where)
            content = _content(item.get("content"), where)
            if role == "assistant":
                message = _open_assistant(messages)
                if message.get("tool_calls"):  # text after calls: a new assistant turn
                    message = {"role": "assistant", "content": None}
                    messages.append(message)
                text = content if isinstance(content, str) else "".join(
                    p.get("text", "") for p in content)
                message["content"] = (message["content"] or "") + text
            else:
                messages.append({"role": "system" if role == "developer" else role,
                                 "content": content})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise ConversionError(f"{where}: function_call needs call_id and name", where)
            arguments = item.get("arguments")
            message = _open_assistant(messages)
            message.setdefault("tool_calls", []).append({
                "id": call_id, "type": "function",
                "function": {"name": name,
                             "arguments": arguments if isinstance(arguments, str) else "{}"}})
        elif kind == "custom_tool_call":
            call_id, name, raw = item.get("call_id"), item.get("name"), item.get("input")
            if not isinstance(call_id, str) or not isinstance(name, str) \
                    or not isinstance(raw, str):
                raise ConversionError(f"{where}: custom_tool_call needs call_id, name and "
                                      "input", where)
            message = _open_assistant(messages)
            message.setdefault("tool_calls", []).append({
                "id": call_id, "type": "function",
                "function": {"name": name,
                             "arguments": orjson.dumps({CUSTOM_INPUT: raw}).decode()}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise ConversionError(f"{where}: {kind} needs call_id", where)
            output = item.get("output")
            if isinstance(output, list):
                content = _content(output, where)
            elif isinstance(output, str):
                content = output
            else:
                raise ConversionError(f"{where}.output must be a string or an array", where)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        elif kind == "reasoning":
            texts = [p.get("text", "") for p in _list(item.get("content"))
                     if isinstance(p, dict)] or \
                    [p.get("text", "") for p in _list(item.get("summary"))
                     if isinstance(p, dict)]
            message = _open_assistant(messages)
            if message.get("content") or message.get("tool_calls"):
                message = {"role": "assistant", "content": None}
                messages.append(message)
            message["reasoning_content"] = "\n\n".join(t for t in texts if isinstance(t, str))
            if isinstance(item.get("encrypted_content"), str):
                message["reasoning_signature"] = item["encrypted_content"]
        elif kind == "item_reference":
            raise ConversionError(f"{where}: item_reference is not supported: {STATELESS}",
                                  where)
        else:
            raise ConversionError(f"{where}: input item type {kind!r} is not supported "
                                  "(message, function_call, function_call_output, "
                                  "custom_tool_call, custom_tool_call_output and reasoning "
                                  "are)", where)
    # An assistant message that is only reasoning says nothing to a Chat upstream.
    for message in messages:
        if message["role"] == "assistant" and message.get("content") is None \
                and not message.get("tool_calls"):
            message["content"] = ""


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or not isinstance(fmt, dict) or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        spec: dict[str, Any] = {"name": fmt.get("name") or "response",
                                "schema": fmt.get("schema") or {}}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    raise ConversionError("text.format.type must be text, json_object or json_schema",
                          "text.format")


def _function_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ConversionError(f"{where}: function tools need a name", where)
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    params = tool.get("parameters")
    function["parameters"] = params if isinstance(params, dict) \
        else {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _custom_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    """A `custom` tool as a Chat function tool with one string parameter, described so a
    model that only knows JSON tools writes the raw input (and its grammar) into it."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ConversionError(f"{where}: custom tools need a name", where)
    parts = [tool["description"]] if isinstance(tool.get("description"), str) else []
    parts.append(CUSTOM_NOTE)
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" \
            and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax") if isinstance(fmt.get("syntax"), str) else "grammar"
        parts.append(f"The input must match this {syntax} grammar:\n{fmt['definition']}")
    return {"type": "function", "function": {
        "name": name, "description": "\n\n".join(parts),
        "parameters": {"type": "object", "properties": {CUSTOM_INPUT: {
            "type": "string", "description": f"The raw input for {name}, unchanged."}},
            "required": [CUSTOM_INPUT], "additionalProperties": False}}}


def _add_tools(chat: dict[str, Any], ctx: ResponsesContext, body: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ConversionError("tools must be an array", "tools")
    converted: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            converted.append(_function_tool(tool, where))
            ctx.tools.append(tool)
        elif kind == "custom":
            converted.append(_custom_tool(tool, where))
            ctx.tools.append(tool)
            ctx.custom_tools.add(tool["name"])
        elif kind == "namespace" and isinstance(tool.get("tools"), list):
            for j, inner in enumerate(tool["tools"]):
                if isinstance(inner, dict) and inner.get("type") == "function":
                    converted.append(_function_tool(inner, f"{where}.tools[{j}]"))
                    ctx.tools.append(inner)
                elif isinstance(inner, dict) and inner.get("type") == "custom":
                    converted.append(_custom_tool(inner, f"{where}.tools[{j}]"))
                    ctx.tools.append(inner)
                    ctx.custom_tools.add(inner["name"])
                else:
                    ctx.dropped_tools.append(str(inner.get("type") if isinstance(inner, dict)
                                                 else inner))
        elif isinstance(kind, str):
            ctx.dropped_tools.append(kind)
        else:
            raise ConversionError(f"{where} must be an object with a type", where)
    if converted:
        chat["tools"] = converted
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto"
    if choice in ("auto", "none", "required"):
        if converted:
            chat["tool_choice"] = choice
        elif choice == "required":
            raise ConversionError("tool_choice 'required' needs function tools", "tool_choice")
    elif isinstance(choice, dict) and choice.get("type") in ("function", "custom") \
            and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise ConversionError(f"tool_choice {kind!r} is not supported: only function and "
                              "custom tools are served (built-in tools are dropped)",
                              "tool_choice")
    ctx.tool_choice = choice
    parallel = body.get("parallel_tool_calls")
    if isinstance(parallel, bool):
        ctx.parallel_tool_calls = parallel
        if converted:
            chat["parallel_tool_calls"] = parallel


def _list(value: Any) -> list[Any]:
    """`value` if it is a list, else an empty one (a reasoning item's parts are optional)."""
    return value if isinstance(value, list) else []
