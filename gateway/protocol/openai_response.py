"""Turn a non-stream OpenAI Chat Completions response (or error) into its Anthropic form.

Rules: docs/protocol.md §7 and §9, and the non-stream point of tests/fixtures/README.md. Never
raises on a malformed upstream body: missing pieces become empty content or estimated usage.

Stop sequences. OpenAI-compatible upstreams strip the matched stop string and report only
`finish_reason: "stop"`, which looks exactly like a natural end of turn. So the rule is:
`stop_reason` is "stop_sequence" only when the upstream *shows* which one matched, either
  1. explicitly: vLLM's `choices[0].stop_reason` or SGLang's `choices[0].matched_stop` names
     one of the requested `stop_sequences`, or
  2. by keeping it: the text ends with one of them (upstreams that return the stop string);
     it is then cut off, because Anthropic's text never contains the stop sequence.
Otherwise "end_turn", even if a stop sequence may have matched.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.metrics import INCOMPLETE_FINISH
from gateway.protocol.tool_ids import client_tool_id, id_salt
from gateway.protocol.usage import Usage

log = logging.getLogger(__name__)

__all__ = [
    "FinishFailure",
    "anthropic_error_from_openai",
    "error_from_payload",
    "finish_outcome",
    "parse_tool_arguments",
    "to_anthropic_message",
    "usage_from_openai",
]

# finish_reason -> stop_reason for every reason that means the answer ended as it should.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "eos": "end_turn",            # some llama.cpp / TGI builds
    "end_turn": "end_turn",
    "length": "max_tokens",
    "max_tokens": "max_tokens",
    "model_length": "max_tokens",  # GLM: the context window ran out
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "tool_use": "tool_use",
    "content_filter": "refusal",
    "sensitive": "refusal",        # GLM's content filter
}
# Reasons that say the answer is cut off: never shown as a complete answer.
# DeepSeek: "insufficient_system_resource: the request is interrupted due to insufficient
# resource of the inference system" (api-docs.deepseek.com, create chat completion).
# GLM: "network_error"; vLLM: "abort"; OpenRouter: "error" (with an error event).
FAILED_FINISH: dict[str, tuple[str, str]] = {
    "insufficient_system_resource": ("overloaded_error", "the upstream ran out of capacity "
                                     "mid-answer (finish_reason insufficient_system_resource)"),
    "network_error": ("api_error", "the upstream lost its connection mid-answer "
                                   "(finish_reason network_error)"),
    "abort": ("api_error", "the upstream aborted the answer (finish_reason abort)"),
    "error": ("api_error", "the upstream failed mid-answer (finish_reason error)"),
}


class FinishFailure(Exception):
    """A non-stream answer whose finish_reason says it is incomplete."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def finish_outcome(finish_reason: str) -> str | tuple[str, str]:
    """The Anthropic stop_reason for an upstream finish_reason, or (error_type, message)
    when the answer must not be presented as complete. An unknown reason counts as
    incomplete: the gateway cannot tell the client that the answer ended well."""
    stop = STOP_REASONS.get(finish_reason)
    if stop is not None:
        return stop
    # the label is one of the known reasons or "other": an upstream's string is unbounded
    INCOMPLETE_FINISH.inc((finish_reason if finish_reason in FAILED_FINISH else "other",))
    failed = FAILED_FINISH.get(finish_reason)
    if failed is not None:
        return failed
    log.warning("unknown upstream finish_reason %r", finish_reason)
    return ("api_error", f"the upstream ended with an unknown finish_reason "
                         f"{finish_reason[:40]!r}; the answer may be incomplete")

_ERROR_MESSAGE_LIMIT = 500
CREDENTIALS_REFUSED = "the gateway's credentials for this provider were refused by the upstream"


def to_anthropic_message(
    body: dict[str, Any],
    model: str,
    message_id: str,
    stop_sequences: list[str] | None = None,
) -> tuple[dict[str, Any], Usage]:
    """The Anthropic `message` for a `chat.completion` body, and its usage.

    `model` is echoed as the message's model (the name the client asked for); `message_id`
    is the gateway's `msg_...` id.
    """
    choices = body.get("choices")
    choice: dict[str, Any] = {}
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    finish_reason = choice.get("finish_reason")

    content: list[dict[str, Any]] = []
    # Thinking first (docs/protocol.md §5). `reasoning` is the field name of vLLM and OpenRouter.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})

    text = _message_text(message.get("content"))
    stop_sequence = None
    if finish_reason == "stop" and stop_sequences:
        stop_sequence = _matched_stop(choice, text, stop_sequences)
        if stop_sequence is not None and text.endswith(stop_sequence):
            text = text[: len(text) - len(stop_sequence)]
    if text:
        content.append({"type": "text", "text": text})

    tool_blocks = _tool_use_blocks(message, message_id)
    content.extend(tool_blocks)

    outcome = finish_outcome(finish_reason) if isinstance(finish_reason, str) and \
        finish_reason else "end_turn"
    if isinstance(outcome, tuple):
        raise FinishFailure(*outcome)
    if outcome == "max_tokens":
        stop_reason = "max_tokens"
    elif outcome == "refusal":
        stop_reason = "refusal"
    elif tool_blocks:
        # Some upstreams finish tool calls with "stop"; Claude Code only runs tools on tool_use.
        stop_reason = "tool_use"
    elif stop_sequence is not None:
        stop_reason = "stop_sequence"
    else:
        # "stop", a "tool_calls" finish without any call, or a missing/unknown reason.
        stop_reason = "end_turn"

    usage = usage_from_openai(body.get("usage") or choice.get("usage"))
    if usage is not None and usage.estimated:
        usage.output_tokens = _estimate_output_tokens(content)
    if usage is None:
        usage = Usage(output_tokens=_estimate_output_tokens(content), estimated=True)

    result = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
        },
    }
    return result, usage


