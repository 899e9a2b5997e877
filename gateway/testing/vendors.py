"""Vendor profiles for the fake upstream: each real vendor's request rules and wire shapes.

A fake started with ``--vendor NAME`` (or ``FakeSettings(vendor=NAME)``) stops being polite:
it refuses what that vendor refuses, with the vendor's status and error wording, and answers
in the vendor's own dialect (where usage sits, what the reasoning field is called, how tool
ids look, which keep-alive comments it sends, how errors inside an HTTP 200 look). Every rule
names the documentation page or public bug report it comes from, next to the rule.

This module is pure (no I/O) and imports nothing of the gateway: the fake upstream is a
stand-in for a vendor, not a part of the relay. `check_request` returns the error to answer
with, or None; the other helpers tell the fake how to shape an answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["VENDORS", "Rejection", "Vendor", "check_request", "thinking_active",
           "vendor_error_body"]

Protocol = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An HTTP error answer: status and JSON body in the vendor's shape."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Vendor:
    """What one vendor family does differently; defaults are plain OpenAI/Anthropic."""

    name: str
    protocols: tuple[str, ...]
    doc: str
    # Thinking: on unless the request turns it off (DeepSeek, Kimi K2.5+, GLM-4.7+, Qwen3 on
    # vLLM/llama.cpp, thinking models on Ollama), and how a request turns it on/off:
    # "thinking" ({type}), "enable_thinking" (DashScope), "reasoning" (OpenRouter),
    # "reasoning_effort" (OpenAI), "ollama" (reasoning_effort "none" off; `think` ignored),
    # "chat_template_kwargs" (enable_thinking false off), "" (not switchable).
    thinking_default: bool = False
    thinking_param: str = ""
    # Name of the streamed / returned reasoning text ("" = never shown, OpenAI o-series).
    reasoning_field: str = "reasoning_content"
    # Prior reasoning must come back on assistant tool-call turns (400 otherwise).
    replay_message: str | None = None
    # 400 for tool_choice "required"/object while thinking.
    forced_tool_choice_message: str | None = None
    tool_id_style: Literal["call", "kimi"] = "call"
    # Where stream usage goes: "final" (usage-only chunk when include_usage), "choice"
    # (Kimi: inside choices[0] of the finish chunk, always), "always_final" (OpenRouter).
    usage_place: Literal["final", "choice", "always_final"] = "final"
    # How cache hits are reported: "details" (prompt_tokens_details.cached_tokens),
    # "deepseek" (prompt_cache_hit_tokens / _miss_tokens, plus details), "kimi"
    # (top-level cached_tokens), "none".
    cache_style: Literal["details", "deepseek", "kimi", "none"] = "details"
    # Cache writes reported on the OpenAI endpoint (prompt_tokens_details.
    # cache_creation_input_tokens); the Anthropic endpoints always report them.
    reports_cache_creation: bool = False
    keepalive: bytes = b""  # SSE comment sent while a request waits in the vendor's queue
    error_shape: Literal["openai", "dashscope", "glm", "vllm", "openrouter"] = "openai"
    max_model_len: int | None = None  # vLLM: prompt + max_tokens must fit
    extra: Mapping[str, Any] = field(default_factory=dict)


_DEEPSEEK_REPLAY = ("Missing `reasoning_content` field in the assistant message at message "
                    "index {index}. For more information, please refer to "
                    "https://api-docs.deepseek.com/guides/thinking_mode#tool-calls")
_KIMI_REPLAY = ("thinking is enabled but reasoning_content is missing in assistant tool call "
                "message at index {index}")

VENDORS: dict[str, Vendor] = {
    "deepseek": Vendor(
        "deepseek", ("openai", "anthropic"),
        "https://api-docs.deepseek.com/guides/thinking_mode",
        # "Thinking mode is enabled by default"; switched by {"thinking": {"type": ...}}
        # (https://api-docs.deepseek.com/guides/thinking_mode).
        thinking_default=True, thinking_param="thinking",
        # "For turns that do perform tool calls, the reasoning_content must be fully passed
        # back ... otherwise the API will return a 400 error" (same page; wording of the
        # error from hotovo/aider-desk#529 and continuedev/continue#11285).
        replay_message=_DEEPSEEK_REPLAY,
        # "Thinking mode does not support this tool_choice" (cloudwego/eino#994).
        forced_tool_choice_message="Thinking mode does not support this tool_choice",
        cache_style="deepseek",
        # "Streaming requests: Continuously return SSE keep-alive comments (: keep-alive)"
        # while the request waits (https://api-docs.deepseek.com/quick_start/rate_limit).
        keepalive=b": keep-alive\n\n",
    ),
    "dashscope": Vendor(
        "dashscope", ("openai", "anthropic"),
        "https://www.alibabacloud.com/help/en/model-studio/deep-thinking",
        # Hybrid models: enable_thinking true/false per request (Model Studio, deep thinking).
        thinking_default=False, thinking_param="enable_thinking",
        # "<400> InternalError.Algo.InvalidParameter: The tool_choice parameter does not
        # support being set to required or object in thinking mode" (cloudwego/eino#994,
        # QwenLM/qwen-code#7659).
        forced_tool_choice_message="<400> InternalError.Algo.InvalidParameter: The tool_choice "
        "parameter does not support being set to required or object in thinking mode",
        error_shape="dashscope",
        # Explicit cache: creation billed at 125 % of input, hits at 10 %, reported apart
        # (https://www.alibabacloud.com/help/model-studio/context-cache).
        reports_cache_creation=True,
    ),
    "kimi": Vendor(
        "kimi", ("openai", "anthropic"),
        "https://platform.moonshot.cn/docs/guide/use-kimi-k2-thinking-model",
        # kimi-k2.5: thinking "默认启用", disabled with {"thinking": {"type": "disabled"}}
        # (platform.moonshot.cn, use-kimi-k2-thinking-model).
        thinking_default=True, thinking_param="thinking",
        # QuantumNous/new-api#4408, agentscope-ai/QwenPaw#433 (Kimi-K2.5).
        replay_message=_KIMI_REPLAY,
        # "tool_choice 'required' is incompatible with thinking enabled" (AstrBot#7825).
        forced_tool_choice_message="tool_choice 'required' is incompatible with thinking "
        "enabled",
        # Native ids `functions.NAME:IDX`, numbered per answer (docs.vllm.ai kimi_k2 parser:
        # "The header ... is Kimi's native tool call id"), on both endpoints: the fake's
        # Anthropic endpoint repeats them too, the worst case for a client that pairs
        # results by id (Anthropic's own API requires "`tool_use` ids must be unique",
        # anthropics/claude-code#20885).
        tool_id_style="kimi",
        # Stream usage in choices[0].usage of the finish chunk (earendil-works/pi#2017,
        # higress-group/higress#1568); cache hits as usage.cached_tokens.
        usage_place="choice", cache_style="kimi",
    ),
    "glm": Vendor(
        "glm", ("openai", "anthropic"),
        "https://docs.z.ai/guides/capabilities/thinking-mode",
        # "Thinking is activated by default in GLM-5.1 GLM-5 GLM-4.7"; disabled with
        # {"thinking": {"type": "disabled"}} (docs.z.ai thinking mode).
        thinking_default=True, thinking_param="thinking",
        # "thinking blocks should be explicitly preserved and returned together with the tool
        # results" (docs.z.ai); the 400 when not: QuantumNous/new-api#4408 (glm-5.1).
        replay_message=_KIMI_REPLAY,
        # "GLM only accepts tool_choice=auto" (java.agentscope.io, GLM compatibility notes).
        forced_tool_choice_message="tool_choice only supports auto",
        error_shape="glm",
    ),
    "openrouter": Vendor(
        "openrouter", ("openai", "anthropic"),
        "https://openrouter.ai/docs/api/errors",
        thinking_param="reasoning",
        # Reasoning text in the `reasoning` field (openrouter.ai reasoning-tokens docs).
        reasoning_field="reasoning",
        # Usage always in the last chunk (openrouter.ai streaming docs: "Final chunk includes
        # usage stats").
        usage_place="always_final",
        # ": OPENROUTER PROCESSING" comments "to prevent connection timeouts"
        # (https://openrouter.ai/docs/api-reference/streaming).
        keepalive=b": OPENROUTER PROCESSING\n\n",
        error_shape="openrouter",
    ),
    "vllm": Vendor(
        "vllm", ("openai",),
        "https://docs.vllm.ai/en/stable/features/reasoning_outputs/",
        # "The reasoning feature for the Qwen3 series is enabled by default. To disable it,
        # you must pass enable_thinking=False in your chat_template_kwargs" (same page).
        thinking_default=True, thinking_param="chat_template_kwargs",
        # "reasoning used to be called reasoning_content. To migrate, directly replace
        # reasoning_content with reasoning" (same page): current servers send `reasoning`.
        reasoning_field="reasoning",
        cache_style="none",
        # "This model's maximum context length is 4096 tokens. However, you requested 4348
        # tokens (4332 in the messages, 16 in the completion)..." (huggingface.co
        # lmsys/vicuna-13b-v1.5-16k discussion 8; vLLM's own wording).
        max_model_len=32768, error_shape="vllm",
    ),
    "ollama": Vendor(
        "ollama", ("openai", "anthropic"),
        "https://github.com/ollama/ollama/blob/main/docs/openai.md",
        # Ollama's /v1 streams thinking as `delta.reasoning`, never reasoning_content
        # (dirac-run/dirac#227, anomalyco/opencode#46061).
        reasoning_field="reasoning", cache_style="none",
        # "Ollama auto-enables thinking for capable models when no reasoning_effort is
        # provided"; on /v1/chat/completions `reasoning_effort` (or `reasoning.effort`)
        # "none" turns it off, and "the native Ollama parameter think: true/false does not
        # work on this endpoint" (ollama/ollama#14820, documented by ollama/ollama#14821).
        thinking_default=True, thinking_param="ollama",
        # Its Anthropic endpoint (/v1/messages, ollama/ollama anthropic/anthropic.go): a
        # `role: "system"` message is passed on as a system message (no 400), `thinking`
        # {type: enabled|disabled} sets `think`, and usage has only input_tokens and
        # output_tokens (no cache fields: cache_style "none" covers both endpoints).
    ),
    "llamacpp": Vendor(
        "llamacpp", ("openai",),
        "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md",
        # llama-server returns reasoning_content and timings (pypi langchain-llama-cpp).
        cache_style="none", extra={"timings": True},
        # Qwen3-style templates think by default; "The server already has a way to disable
        # reasoning in the OpenAI-compatible chat completions API, via chat_template_kwargs"
        # (ggml-org/llama.cpp#26045, which adds reasoning_effort "none" as well).
        thinking_default=True, thinking_param="chat_template_kwargs",
    ),
    "openai": Vendor(
        "openai", ("openai",),
        "https://platform.openai.com/docs/guides/reasoning",
        thinking_param="reasoning_effort",
        # o-series / gpt-5 return no reasoning text, only reasoning_tokens in usage
        # (openrouter.ai reasoning docs: "some (like the OpenAI o-series) do not").
        reasoning_field="",
    ),
}


# ------------------------------------------------------------------------------ rules


def thinking_active(vendor: Vendor, body: Mapping[str, Any], protocol: Protocol) -> bool:
    """Whether the vendor would think for this request."""
    if protocol == "anthropic" or vendor.thinking_param == "thinking":
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and isinstance(thinking.get("type"), str):
            return bool(thinking["type"] != "disabled")
        return vendor.thinking_default if protocol == "openai" else False
    if vendor.thinking_param == "enable_thinking":
        return body.get("enable_thinking") is True
    if vendor.thinking_param == "chat_template_kwargs":
        kwargs = body.get("chat_template_kwargs")
        if isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False:
            return False
        return vendor.thinking_default
    if vendor.thinking_param == "ollama":  # `think` is not read on /v1
        reasoning = body.get("reasoning")
        return body.get("reasoning_effort") != "none" and not (
            isinstance(reasoning, dict) and reasoning.get("effort") == "none")
    if vendor.thinking_param == "reasoning":
        reasoning = body.get("reasoning")
        return isinstance(reasoning, dict) and reasoning.get("effort") != "none"
    return vendor.thinking_param == "reasoning_effort"  # reasoning models always reason


def check_request(vendor: Vendor, body: Mapping[str, Any],
                  protocol: Protocol) -> Rejection | None:
    """The vendor's 400 for `body`, or None when the vendor would accept it."""
    if protocol not in vendor.protocols:
        return Rejection(404, _error(vendor, 404, f"{vendor.name} has no {protocol} endpoint"))
    if protocol == "anthropic":
        return _check_anthropic(vendor, body)
    return _check_openai(vendor, body)


