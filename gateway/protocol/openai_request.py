"""Turn an Anthropic Messages request into an OpenAI Chat Completions request (pure, no I/O).

Only fields an OpenAI-compatible upstream understands are ever written: the output is built
from a whitelist, so Anthropic-only fields (`context_management`, `output_config`, `metadata`,
`thinking`, `cache_control`, `container`, `mcp_servers`, `service_tier`, anything unknown) can
not leak through. The rules are docs/protocol.md §3 to §6.

`validate_anthropic_request` is the cheap shape check done before routing; it names the first
bad field the way Anthropic's own 400 messages do (`messages.1.content: ...`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.protocol.documents import document_parts
from gateway.protocol.tool_ids import upstream_tool_id

__all__ = ["OpenAIOptions", "effective_model", "thinking_state", "to_openai_request",
           "validate_anthropic_request"]

# Reasoning styles (`reasoning = "..."` of a provider) and what each one does:
#   dashscope   `enable_thinking` + `thinking_budget`; thinking only in streams.
#   deepseek    `thinking: {type}`; thinking is on by default, so "disabled" is sent
#               explicitly; prior `reasoning_content` goes back on tool-call turns; an
#               optional `reasoning_model` replaces the model while thinking.
#   kimi, glm   the same `thinking: {type}` switch and `reasoning_content` round trip.
#   openai      `reasoning_effort` and `max_completion_tokens` (o-series, gpt-5: `max_tokens`
#               is a 400 there); temperature/top_p are not sent while reasoning.
#   openrouter  `reasoning: {max_tokens | effort}`.
#   ollama      thinking on by default for models that can think; "disabled" is sent as
#               `reasoning_effort: "none"`, the one switch Ollama's /v1 honours (its native
#               `think: false` does nothing there: ollama/ollama#14820, docs PR #14821).
#               Nothing is sent to turn it on: asking a model that cannot think to think
#               is a 400 ("does not support thinking", atomantic/PortOS#6130).
#   vllm        Qwen3-style chat templates think by default; "disabled" is sent as
#               `chat_template_kwargs: {"enable_thinking": false}` ("To disable it, you must
#               pass enable_thinking=False in your chat_template_kwargs",
#               docs.vllm.ai/en/stable/features/reasoning_outputs). llama.cpp's server
#               takes the same switch.
REPLAY_STYLES = frozenset({"deepseek", "kimi", "glm"})
THINKING_SWITCH_STYLES = frozenset({"deepseek", "kimi", "glm"})

@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """What differs between OpenAI-compatible upstreams (set per provider in the config)."""

    max_output_tokens: int | None = None
    """Clamp `max_tokens` to this (Claude Code asks for 64000; smaller upstream limits 400)."""
    reasoning: str | None = None
    """How thinking is switched: None (never), or a style of the table above ("deepseek",
    "kimi", "glm", "dashscope", "openai", "openrouter", "ollama", "vllm")."""
    reasoning_model: str | None = None
    """Upstream model to use instead when thinking is enabled (DeepSeek style)."""
    send_top_k: bool = False
    """`top_k` is not standard OpenAI; only some upstreams (DashScope, vLLM) accept it."""
    send_user: bool = False
    """Forward `metadata.user_id` as `user`."""
    send_files: bool = False
    """The upstream takes OpenAI `file` content parts (PDFs); otherwise their text is sent."""


# Text of the tool message sent for a tool call that the history never answered (see
# `_Converter.answer_missing_tool_calls`).
MISSING_TOOL_RESULT = "[no result: this tool call was not answered]"
TOOL_ERROR_PREFIX = "[tool error] "
EMPTY_TOOL_RESULT = "[empty result]"
TOOL_IMAGE_NOTE = "[image output of this tool call follows in the next user message]"

_SYSTEM_JOIN = "\n\n"
_EFFORT_LEVELS = ("low", "medium", "high")


BILLING_HEADER = "x-anthropic-billing-header:"


def is_client_metadata(text: str) -> bool:
    """Claude Code's first system block is `x-anthropic-billing-header: cc_version=...`,
    whose suffix changes per session: metadata for Anthropic, not an instruction, and at
    the very start of the prompt it would defeat every upstream prefix cache."""
    return text.startswith(BILLING_HEADER)


def without_client_metadata(system: Any) -> Any:
    """The system prompt minus Claude Code's billing-header block (for pass-through)."""
    if isinstance(system, list) and any(
            isinstance(b, dict) and isinstance(b.get("text"), str)
            and is_client_metadata(b["text"]) for b in system):
        return [b for b in system if not (isinstance(b, dict) and isinstance(b.get("text"), str)
                                          and is_client_metadata(b["text"]))]
    return system


