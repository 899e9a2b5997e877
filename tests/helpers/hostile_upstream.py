"""A broken upstream on loopback: HTTP 200 answers no real vendor should send.

It serves both upstream protocols (`POST /v1/messages` for `protocol = "anthropic"`,
`POST /v1/chat/completions` for `protocol = "openai"`). The request picks the breakage
with the word `hostile:MODE` anywhere in its body (the gateway passes the user's text on),
so one server covers every case. Modes:

non-stream   usage-list, usage-string, usage-number, usage-values (counts of the wrong
             type inside an object), json-list, json-string, json-number, json-null,
             not-json, content-string (Anthropic content / OpenAI choices not a list),
             huge (an 80 MiB body), ok (a well-formed answer with usage)
stream       no-separator (32 MiB of `data:` that never ends an event), late-no-separator
             (a proper start, then the same), usage-list (usage of the wrong type in the
             events), ok
GET /v1/models (the health probe) answers a list that never ends.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

MIB = 1 << 20
NO_SEPARATOR_BYTES = 32 * MIB
HUGE_BODY_BYTES = 80 * MIB
_MODE = re.compile(rb"hostile:([a-z-]+)")


def _anthropic_message(usage: Any) -> dict[str, Any]:
    return {"id": "msg_hostile", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": usage}


def _chat_completion(usage: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hello"}}],
            "usage": usage}


def _body(mode: str, anthropic: bool) -> bytes:
    good = ({"input_tokens": 5, "output_tokens": 2} if anthropic
            else {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    wrap = _anthropic_message if anthropic else _chat_completion
    shapes: dict[str, Any] = {
        "usage-list": wrap([1, 2, 3]), "usage-string": wrap("lots"), "usage-number": wrap(7),
        "usage-values": wrap({"input_tokens": "12", "output_tokens": [1],
                              "cache_read_input_tokens": -5, "prompt_tokens": "12",
                              "completion_tokens": {"n": 1}}),
        "json-list": [1, 2], "json-string": "hello", "json-number": 42, "json-null": None,
        "ok": wrap(good),
    }
    if mode == "content-string":
        broken = wrap(good)
        if anthropic:
            broken["content"] = "hello"
        else:
            broken["choices"] = "hello"
        return orjson.dumps(broken)
    if mode == "not-json":
        return b"<html><body>502 Bad Gateway</body></html>"
    return orjson.dumps(shapes[mode])


def _events(anthropic: bool, usage: Any) -> list[bytes]:
    if not anthropic:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}
        end = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": usage}
        return [b"data: " + orjson.dumps(chunk) + b"\n\n",
                b"data: " + orjson.dumps(end) + b"\n\n", b"data: [DONE]\n\n"]

    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    message = {**_anthropic_message(usage), "content": [], "stop_reason": None}
    return [event("message_start", {"type": "message_start", "message": message}),
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}),
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": "hi"}}),
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event("message_delta", {"type": "message_delta", "usage": usage,
                                    "delta": {"stop_reason": "end_turn"}}),
            event("message_stop", {"type": "message_stop"})]


async def _stream(request: web.Request, mode: str, anthropic: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if mode in ("no-separator", "late-no-separator"):
        if mode == "late-no-separator":
            start = _events(anthropic, {"input_tokens": 1})[:3 if anthropic else 1]
            await response.write(b"".join(start))
        piece = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"  # lines, never a blank one
        sent = 0
        try:
            while sent < NO_SEPARATOR_BYTES:
                await response.write(piece)
                sent += len(piece)
        except ConnectionError:
            return response  # the gateway gave up on us, as it should
        await response.write_eof()
        return response
    usage: Any = [1, 2] if mode == "usage-list" else (
        {"input_tokens": 5, "output_tokens": 2} if anthropic
        else {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    for part in _events(anthropic, usage):
        await response.write(part)
    await response.write_eof()
    return response


async def _huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = HUGE_BODY_BYTES
    await response.prepare(request)
    piece = b" " * MIB
    try:
        for _ in range(HUGE_BODY_BYTES // MIB):
            await response.write(piece)
    except ConnectionError:
        pass
    return response


async def _answer(request: web.Request, anthropic: bool) -> web.StreamResponse:
    raw = await request.read()
    found = _MODE.search(raw)
    mode = found.group(1).decode() if found else "ok"
    request.app[HITS].append(mode)
    if orjson.loads(raw).get("stream") is True:
        return await _stream(request, mode, anthropic)
    if mode == "huge":
        return await _huge(request)
    content_type = "text/html" if mode == "not-json" else "application/json"
    return web.Response(body=_body(mode, anthropic), content_type=content_type)


async def _models(request: web.Request) -> web.StreamResponse:
    """The health probe's URL: a model list that never ends (200 MiB of it)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"object":"list","data":[')
    piece = b'{"id":"m","object":"model"},' * 2048
    try:
        for _ in range(200 * MIB // len(piece)):
            await response.write(piece)
    except ConnectionError:
        pass
    return response


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _answer(request, anthropic=True)


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _answer(request, anthropic=False)


HITS: web.AppKey[list[str]] = web.AppKey("hits", list)
"""The mode of every request received, in order."""


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * MIB)
    app[HITS] = []
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app
