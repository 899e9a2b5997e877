"""OpenAI Chat Completions request -> Anthropic Messages request (anthropic-protocol upstreams).

Pure functions, no I/O. `validate_chat_request` checks what every upstream relies on (it runs
for openai-protocol upstreams too, which get the client's body itself); `chat_to_anthropic`
builds the Anthropic body, raising `ConversionError` (a 400 for the client) for anything it
cannot carry over faithfully rather than dropping it.

Field by field (docs/protocol.md §12; docs/openai-clients.md has the user-facing table):
- `system` / `developer` messages -> `system` (joined with blank lines, in order).
- user text and `image_url` parts -> text and image blocks (data: URLs become base64
  sources, http(s) URLs url sources); audio and file parts are refused.
- assistant `content` + `tool_calls` -> text + `tool_use` blocks; `arguments` must be JSON.
  `reasoning_content` with a `reasoning_signature` (the internal field the Responses
  converter fills from a reasoning item's `encrypted_content`) -> a signed `thinking`
  block first; unsigned reasoning cannot be verified by Anthropic upstreams and is dropped.
- `tool` messages -> `tool_result` blocks in the following user turn (consecutive turns of
  one role are merged, as Anthropic requires alternation).
- `tools` / `tool_choice` / `parallel_tool_calls` -> `tools` / `tool_choice` /
  `disable_parallel_tool_use`.
- `max_completion_tokens` (else `max_tokens`, else `DEFAULT_MAX_TOKENS`) -> `max_tokens`;
  `stop` -> `stop_sequences`; `temperature` clamped to Anthropic's 0..1; `top_p`; `user` ->
  `metadata.user_id`.
- `reasoning_effort` low / medium / high / xhigh -> `thinking` with a budget from
  `THINKING_BUDGETS` (none / minimal: no thinking). Anthropic does not combine thinking with
  `temperature` / `top_p` or a forced tool choice: those win and thinking is left off.
- `response_format` json_object / json_schema -> an instruction appended to `system`
  (Anthropic has no JSON mode; the answer is not validated).
- Ignored (no Anthropic equivalent, harmless to leave out): frequency_penalty,
  presence_penalty, seed, logit_bias, store, metadata, service_tier, prompt_cache_key,
  safety_identifier, verbosity, stream_options (the ingress handles usage reporting).
- Refused: n != 1, logprobs / top_logprobs, audio / modalities with audio, prediction,
  web_search_options, legacy functions / function_call.
"""

from __future__ import annotations

from typing import Any

import orjson

DEFAULT_MAX_TOKENS = 8192
THINKING_BUDGETS = {"low": 2048, "medium": 8192, "high": 16384, "xhigh": 32000}
MIN_THINKING_BUDGET = 1024  # Anthropic's smallest budget_tokens
NO_THINKING = ("none", "minimal")
_ROLES = ("system", "developer", "user", "assistant", "tool")
_REFUSED_FIELDS = {
    "audio": "audio output is not supported by this gateway",
    "prediction": "predicted outputs are not supported by this gateway",
    "web_search_options": "built-in web search is not supported by this gateway",
    "functions": "legacy `functions` are not supported; send `tools`",
    "function_call": "legacy `function_call` is not supported; send `tool_choice`",
}


class ConversionError(ValueError):
    """The request cannot be carried over to the upstream's protocol (a 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_chat_request(body: Any) -> tuple[str, str | None] | None:
    """(message, param) of the first problem that every upstream would reject, or None."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object", None
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return "you must provide a model parameter", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array", "messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object", f"messages[{i}]"
        if message.get("role") not in _ROLES:
            return (f"messages[{i}].role must be one of {', '.join(_ROLES)}",
                    f"messages[{i}].role")
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            return (f"messages[{i}].tool_call_id is required on tool messages",
                    f"messages[{i}].tool_call_id")
    n = body.get("n")
    if n is not None and n != 1:
        return "n: only n = 1 is supported by this gateway", "n"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream must be a boolean", "stream"
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            return f"{name} must be a positive integer", name
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools must be an array", "tools"
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" \
                    or not isinstance(function, dict) \
                    or not isinstance(function.get("name"), str) or not function["name"]:
                return (f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                        "{\"name\": ...}}", f"tools[{i}]")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return "stream_options must be an object", "stream_options"
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):  # OpenAI's is a string enum
        return "reasoning_effort must be a string (none, minimal, low, medium, high, " \
            "xhigh)", "reasoning_effort"
    return None