def to_openai_request(
    body: dict[str, Any], upstream_model: str, options: OpenAIOptions
) -> dict[str, Any]:
    """Build the Chat Completions body for `body`, a request already accepted by
    `validate_anthropic_request`. The input is not modified; blocks are read, never copied."""
    thinking = thinking_state(body)
    replay = options.reasoning in REPLAY_STYLES and thinking != "disabled"
    converter = _Converter(replay, options.send_files)
    converter.add_system(body.get("system"))
    for message in body["messages"]:
        converter.add_message(message)
    converter.answer_missing_tool_calls()

    messages = converter.messages
    system_text = _SYSTEM_JOIN.join(converter.system_parts)
    if system_text:
        messages.insert(0, {"role": "system", "content": system_text})

    out: dict[str, Any] = {"model": effective_model(body, upstream_model, options),
                           "messages": messages}
    openai_reasoning = options.reasoning == "openai"

    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        limit = options.max_output_tokens
        clamped = min(max_tokens, limit) if limit is not None else max_tokens
        # OpenAI's reasoning models: "Unsupported parameter: 'max_tokens' is not supported
        # with this model. Use 'max_completion_tokens' instead."; every current OpenAI
        # model takes max_completion_tokens, so that style always sends it.
        out["max_completion_tokens" if openai_reasoning else "max_tokens"] = clamped

    for name in () if openai_reasoning and thinking != "disabled" else ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    top_k = body.get("top_k")
    if options.send_top_k and isinstance(top_k, int) and not isinstance(top_k, bool):
        out["top_k"] = top_k

    stop = body.get("stop_sequences")
    if isinstance(stop, list):
        stop = [s for s in stop if isinstance(s, str) and s]
        if stop:
            out["stop"] = stop

    if body.get("stream") is True:
        out["stream"] = True
        # Without this, OpenAI-style streams carry no usage at all (docs/protocol.md §3).
        out["stream_options"] = {"include_usage": True}

    if options.send_user:
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            user_id = metadata.get("user_id")
            if isinstance(user_id, str) and user_id:
                out["user"] = user_id

    _add_tools(out, body)
    _add_reasoning(out, body, options)
    return out


