"""A seeded generator of hostile request bodies for the three client protocols.

Every body starts from a realistic request (tools, tool calls and results, images,
documents, thinking, system blocks, metadata, streaming) and is then mutated: values
swapped for values of another type (huge and negative integers, floats, deep nesting,
odd Unicode), keys dropped or added, lists emptied or flooded; a share is further broken
at the byte level (truncated, bytes flipped, invalid UTF-8, not JSON at all). The same
seed gives the same bodies, so a failure is reproduced by its seed and index.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import orjson

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5"
       "ErkJggg==")
MODELS = ["claude-sonnet-4-6", "claude-opus-4-5[1m]", "claude-haiku-4-5", "gpt-4o",
          "gpt-5-codex", "o3", "deepseek-chat", "", "x" * 300, "模型", "claude-3\x00"]
STRINGS = ["", " ", "hi", "\u0000", "\ud7ff\ue000", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\n" * 50, "a" * 5000,
           "[[fake:tools]]", '[[fake:{"chunks":3}]]', "<script>", "null", "{}", "%s%n",
           "\u202e", "汉字" * 100, "\t\r\n", "remote control", "..." * 30]
INTS = [0, 1, -1, 2, 7, 64, 4096, 65536, 2**31, 2**31 - 1, 2**53, 2**63 - 1, 2**64 - 1,
        -(2**63), 10**20]
FLOATS = [0.0, -0.0, 0.5, 1.5, -3.25, 1e300, -1e-300, 2.0]


def _tool_schema(rng: random.Random) -> dict[str, Any]:
    return {"type": "object", "properties": {
        "path": {"type": "string", "description": "file"},
        "n": {"type": "integer", "minimum": 0},
        "opts": {"type": "object", "properties": {"deep": {"type": "array",
                                                             "items": {"type": "string"}}}}},
        "required": ["path"][: rng.randint(0, 1)]}


def anthropic_body(rng: random.Random) -> dict[str, Any]:
    tool_id = f"toolu_{rng.randint(0, 10**6)}"
    messages: list[dict[str, Any]] = [{"role": "user", "content": rng.choice(STRINGS[:12])}]
    if rng.random() < 0.5:
        messages += [
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": tool_id, "name": "Read",
                 "input": {"path": "/tmp/x", "n": 3}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": [
                    {"type": "text", "text": "file body"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": PNG}}]},
                {"type": "text", "text": "and now?", "cache_control": {"type": "ephemeral"}}]}]
    if rng.random() < 0.2:
        messages.append({"role": "assistant", "content": "partial"})
    if rng.random() < 0.15:
        messages[0]["content"] = [{"type": "document", "source": {
            "type": "text", "media_type": "text/plain", "data": "doc"}}]
    body: dict[str, Any] = {"model": rng.choice(MODELS[:7]), "max_tokens": rng.choice(
        [1, 16, 256, 4096, 64000]), "messages": messages}
    if rng.random() < 0.5:
        body["system"] = rng.choice(["You are terse.", [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {
                "type": "ephemeral"}}]])
    if rng.random() < 0.5:
        body["tools"] = [{"name": "Read", "description": "read a file",
                          "input_schema": _tool_schema(rng)},
                         {"type": "web_search_20250305", "name": "web_search"}]
        body["tool_choice"] = rng.choice([{"type": "auto"}, {"type": "any"},
                                          {"type": "tool", "name": "Read"}, {"type": "none"}])
    if rng.random() < 0.3:
        body["thinking"] = rng.choice([{"type": "enabled", "budget_tokens": 1024},
                                       {"type": "disabled"}, {"type": "adaptive"}])
    for name, values in (("stream", [True, False]), ("temperature", [0, 0.7, 1]),
                         ("top_p", [0.9]), ("top_k", [40]), ("stop_sequences", [["END"]]),
                         ("metadata", [{"user_id": "u1"}])):
        if rng.random() < 0.3:
            body[name] = rng.choice(values)
    return body


def chat_body(rng: random.Random) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": rng.choice(STRINGS[:12])}]
    if rng.random() < 0.5:
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "Read", "arguments": '{"path": "/tmp/x"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "file body"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}]}]
    body: dict[str, Any] = {"model": rng.choice(MODELS[:7]), "messages": messages}
    if rng.random() < 0.5:
        body["tools"] = [{"type": "function", "function": {
            "name": "Read", "description": "read", "parameters": _tool_schema(rng)}}]
        body["tool_choice"] = rng.choice(["auto", "none", "required", {
            "type": "function", "function": {"name": "Read"}}])
    for name, values in (("stream", [True, False]), ("max_tokens", [16, 1000]),
                         ("max_completion_tokens", [64]), ("temperature", [0.2]),
                         ("stream_options", [{"include_usage": True}]), ("n", [1]),
                         ("reasoning_effort", ["low", "high"]), ("stop", ["END", ["a"]]),
                         ("response_format", [{"type": "json_object"}]),
                         ("parallel_tool_calls", [False]), ("user", ["u"]),
                         ("metadata", [{"k": "v"}])):
        if rng.random() < 0.25:
            body[name] = rng.choice(values)
    return body


def responses_body(rng: random.Random) -> dict[str, Any]:
    items: Any = rng.choice(STRINGS[:12])
    if rng.random() < 0.6:
        items = [
            {"type": "message", "role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "data:image/png;base64," + PNG}]},
            {"type": "reasoning", "id": "rs_1", "summary": [
                {"type": "summary_text", "text": "thought"}], "encrypted_content": "x"},
            {"type": "function_call", "call_id": "call_1", "name": "shell",
             "arguments": '{"cmd": "ls"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "a b"},
        ][: rng.randint(1, 5)]
    body: dict[str, Any] = {"model": rng.choice(MODELS[:7]), "input": items}
    if rng.random() < 0.5:
        body["tools"] = [{"type": "function", "name": "shell", "description": "run",
                          "parameters": _tool_schema(rng)},
                         {"type": "web_search"}, {"type": "local_shell"}]
    for name, values in (("stream", [True, False]), ("instructions", ["be kind"]),
                         ("max_output_tokens", [32, 2048]), ("store", [False]),
                         ("reasoning", [{"effort": "low", "summary": "auto"}]),
                         ("include", [["reasoning.encrypted_content"]]),
                         ("text", [{"format": {"type": "text"}}]),
                         ("tool_choice", ["auto", "required"]), ("truncation", ["auto"]),
                         ("parallel_tool_calls", [True])):
        if rng.random() < 0.25:
            body[name] = rng.choice(values)
    return body


BUILDERS = {"/v1/messages": anthropic_body, "/v1/chat/completions": chat_body,
            "/v1/responses": responses_body}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.12:
        return None
    if roll < 0.2:
        return rng.random() < 0.5
    if roll < 0.35:
        return rng.choice(INTS)
    if roll < 0.42:
        return rng.choice(FLOATS)
    if roll < 0.65:
        return rng.choice(STRINGS)
    if depth > 3 or roll < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["type", "text", "role", "content", "x", "", "id", "name"]):
            random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, Any]]:
    """(container, key) for every slot in the JSON value."""
    if isinstance(value, dict):
        for key in list(value):
            yield value, key
            yield from _nodes(value[key], (*path, key))
    elif isinstance(value, list):
        for i in range(len(value)):
            yield value, i
            yield from _nodes(value[i], (*path, i))


def mutate(rng: random.Random, body: dict[str, Any]) -> Any:
    body = copy.deepcopy(body)
    for _ in range(rng.choice([0, 1, 1, 2, 3, 5])):
        slots = list(_nodes(body))
        if not slots or rng.random() < 0.1:
            body[rng.choice(["model", "messages", "input", "tools", "stream", "max_tokens",
                             "system", "zzz", "metadata"])] = random_value(rng)
            continue
        container, key = rng.choice(slots)
        action = rng.random()
        if action < 0.45:
            container[key] = random_value(rng)
        elif action < 0.6 and isinstance(container, dict):
            del container[key]
        elif action < 0.7 and isinstance(container[key], list):
            container[key] = container[key] * rng.randint(0, 40)
        elif action < 0.8:
            container[key] = copy.deepcopy(rng.choice(slots)[0])
        elif action < 0.9 and isinstance(container, dict):
            container[rng.choice(["type", "extra", "cache_control", "id", "\u0000"])] = \
                random_value(rng)
        else:
            value: Any = "deep"
            for _ in range(rng.choice([10, 100, 130, 300])):
                value = [value] if rng.random() < 0.5 else {"a": value}
            container[key] = value
    if rng.random() < 0.03:
        return random_value(rng)  # not even an object
    return body


def encode(rng: random.Random, value: Any) -> bytes:
    """JSON bytes, sometimes broken on the way."""
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError:  # too deep for orjson (254 levels): the slower encoder
        try:
            raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except RecursionError:  # deeper than Python goes: deeper than orjson reads, too
            raw = b'{"model":"m","x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    roll = rng.random()
    if roll < 0.04 and raw:
        return raw[: rng.randint(0, len(raw) - 1)]
    if roll < 0.07 and raw:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if roll < 0.09:
        return raw.replace(b'"hi"', b'"\xff\xfe"', 1)
    if roll < 0.1:
        return rng.choice([b"", b"null", b"[]", b"{", b"\xef\xbb\xbf{}", b" " * 100,
                           bytes(rng.randrange(256) for _ in range(64))])
    return raw


def bodies(path: str, seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(f"{path}:{seed}")
    build = BUILDERS[path]
    for _ in range(count):
        yield encode(rng, mutate(rng, build(rng)))