def usage_from_openai(raw: Any) -> Usage | None:
    """Anthropic-style usage from an OpenAI `usage` object; None if there is none.

    The one conversion used for streams and non-stream bodies alike. Cached prompt tokens
    come from `prompt_tokens_details.cached_tokens`, else DeepSeek's
    `prompt_cache_hit_tokens`, else Moonshot/Kimi's top-level `cached_tokens`; they are
    taken out of `input_tokens` because Anthropic's input excludes cache reads (and the
    cache writes DashScope's explicit cache reports). `estimated` is set when the upstream
    gave no `completion_tokens` (the caller fills in its own estimate).
    """
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    details = raw.get("prompt_tokens_details")
    cached = 0
    created = 0
    if isinstance(details, dict):
        cached = _int(details.get("cached_tokens"))
        created = _int(details.get("cache_creation_input_tokens"))
    if not cached:
        cached = _int(raw.get("prompt_cache_hit_tokens"))
    if not cached:
        cached = _int(raw.get("cached_tokens"))
    cached = min(cached, prompt)
    created = min(created, prompt - cached)
    thinking = 0
    completion_details = raw.get("completion_tokens_details")
    if isinstance(completion_details, dict):
        thinking = _int(completion_details.get("reasoning_tokens"))
    return Usage(
        input_tokens=prompt - cached - created,
        output_tokens=completion,
        cache_read_input_tokens=cached,
        cache_creation_input_tokens=created,
        thinking_tokens=thinking,
        estimated=not isinstance(raw.get("completion_tokens"), int),
    )


def _int(value: Any) -> int:
    """A token count, or 0 for anything that is not a non-negative integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # A few upstreams answer with content parts, like requests are written.
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _matched_stop(choice: dict[str, Any], text: str, stop_sequences: list[str]) -> str | None:
    for key in ("stop_reason", "matched_stop"):
        named = choice.get(key)
        if isinstance(named, str) and named in stop_sequences:
            return named
    # Longest first, so that with "END" and "THE END" requested, "THE END" wins.
    for sequence in sorted(stop_sequences, key=len, reverse=True):
        if sequence and text.endswith(sequence):
            return sequence
    return None


def _tool_use_blocks(message: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        calls = []
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict):
        calls = [{"function": legacy}]
    blocks: list[dict[str, Any]] = []
    salt = id_salt(message_id)
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            continue  # nothing to run, not even a name
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            # The id is only for pairing with its tool_result; it just has to be unique.
            call_id = f"call_{message_id.removeprefix('msg_')}_{i}"
        name = function.get("name")
        blocks.append(
            {
                "type": "tool_use",
                # Never the upstream's id itself: Kimi's `functions.Read:0` repeats across
                # turns (gateway/protocol/tool_ids.py).
                "id": client_tool_id(call_id, salt),
                "name": name if isinstance(name, str) else "",
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
    return blocks


def parse_tool_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's `arguments` as the object Anthropic's `input` must be.

    "" (or nothing) is {} (docs/protocol.md §7). Text that is not a JSON object, such as
    arguments cut off by `length`, is kept whole under "_raw_arguments" so nothing is lost
    and nothing raises.
    """
    if isinstance(arguments, dict):
        return arguments  # some upstreams send the object itself
    if arguments is None:
        return {}
    if not isinstance(arguments, str):
        return {"_raw_arguments": orjson.dumps(arguments).decode()}
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    if isinstance(parsed, dict):
        return parsed
    return {"_raw_arguments": arguments}