def chat_to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Messages body for a validated Chat Completions body."""
    for name, reason in _REFUSED_FIELDS.items():
        if body.get(name) is not None:
            raise ConversionError(f"{name}: {reason}", name)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ConversionError("logprobs are not available from this model's upstream",
                              "logprobs")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise ConversionError("modalities: only text output is supported", "modalities")

    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(body["messages"]):
        role = message["role"]
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), where)
            if text:
                system.append(text)
        elif role == "user":
            _append(turns, "user", _user_blocks(message.get("content"), where))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where))
        else:
            _append(turns, "user", [_tool_result(message, where)])
    if not turns:
        raise ConversionError("messages must contain at least one user message", "messages")

    out: dict[str, Any] = {"model": body["model"], "messages": turns}
    instruction = _format_instruction(body.get("response_format"))
    if instruction:
        system.append(instruction)
    if system:
        out["system"] = "\n\n".join(system)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") \
        or DEFAULT_MAX_TOKENS
    out["max_tokens"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and not isinstance(top_p, bool):
        out["top_p"] = float(top_p)
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    _add_tools(out, body)
    _add_thinking(out, body.get("reasoning_effort"))
    return out


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ConversionError(f"{where}.content must be a string or an array of parts",
                              f"{where}.content")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ConversionError(f"{where}.content[{j}] must be an object with a type",
                                  f"{where}.content[{j}]")
    return content


def _plain_text(content: Any, where: str) -> str:
    texts = []
    for j, part in enumerate(_parts(content, where)):
        if part["type"] != "text" or not isinstance(part.get("text"), str):
            raise ConversionError(f"{where}.content[{j}]: only text parts are allowed here",
                                  f"{where}.content[{j}]")
        texts.append(part["text"])
    return "\n".join(t for t in texts if t)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, where)):
        kind = part["type"]
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(image_block(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            raise ConversionError(
                f"{where}.content[{j}]: content part type {kind!r} is not supported for this "
                "model (text and image_url are)", f"{where}.content[{j}]")
    return blocks


def image_block(image: Any, where: str) -> dict[str, Any]:
    """An Anthropic image block for an OpenAI `image_url` value (object or bare string)."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise ConversionError(f"{where}: image_url.url is required", where)
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type.startswith("image/"):
            raise ConversionError(f"{where}: image data URLs must be data:image/...;base64,...",
                                  where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise ConversionError(f"{where}: image_url.url must be a data: or http(s) URL", where)


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    signature = message.get("reasoning_signature")
    if isinstance(reasoning, str) and isinstance(signature, str) and signature:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": signature})
    for j, part in enumerate(_parts(message.get("content"), where)):
        kind = part["type"]
        text = part.get("text") if kind == "text" else part.get("refusal")
        if kind not in ("text", "refusal") or not isinstance(text, str):
            raise ConversionError(f"{where}.content[{j}]: assistant content must be text",
                                  f"{where}.content[{j}]")
        if text:
            blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise ConversionError(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
    for j, call in enumerate(calls or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(function.get("name"), str):
            raise ConversionError(f"{where}.tool_calls[{j}] needs id and function.name",
                                  f"{where}.tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": call["id"], "name": function["name"],
                       "input": _arguments(function.get("arguments"),
                                           f"{where}.tool_calls[{j}].function.arguments")})
    return blocks


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConversionError(f"{where} must be a JSON object in a string", where)
    return parsed


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, where)):
        if part["type"] == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif part["type"] == "image_url":
            blocks.append(image_block(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            raise ConversionError(f"{where}.content[{j}]: tool results carry text or images",
                                  f"{where}.content[{j}]")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    if blocks:
        result["content"] = blocks
    return result


def _add_tools(out: dict[str, Any], body: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if tools:
        converted = []
        for tool in tools:
            function = tool["function"]
            params = function.get("parameters")
            entry: dict[str, Any] = {
                "name": function["name"],
                "input_schema": params if isinstance(params, dict)
                else {"type": "object", "properties": {}}}
            if isinstance(function.get("description"), str):
                entry["description"] = function["description"]
            converted.append(entry)
        out["tools"] = converted
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    mapped: dict[str, Any] | None = None
    if choice is None or choice == "auto":
        mapped = {"type": "auto"} if tools else None
    elif choice == "none":
        mapped = {"type": "none"} if tools else None
    elif choice == "required":
        if not tools:
            raise ConversionError("tool_choice 'required' needs tools", "tool_choice")
        mapped = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        mapped = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise ConversionError("tool_choice must be none, auto, required or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                              "tool_choice")
    if mapped is not None:
        if parallel is False and mapped["type"] != "none":
            mapped["disable_parallel_tool_use"] = True
        out["tool_choice"] = mapped


def _add_thinking(out: dict[str, Any], effort: Any) -> None:
    if effort is not None and not isinstance(effort, str):
        raise ConversionError("reasoning_effort must be a string: none, minimal, low, "
                              "medium, high or xhigh", "reasoning_effort")
    if effort is None or effort in NO_THINKING:
        return
    if effort not in THINKING_BUDGETS:
        raise ConversionError("reasoning_effort must be one of none, minimal, low, medium, "
                              "high, xhigh", "reasoning_effort")
    if "temperature" in out or "top_p" in out \
            or out.get("tool_choice", {}).get("type") in ("any", "tool"):
        return
    budget = min(THINKING_BUDGETS[effort], out["max_tokens"] - 1)
    if budget < MIN_THINKING_BUDGET:
        return
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _format_instruction(response_format: Any) -> str:
    if response_format is None:
        return ""
    if not isinstance(response_format, dict) or response_format.get("type") not in (
            "text", "json_object", "json_schema"):
        raise ConversionError("response_format.type must be text, json_object or json_schema",
                              "response_format")
    kind = response_format["type"]
    if kind == "json_object":
        return "Reply with one JSON object only: no prose, no code fences."
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ConversionError("response_format.json_schema.schema must be an object",
                                  "response_format")
        return ("Reply with one JSON value only (no prose, no code fences) that matches this "
                "JSON Schema: " + orjson.dumps(schema).decode())
    return ""