class _Converter:
    """Walks the Anthropic history once, emitting OpenAI messages in upstream-legal order."""

    __slots__ = ("messages", "pending_tool_ids", "replay", "send_files", "system_parts")

    def __init__(self, replay: bool = False, send_files: bool = False) -> None:
        self.replay = replay  # send prior thinking back as `reasoning_content`
        self.send_files = send_files
        self.messages: list[dict[str, Any]] = []
        self.system_parts: list[str] = []
        # Ids of the last assistant turn's tool calls that still need a `tool` message.
        self.pending_tool_ids: list[str] = []

    def add_system(self, system: Any) -> None:
        if isinstance(system, str):
            if system:
                self.system_parts.append(system)
        elif isinstance(system, list):
            for block in system:
                if isinstance(block, dict):
                    text = block.get("text")
                    if isinstance(text, str) and text and not is_client_metadata(text):
                        self.system_parts.append(text)

    def add_message(self, message: dict[str, Any]) -> None:
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            self._add_user(content)
        elif role == "assistant":
            self._add_assistant(content)
        elif role == "system":
            # Claude Code sometimes sends these inside `messages`; many upstream chat templates
            # (Qwen's among them) reject a system message that is not first, so fold it in.
            self.add_system(content)

    def answer_missing_tool_calls(self) -> None:
        """Add a placeholder `tool` message for every unanswered call of the last assistant turn.

        OpenAI-compatible upstreams return 400 when an assistant `tool_calls` entry has no
        `tool` message right after it (docs/protocol.md §4). Anthropic clients can produce
        such a history (an interrupted tool, an edited transcript), so instead of failing we
        answer the call ourselves and say that no result exists.
        """
        for tool_id in self.pending_tool_ids:
            self.messages.append(
                {"role": "tool", "tool_call_id": tool_id, "content": MISSING_TOOL_RESULT}
            )
        self.pending_tool_ids = []

    def _add_assistant(self, content: Any) -> None:
        texts: list[str] = []
        thoughts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        if isinstance(content, str):
            if content:
                texts.append(content)
        elif isinstance(content, list):
            for block in content:
                if not isinstance(block, dict):
                    continue
                kind = block.get("type")
                if kind == "text":
                    text = block.get("text")
                    if isinstance(text, str) and text:
                        texts.append(text)
                elif kind == "tool_use":
                    tool_calls.append(_tool_call(block))
                elif kind == "thinking":
                    thought = block.get("thinking")
                    if isinstance(thought, str) and thought:
                        thoughts.append(thought)
                # thinking goes back only to vendors that ask for it (`replay`); its
                # signature and redacted_thinking mean nothing to another vendor.
                # server_tool_use and *_tool_result blocks belong to Anthropic server tools,
                # which are not offered.
        if not texts and not tool_calls:
            # e.g. a turn holding only thinking. Skipping it before touching pending tool
            # calls keeps a following tool_result attached to the turn that made the calls.
            return
        self.answer_missing_tool_calls()
        out: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
        if tool_calls:
            # Content "" rather than null: it is what DashScope and DeepSeek themselves return
            # next to tool_calls, and some upstreams reject a null content.
            out["tool_calls"] = tool_calls
            self.pending_tool_ids = [call["id"] for call in tool_calls]
            if self.replay:
                # DeepSeek: "For turns that do perform tool calls, the reasoning_content must
                # be fully passed back to the API in all subsequent requests" (400 "Missing
                # `reasoning_content` field" otherwise; https://api-docs.deepseek.com/guides/
                # thinking_mode#tool-calls). Kimi and GLM ask the same. The field must be
                # present even when the turn had no thinking, so "" then.
                out["reasoning_content"] = "\n\n".join(thoughts)
        self.messages.append(out)

    def _add_user(self, content: Any) -> None:
        if not isinstance(content, list):
            self.answer_missing_tool_calls()
            # Empty content is a 400 at several upstreams; Anthropic rejects it anyway.
            if isinstance(content, str) and content:
                self.messages.append({"role": "user", "content": content})
            return

        results: dict[str, dict[str, Any]] = {}
        parts: list[dict[str, Any]] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                text = block.get("text")
                if isinstance(text, str) and text:
                    parts.append({"type": "text", "text": text})
            elif kind == "image":
                part = _image_part(block)
                if part is not None:
                    parts.append(part)
            elif kind == "tool_result":
                tool_id = upstream_tool_id(str(block.get("tool_use_id") or ""))
                text, images = _tool_result_content(block, self.send_files)
                if tool_id in self.pending_tool_ids and tool_id not in results:
                    if images:
                        # Tool messages are text only (docs/protocol.md §4): the image goes into the
                        # user message that follows the tool messages.
                        text = f"{text}\n{TOOL_IMAGE_NOTE}" if text else TOOL_IMAGE_NOTE
                    # Some upstreams reject an empty content, even for a tool message.
                    text = text or EMPTY_TOOL_RESULT
                    results[tool_id] = {"role": "tool", "tool_call_id": tool_id, "content": text}
                else:
                    # A result for a call the previous assistant turn did not make: a `tool`
                    # message there would be a 400, so keep the text as user content.
                    label = f"[result of tool call {tool_id}]"
                    parts.append({"type": "text", "text": f"{label}\n{text}" if text else label})
                parts.extend(images)
            elif kind == "document":
                parts.extend(document_parts(block, self.send_files))
            # Other block types (search_result, container_upload, ...) have no OpenAI form.

        # Tool messages in the order of the calls, all before the user's own content.
        for tool_id in self.pending_tool_ids:
            result = results.get(tool_id)
            self.messages.append(
                result
                if result is not None
                else {"role": "tool", "tool_call_id": tool_id, "content": MISSING_TOOL_RESULT}
            )
        self.pending_tool_ids = []
        if parts:
            self.messages.append({"role": "user", "content": _compact_parts(parts)})