def _check_anthropic(vendor: Vendor, body: Mapping[str, Any]) -> Rejection | None:
    # Only DeepSeek's refusal of `role: "system"` is documented; DashScope's is not (its
    # Anthropic page shows user/assistant only) and Ollama's source passes the entry on, so
    # neither refuses it here (docs/vendors.md, "What we could not verify").
    messages = _messages(body)
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant") and vendor.name == "deepseek":
            # DeepSeek's Anthropic endpoint: "Failed to deserialize the JSON body into the
            # target type: messages[1].role: unknown variant `system`, expected `user` or
            # `assistant` at line 1 column 29" (deepseek-ai/awesome-deepseek-agent#167,
            # musistudio/claude-code-router#881).
            return Rejection(400, _error(vendor, 400, (
                f"Failed to deserialize the JSON body into the target type: messages[{i}].role"
                f": unknown variant `{role}`, expected `user` or `assistant` at line 1 "
                "column 29")))
    return None


def _check_openai(vendor: Vendor, body: Mapping[str, Any]) -> Rejection | None:
    messages = _messages(body)
    problem = _tool_sequence_problem(messages)
    if problem is not None:
        return Rejection(400, _error(vendor, 400, problem))
    thinking = thinking_active(vendor, body, "openai")
    choice = body.get("tool_choice")
    forced = choice == "required" or isinstance(choice, dict)
    if vendor.name == "glm" and choice not in (None, "auto"):
        return Rejection(400, _error(vendor, 400, vendor.forced_tool_choice_message or ""))
    if thinking and forced and vendor.forced_tool_choice_message:
        return Rejection(400, _error(vendor, 400, vendor.forced_tool_choice_message))
    if thinking and vendor.replay_message:
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "assistant" \
                    and message.get("tool_calls") and "reasoning_content" not in message:
                return Rejection(400, _error(vendor, 400,
                                             vendor.replay_message.format(index=i)))
    if vendor.name == "dashscope":
        rejection = _dashscope(vendor, body)
        if rejection is not None:
            return rejection
    if vendor.name == "openai":
        rejection = _openai_reasoning_model(vendor, body)
        if rejection is not None:
            return rejection
    if vendor.max_model_len is not None:
        prompt = max(1, len(_compact(body)) // 4)
        completion = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if isinstance(completion, int) and prompt + completion > vendor.max_model_len:
            return Rejection(400, _error(vendor, 400, (
                f"This model's maximum context length is {vendor.max_model_len} tokens. "
                f"However, you requested {prompt + completion} tokens ({prompt} in the "
                f"messages, {completion} in the completion). Please reduce the length of "
                "the messages or completion.")))
    return None


def _dashscope(vendor: Vendor, body: Mapping[str, Any]) -> Rejection | None:
    if body.get("enable_thinking") is True and body.get("stream") is not True:
        # "parameter.enable_thinking must be set to false for non-streaming calls"
        # (https://www.alibabacloud.com/help/en/model-studio/error-code).
        return Rejection(400, _error(vendor, 400, "<400> InternalError.Algo.InvalidParameter: "
                                     "parameter.enable_thinking must be set to false for "
                                     "non-streaming calls"))
    budget = body.get("thinking_budget")
    if budget is not None and (not isinstance(budget, int) or budget <= 0):
        # "The thinking_budget parameter must be a positive integer and not greater than
        # xxx" (same error-code page).
        return Rejection(400, _error(vendor, 400, "<400> InternalError.Algo.InvalidParameter: "
                                     "The thinking_budget parameter must be a positive "
                                     "integer and not greater than 38912"))
    return None


def _openai_reasoning_model(vendor: Vendor, body: Mapping[str, Any]) -> Rejection | None:
    if "max_tokens" in body:
        # "Unsupported parameter: 'max_tokens' is not supported with this model. Use
        # 'max_completion_tokens' instead." (teilomillet/gollm#33,
        # griptape-ai/ComfyUI-Griptape#312: type invalid_request_error, code
        # unsupported_parameter, param max_tokens).
        return Rejection(400, _openai_param_error(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter"))
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        # "Unsupported value: 'temperature' does not support 0.5 with this model. Only the
        # default (1) value is supported." (leafo/lua-openai#12).
        return Rejection(400, _openai_param_error(
            f"Unsupported value: 'temperature' does not support {temperature} with this "
            "model. Only the default (1) value is supported.", "temperature",
            "unsupported_value"))
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in ("minimal", "low", "medium", "high"):
        return Rejection(400, _openai_param_error(
            f"Invalid value: '{effort}'. Supported values are: 'minimal', 'low', 'medium', "
            "and 'high'.", "reasoning_effort", "invalid_value"))
    return None


def _tool_sequence_problem(messages: list[Any]) -> str | None:
    """Every assistant tool call needs its tool message right after it, and a tool message
    needs a call (docs/protocol.md §4; wording of DeepSeek's and OpenAI's 400s:
    claude-code-best/claude-code#168, OpenAI's "messages with role 'tool' must be a
    response to a preceeding message with 'tool_calls'")."""
    pending: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.")
            pending.remove(message["tool_call_id"])
            continue
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. (insufficient tool messages following "
                    "tool_calls message)")
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            pending = [c.get("id") for c in message["tool_calls"] if isinstance(c, dict)]
    return None


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def _compact(body: Mapping[str, Any]) -> str:
    import json

    return json.dumps(body.get("messages"), separators=(",", ":"), ensure_ascii=False)


def _openai_param_error(message: str, param: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}


def vendor_error_body(vendor: Vendor, status: int, message: str,
                      code: str | None = None) -> dict[str, Any]:
    """An error body of the vendor's OpenAI endpoint (`code` overrides its error code)."""
    body = _error(vendor, status, message)
    if code is not None:
        error = body.get("error")
        (error if isinstance(error, dict) else body)["code"] = code
    return body


def _error(vendor: Vendor, status: int, message: str) -> dict[str, Any]:
    """An error body in the vendor's shape."""
    if vendor.error_shape == "dashscope":
        # {"error": {"message", "type", "param", "code": "invalid_parameter_error"}, "id",
        # "request_id"} (cloudwego/eino#994 shows the raw body).
        return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                          "code": "invalid_parameter_error"},
                "id": "chatcmpl-fake", "request_id": "fake-request"}
    if vendor.error_shape == "glm":
        # {"error": {"code": "<four digits>", "message": ...}}, the code a string: "1214" for
        # a bad parameter at HTTP 400 ("messages[20].content[0].text:text cannot be empty",
        # agentscope-ai/QwenPaw#287; "The messages parameter is illegal",
        # continuedev/continue#13261), "1302" for the rate limit at HTTP 429 ("您的账户已达到
        # 速率限制，请您控制请求频率", KylinMountain/TradingAgents-AShare#228). An empty account
        # is "1113", also at 429 (zhayujie/CowAgent#2910): the `error_code` knob. Codes of
        # other statuses are not documented where we could read them: "1214" stands in.
        return {"error": {"code": "1302" if status == 429 else "1214", "message": message}}
    if vendor.error_shape == "vllm":
        # vLLM: {"object": "error", "message", "type", "param", "code"} (same HF discussion).
        return {"object": "error", "message": message, "type": "BadRequestError",
                "param": None, "code": status}
    if vendor.error_shape == "openrouter":
        # {"error": {"code": <HTTP status>, "message", "metadata"?}} (openrouter.ai errors).
        return {"error": {"code": status, "message": message}}
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": "invalid_request_error"}}


def openrouter_error_in_200(message: str, code: int = 502) -> dict[str, Any]:
    """OpenRouter, once the model started: "the returned HTTP response status will be 200
    and any error ... will be emitted in the response body or as an SSE data event"
    (https://openrouter.ai/docs/api/errors)."""
    return {"error": {"code": code, "message": message,
                      "metadata": {"provider_name": "FakeProvider"}}}
