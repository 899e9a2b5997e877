"""POST /v1/chat/completions and POST /v1/responses: the OpenAI ingress.

Same keys, plans, limits, routing, failover and usage rows as /v1/messages: each handler
parses and converts its body, then hands over to `relay` (gateway/api/messages.py) with a
`send` that talks to each candidate provider in the best way for its protocol:

    chat      -> openai upstream:    the client's body, model mapped (no Anthropic detour)
    chat      -> anthropic / demo:   chat_to_anthropic ... anthropic_to_chat
    responses -> openai upstream:    responses_to_chat ... chat_to_responses
    responses -> anthropic / demo:   responses_to_chat, chat_to_anthropic ...
                                     anthropic_to_chat, chat_to_responses

Errors on these routes are OpenAI-shaped (middleware, gateway/protocol/openai_errors.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from gateway.accounting.admission import ACCOUNTANT
from gateway.accounting.keycache import KeyInfo
from gateway.api.messages import relay
from gateway.api.openai_replies import (
    ChatSink,
    ChatUpstreamStream,
    FromAnthropicStream,
    ResponsesSink,
    Sink,
    chat_upstream_body,
    from_anthropic_body,
)
from gateway.api.unrelayed import authenticated
from gateway.errors import ApiError
from gateway.ids import REQUEST_ID, new_id
from gateway.protocol.anthropic_to_chat import AnthropicToChat
from gateway.protocol.chat_to_anthropic import (
    DEFAULT_MAX_TOKENS,
    ConversionError,
    chat_to_anthropic,
    validate_chat_request,
)
from gateway.protocol.json_depth import depth_message, too_deep
from gateway.protocol.openai_errors import openai_rate_headers
from gateway.protocol.responses_to_chat import (
    ResponsesContext,
    for_openai_upstream,
    responses_to_chat,
)
from gateway.protocol.token_estimate import estimate_input_tokens
from gateway.protocol.upstream_checks import chat_completion_problem
from gateway.providers.base import Call, Provider, Reply
from gateway.providers.http import malformed_answer, read_body
from gateway.providers.openai import OpenAIProvider

DROPPED_TOOLS_HEADER = "x-llmapi-dropped-tools"
log = logging.getLogger("llmapi.openai")
# The Chat fields that limit the answer's length (max_tokens is the older name).
OUTPUT_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class ParamError(ApiError):
    """A 400 that names the offending request field (OpenAI's `error.param`)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__("invalid_request_error", message)
        self.param = param


@contextlib.contextmanager
def malformed_fields(ingress: str) -> Iterator[None]:
    """The converters check every shape they rely on; a body that still trips one over a
    field of an unexpected type is malformed input, so it is a 400, not a 500. The slip is
    logged (where, not what: no request content) so it can become a precise check."""
    try:
        yield
    except ConversionError:
        raise  # a precise check spoke: its message and param go to the client
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" \
            if tb is not None else "?"
        log.warning("%s request with a field of an unexpected shape (%s at %s)", ingress,
                    type(exc).__name__, where)
        raise ParamError("a field of the request has an unexpected type or shape "
                         f"({type(exc).__name__})", None) from None


def _parse(raw: bytes) -> Any:
    if not raw:
        raise ParamError("request body is empty; send a JSON object", None)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ParamError(f"malformed JSON body: {exc}", None) from None
    if too_deep(raw, body):
        raise ParamError(depth_message(), None)
    return body


class Plan:
    """One OpenAI request, converted as far as each upstream protocol needs it."""

    def __init__(self, chat: dict[str, Any], client_model: str, stream: bool,
                 include_usage: bool, responses: ResponsesContext | None) -> None:
        self.chat = chat  # the Chat body (the client's own, or converted from Responses)
        self.client_model = client_model
        self.stream = stream
        self.include_usage = include_usage
        self.responses = responses
        self.response_id = new_id("resp") if responses is not None else ""
        self.completion_id = "chatcmpl-" + new_id("msg").removeprefix("msg_")
        self.anthropic: dict[str, Any] | None = None
        self.conversion_error: ConversionError | None = None
        # what the quota reservation holds (Admission.max_tokens); None: accounting off
        self.reserved_output: int | None = None
        self.quota_limited = False  # the plan has a monthly token quota
        try:
            self.anthropic = chat_to_anthropic(chat)
        except ConversionError as exc:
            self.conversion_error = exc

    def estimate_body(self) -> dict[str, Any]:
        """An Anthropic-shaped body for the token estimate and smart routing."""
        if self.anthropic is not None:
            return self.anthropic
        text = orjson.dumps(self.chat.get("messages")).decode()
        tools = self.chat.get("tools")
        return {"model": self.client_model, "max_tokens": 1,
                "messages": [{"role": "user", "content": text}],
                "tools": [{"name": "t", "input_schema": t}
                          for t in (tools if isinstance(tools, list) else [])]}

    def sink(self) -> Sink:
        if self.responses is not None:
            return ResponsesSink(self.responses, self.response_id, int(time.time()))
        return ChatSink(self.include_usage)

    def upstream_chat(self, provider: OpenAIProvider, upstream_model: str) -> bytes:
        """The Chat body for an openai-protocol upstream: model mapped, usage asked for,
        gateway-internal fields removed and the output limit lowered to the provider's
        `max_output_tokens` and to what the quota reservation holds (as /v1/messages
        does), so the upstream cannot generate past the plan's tokens."""
        body = for_openai_upstream(self.chat) if self.responses is not None else dict(self.chat)
        body["model"] = upstream_model
        body.pop("n", None)  # only n = 1 gets this far
        if self.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}),
                                      "include_usage": True}
        options = provider.options_for(upstream_model)
        caps = [c for c in (options.max_output_tokens, self.reserved_output) if c]
        if caps:
            cap = min(caps)
            named = [n for n in OUTPUT_LIMIT_FIELDS if _positive_int(body.get(n))]
            for name in named:
                if body[name] > cap:
                    body[name] = cap
            if not named and self.reserved_output and self.quota_limited:
                # no limit asked for: the upstream's default may exceed the reservation,
                # so send it (the field OpenAI's reasoning models require there, else the
                # one every compatible vendor takes; as gateway/protocol/openai_request.py)
                name = "max_completion_tokens" if options.reasoning == "openai" \
                    else "max_tokens"
                body[name] = cap
        return orjson.dumps(body)

    async def send(self, provider: Provider, call: Call) -> Reply:
        """One failover attempt at `provider`, answered in the client's format."""
        responses = (self.responses, self.response_id) if self.responses is not None \
            else None
        if isinstance(provider, OpenAIProvider):
            response = await provider.post_chat(
                call, self.upstream_chat(provider, call.upstream_model))
            if not self.stream:
                raw = await read_body(response, provider.config)
                try:
                    completion = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise malformed_answer(provider.config.name, "the answer is not JSON") \
                        from None
                problem = chat_completion_problem(completion)
                if problem is not None:
                    raise malformed_answer(provider.config.name, problem)
                return chat_upstream_body(completion, raw, responses)
            stream = ChatUpstreamStream(response, provider.config.name, self.sink(),
                                        call.input_estimate)
            await stream.start(provider.config)
            return stream
        if self.conversion_error is not None:
            raise ParamError(self.conversion_error.message, self.conversion_error.param)
        reply = await provider.send(call)
        if not reply.stream:
            return from_anthropic_body(reply, self.completion_id, self.client_model, responses)
        conv = AnthropicToChat(self.completion_id, self.client_model, int(time.time()),
                               include_usage=self.include_usage or responses is not None,
                               keep_signature=responses is not None)
        return FromAnthropicStream(reply, conv, self.sink())