def _estimate_output_tokens(content: list[dict[str, Any]]) -> int:
    """Same rule as the stream converter: max(1, ceil(characters / 4)) of what was produced."""
    chars = 0
    for block in content:
        kind = block["type"]
        if kind == "text":
            chars += len(block["text"])
        elif kind == "thinking":
            chars += len(block["thinking"])
        elif kind == "tool_use":
            chars += len(orjson.dumps(block["input"]))
    return max(1, -(-chars // 4))


def anthropic_error_from_openai(status: int, body: bytes) -> tuple[int, str, str]:
    """(status for the client, Anthropic error type, message) for an upstream error reply.

    The upstream's own wording is always passed on (except for refused credentials, whose
    bodies can echo part of the key). Claude Code retries 429, 529 and 5xx, so 529 is said
    only for a real overload or outage (500/502/503/504/529). Problems with the gateway's
    own upstream account (a refused key, 402 no balance) are 502 api_error, which the
    relay marks as not worth a client retry.
    """
    detail = _upstream_message(body)
    if upstream_account_exhausted(status, body):
        return 502, "api_error", "the gateway's account at the upstream cannot pay for this " \
            f"request (HTTP {status}){': ' + detail if detail else ''}"
    if status in (400, 404, 409, 422):
        return 400, "invalid_request_error", \
            detail or f"the upstream rejected the request (HTTP {status})"
    if status in (401, 403):
        return 502, "api_error", CREDENTIALS_REFUSED
    if status == 413:
        return 413, "request_too_large", \
            detail or "the request is too large for the upstream model"
    if status == 429:
        return 429, "rate_limit_error", \
            detail or "the upstream provider is rate limiting requests"
    if status in (500, 502, 503, 504, 529):
        return 529, "overloaded_error", \
            f"the upstream provider is unavailable (HTTP {status}){': ' + detail if detail else ''}"
    return 502, "api_error", \
        f"unexpected upstream response (HTTP {status}){': ' + detail if detail else ''}"


# Zhipu GLM puts its own four-digit business code in `error.code` (a string), whatever the
# HTTP status: 1210/1214 bad parameters at 400 ("messages[20].content[0].text:text cannot
# be empty", agentscope-ai/QwenPaw#287; continuedev/continue#13261), 1302 rate limit at 429
# ("您的账户已达到速率限制", KylinMountain/TradingAgents-AShare#228), and 1113 "余额不足或无可用
# 资源包,请充值。" / "Insufficient balance or no resource package" also at HTTP 429
# (zhayujie/CowAgent#2910, zai-org/GLM-5#148): an empty account, which no retry fixes.
GLM_CODE_STATUS = {"1210": 400, "1211": 400, "1214": 400, "1302": 429, "1113": 402}


def _error_code(body: bytes) -> Any:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def upstream_account_exhausted(status: int, body: bytes) -> bool:
    """The gateway's own account at the upstream cannot pay: HTTP 402, or GLM's code 1113
    (sent with HTTP 429, which would otherwise look like a rate limit worth retrying)."""
    if status == 402:
        return True
    return b"1113" in body and _error_code(body) == "1113"


def error_from_payload(payload: Any) -> tuple[int, str, str, bool]:
    """(client status, error type, message, retryable) for an error sent inside an HTTP 200
    body or stream event (OpenRouter: "any error occurred while the LLM is producing the
    output will be emitted in the response body or as an SSE data event",
    https://openrouter.ai/docs/api/errors; its `error.code` is an HTTP status)."""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    code: Any = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else None
    if status is None and isinstance(code, str):
        # an HTTP status as a string, or GLM's business code; other codes say nothing
        status = GLM_CODE_STATUS.get(code) or (
            int(code) if code.isdigit() and 400 <= int(code) <= 599 else None)
    if status is None:
        text = str(error).lower()
        overloaded = any(h in text for h in ("overload", "capacity", "busy", "try again"))
        status = 429 if "rate limit" in text or "rate_limit" in text else \
            503 if overloaded else 500
    client_status, error_type, message = anthropic_error_from_openai(
        status, orjson.dumps({"error": error}))
    return client_status, error_type, message, status in (429, 500, 502, 503, 504, 529)


def _upstream_message(body: bytes) -> str:
    """`error.message` (or `message`) of a JSON error body, or a plain-text body, at most
    500 characters; "" if there is nothing readable."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Some servers answer a rejected body in plain text (axum's "Failed to deserialize
        # the JSON body into the target type: ...").
        text = body.decode("utf-8", "replace").strip()
        if text and not text.startswith("<"):
            return text[: _ERROR_MESSAGE_LIMIT - 3] + "..." \
                if len(text) > _ERROR_MESSAGE_LIMIT else text
        return ""
    if not isinstance(parsed, dict):
        return ""
    error = parsed.get("error")
    message: Any = None
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    if not isinstance(message, str) or not message:
        message = parsed.get("message")
    if not isinstance(message, str):
        return ""
    text = message.strip()
    if len(text) > _ERROR_MESSAGE_LIMIT:
        text = text[: _ERROR_MESSAGE_LIMIT - 3] + "..."
    return text