def _compact_parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string: every OpenAI-compatible upstream accepts that, while
    some older ones reject the list form."""
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(part["text"] for part in parts)
    return parts


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    tool_input = block.get("input")
    return {
        "id": upstream_tool_id(str(block.get("id") or "")),
        "type": "function",
        "function": {
            "name": block.get("name") or "",
            "arguments": _compact_json(tool_input if tool_input is not None else {}),
        },
    }


def _compact_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # orjson refuses integers beyond 64 bits; the standard library does not.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    kind = source.get("type")
    if kind == "base64":
        media_type = source.get("media_type") or "image/png"
        data = source.get("data")
        if not isinstance(data, str):
            return None
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        source_url = source.get("url")
        if not isinstance(source_url, str):
            return None
        url = source_url
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_content(block: dict[str, Any],
                         send_files: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """The text of a tool_result (error-marked if `is_error`) and its images as OpenAI parts."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for item in content:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "text":
                item_text = item.get("text")
                if isinstance(item_text, str) and item_text:
                    texts.append(item_text)
            elif kind == "image":
                part = _image_part(item)
                if part is not None:
                    images.append(part)
            elif kind == "document":
                # A tool message holds text only, so a PDF from the Read tool is sent as
                # its text (or a visible placeholder), never as a file part.
                texts.extend(p["text"] for p in document_parts(item, False))
        text = "\n\n".join(texts)
    else:
        text = ""
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return text, images


def _add_tools(out: dict[str, Any], body: dict[str, Any]) -> None:
    tools = body.get("tools")
    functions: list[dict[str, Any]] = []
    if isinstance(tools, list):
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            schema = tool.get("input_schema")
            if schema is None:
                # Server tools (web_search_..., code_execution_...) run at Anthropic; they carry
                # a `type` and no schema, and no upstream here can run them.
                continue
            function: dict[str, Any] = {"name": tool.get("name") or ""}
            description = tool.get("description")
            if isinstance(description, str) and description:
                function["description"] = description
            function["parameters"] = schema
            functions.append({"type": "function", "function": function})
    if not functions:
        # An empty `tools` list or a tool_choice without tools is a 400 upstream.
        return
    out["tools"] = functions

    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if any(f["function"]["name"] == name for f in functions):
            out["tool_choice"] = {"type": "function", "function": {"name": name}}
        else:
            # The named tool was a dropped server tool: naming it upstream would be a 400.
            out["tool_choice"] = "required"
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False