# What a Chat/Responses request without an output limit reserves against a token quota
# (the Anthropic conversion's own default, so both upstream protocols reserve alike).
DEFAULT_RESERVED_OUTPUT = DEFAULT_MAX_TOKENS


def _asked_max_tokens(plan: Plan) -> int:
    """The client's output limit, for the quota reservation (gateway/accounting/counters).
    The smaller of the two Chat fields when both are set: the upstream stops at either."""
    source = plan.anthropic if plan.anthropic is not None else plan.chat
    asked = [source[n] for n in ("max_tokens", "max_completion_tokens")
             if _positive_int(source.get(n))]
    return min(asked) if asked else DEFAULT_RESERVED_OUTPUT


async def _relay(request: web.Request, key: KeyInfo, plan: Plan, ingress: str,
                 started: float, extra_headers: dict[str, str]) -> web.StreamResponse:
    with malformed_fields(ingress):
        body = plan.estimate_body()
        estimate = estimate_input_tokens(body)
    admission = await request.app[ACCOUNTANT].admit(
        key, request_id=request[REQUEST_ID], client_model=plan.client_model,
        stream=plan.stream, input_estimate=estimate,
        max_tokens=_asked_max_tokens(plan), ingress=ingress)
    plan.reserved_output = admission.max_tokens
    plan.quota_limited = bool(request.app[ACCOUNTANT].plan_of(key).monthly_tokens)
    call = Call(body=body, client_model=plan.client_model, upstream_model="",
                stream=plan.stream, request_id=request[REQUEST_ID], message_id=new_id("msg"),
                input_estimate=estimate)
    headers = admission.headers
    return await relay(request, key, call, admission,
                       {**headers, **openai_rate_headers(headers, time.time()), **extra_headers},
                       started, ingress, plan.send)


def header_list(names: list[str]) -> str:
    """Tool types the client sent, as a header value: they are the client's strings, so
    anything but printable ASCII (a line break would be header injection) becomes `?`,
    and the list is capped."""
    clean = {"".join(c if " " <= c <= "~" and c != "," else "?" for c in name[:64])
             for name in names}
    return ",".join(sorted(clean)[:32])


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    key = await authenticated(request)
    body = _parse(await request.read())
    problem = validate_chat_request(body)
    if problem is not None:
        raise ParamError(*problem)
    options = body.get("stream_options") or {}
    with malformed_fields("chat"):
        plan = Plan(body, body["model"], body.get("stream") is True,
                    options.get("include_usage") is True, None)
    return await _relay(request, key, plan, "chat", started, {})


async def handle_responses(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    key = await authenticated(request)
    body = _parse(await request.read())
    try:
        with malformed_fields("responses"):
            chat, ctx = responses_to_chat(body)
            plan = Plan(chat, ctx.model, ctx.stream, True, ctx)
    except ConversionError as exc:
        raise ParamError(exc.message, exc.param) from None
    extra = {DROPPED_TOOLS_HEADER: header_list(ctx.dropped_tools)} if ctx.dropped_tools \
        else {}
    return await _relay(request, key, plan, "responses", started, extra)