def thinking_state(body: dict[str, Any]) -> str:
    """"enabled" (also adaptive and newer types), "disabled" or "unset" for a request."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        return "unset"
    return "disabled" if thinking.get("type") == "disabled" else "enabled"


def effective_model(body: dict[str, Any], upstream_model: str, options: OpenAIOptions) -> str:
    """The upstream model the request really goes to: the reasoning model while thinking
    (it is the model of record for clamping, pricing and the usage row)."""
    if options.reasoning_model and thinking_state(body) == "enabled":
        return options.reasoning_model
    return upstream_model


def _add_reasoning(out: dict[str, Any], body: dict[str, Any], options: OpenAIOptions) -> None:
    style = options.reasoning
    if style is None:
        return
    state = thinking_state(body)
    if style in THINKING_SWITCH_STYLES:
        # Thinking is on by default there (DeepSeek: "Thinking mode is enabled by default";
        # Kimi K2.5, GLM-4.7+ the same), so a client that turns it off must say so upstream.
        if state != "unset":
            out["thinking"] = {"type": state}
        if state != "disabled" or style == "glm":
            _thinking_tool_choice(out)
        return
    if state == "unset":
        return
    thinking = body["thinking"]
    kind = thinking.get("type")
    enabled = state == "enabled"
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        budget = None

    if style == "dashscope":
        if enabled and body.get("stream") is not True:
            # DashScope thinks only in streams: "parameter.enable_thinking must be set to false
            # for non-streaming calls" (400), so such requests run without thinking.
            out["enable_thinking"] = False
        elif enabled:
            out["enable_thinking"] = True
            if budget is not None:
                out["thinking_budget"] = budget
            # "The tool_choice parameter does not support being set to required or object
            # in thinking mode" (400; QwenLM/qwen-code#7659): auto is the closest legal ask.
            if out.get("tool_choice") not in (None, "auto", "none"):
                out["tool_choice"] = "auto"
        elif kind == "disabled":
            out["enable_thinking"] = False
    elif style == "ollama" and kind == "disabled":
        out["reasoning_effort"] = "none"
    elif style == "vllm" and kind == "disabled":
        out["chat_template_kwargs"] = {"enable_thinking": False}
    elif style == "openai" and enabled:
        out["reasoning_effort"] = _reasoning_effort(budget, body.get("output_config"))
    elif style == "openrouter":
        # https://openrouter.ai/docs/use-cases/reasoning-tokens: one of effort / max_tokens.
        if not enabled:
            out["reasoning"] = {"effort": "none"}
        elif budget is not None:
            out["reasoning"] = {"max_tokens": budget}
        else:
            out["reasoning"] = {"effort": _reasoning_effort(None, body.get("output_config"))}


def _thinking_tool_choice(out: dict[str, Any]) -> None:
    """Forced tool choices are a 400 while thinking: DeepSeek "Thinking mode does not
    support this tool_choice" (cloudwego/eino#994), Kimi "tool_choice 'required' is
    incompatible with thinking enabled" (AstrBotDevs/AstrBot#7825); GLM takes only auto
    (java.agentscope.io GLM notes). auto is the closest legal ask."""
    if out.get("tool_choice") not in (None, "auto", "none"):
        out["tool_choice"] = "auto"


def _reasoning_effort(budget: int | None, output_config: Any) -> str:
    """A thinking budget maps to low/medium/high; without one, Claude Code's
    `output_config.effort` is the best hint there is; otherwise "medium"."""
    if budget is not None:
        if budget < 4096:
            return "low"
        if budget < 16384:
            return "medium"
        return "high"
    if isinstance(output_config, dict):
        effort = output_config.get("effort")
        if effort in _EFFORT_LEVELS:
            return str(effort)
    return "medium"


# --------------------------------------------------------------------------- validation

_ROLES = ("user", "assistant", "system")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")


def validate_anthropic_request(body: Any) -> str | None:
    """None if `body` is a usable Messages request, else "field.path: what is wrong".

    Checks what conversion relies on and no more: unknown fields and unknown content block
    types pass, because real clients send newer shapes than any list here.
    """
    if not isinstance(body, dict):
        return "body: must be a JSON object"
    model = body.get("model")
    if model is None:
        return "model: field required"
    if not isinstance(model, str) or not model:
        return "model: must be a non-empty string"
    if "max_tokens" not in body:
        return "max_tokens: field required"
    max_tokens = body["max_tokens"]
    if not _is_int(max_tokens) or max_tokens < 1:
        return "max_tokens: must be a positive integer"

    messages = body.get("messages")
    if messages is None:
        return "messages: field required"
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty list"
    for i, message in enumerate(messages):
        error = _message_error(message, f"messages.{i}")
        if error is not None:
            return error

    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            return "system: must be a string or a list of text blocks"
        for i, block in enumerate(system):
            if not isinstance(block, dict) or not isinstance(block.get("text"), str):
                return f"system.{i}: must be a text block"

    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: must be a list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return f"tools.{i}.name: field required"
            schema = tool.get("input_schema")
            if schema is not None and not isinstance(schema, dict):
                return f"tools.{i}.input_schema: must be an object"

    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICE_TYPES:
            return "tool_choice.type: must be one of 'auto', 'any', 'tool', 'none'"
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            return "tool_choice.name: field required"

    stop = body.get("stop_sequences")
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        return "stop_sequences: must be a list of strings"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            return f"{name}: must be a number"
    top_k = body.get("top_k")
    if top_k is not None and not _is_int(top_k):
        return "top_k: must be an integer"
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream: must be a boolean"
    thinking = body.get("thinking")
    if thinking is not None and (
        not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str)
    ):
        return "thinking.type: field required"
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "metadata: must be an object"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _message_error(message: Any, path: str) -> str | None:
    """The problem with one message (at `path`, e.g. "messages.3"), or None."""
    if not isinstance(message, dict):
        return f"{path}: must be an object"
    if message.get("role") not in _ROLES:
        return f"{path}.role: must be 'user' or 'assistant'"
    if "content" not in message:
        return f"{path}.content: field required"
    content = message["content"]
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{path}.content: must be a string or a list of content blocks"
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"{path}.content.{j}.type: field required"
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                return f"{path}.content.{j}.text: must be a string"
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                return f"{path}.content.{j}: tool_use needs string 'id' and 'name'"
            if "input" in block and not isinstance(block["input"], dict):
                return f"{path}.content.{j}.input: must be an object"
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                return f"{path}.content.{j}.tool_use_id: field required"
            result = block.get("content")
            if result is not None and not isinstance(result, str | list):
                return f"{path}.content.{j}.content: must be a string or a list of content blocks"
        elif kind == "image" and not isinstance(block.get("source"), dict):
            return f"{path}.content.{j}.source: field required"
    return None
