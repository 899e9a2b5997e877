"""Scripted fake LLM provider: a real OpenAI- and Anthropic-compatible HTTP server for tests.

Tests, load tests (Locust, the added-latency benchmark) and demos point a provider at it
instead of a real vendor. It answers from precomputed bytes, so it costs next to nothing per
request and the gateway's own overhead is what a benchmark measures.

Run it: ``python -m gateway fake-upstream [--port 8090]`` (see `add_arguments`), or in-process:
``async with start_server(FakeSettings(port=0)) as base_url: ...``, or serve `build_app(...)`
with aiohttp's test utilities (the live state, counters included, is ``app[FAKE_UPSTREAM]``).

Endpoints
---------
- ``POST /v1/chat/completions`` and ``POST /chat/completions``: OpenAI-compatible, stream and
  non-stream. Provider config: ``protocol = "openai"``, ``base_url = "http://127.0.0.1:P/v1"``.
- ``POST /v1/messages``: Anthropic-compatible, stream (full event grammar: message_start, ping,
  content_block_start/delta/stop per block, message_delta with usage, message_stop) and
  non-stream. Provider config: ``protocol = "anthropic"``, ``base_url = "http://127.0.0.1:P"``.
- ``POST /v1/messages/count_tokens`` -> ``{"input_tokens": N}``; ``GET /v1/models`` (and
  ``/models``): a list that has both the OpenAI and the Anthropic fields.
- ``GET /_fake/stats``, ``POST /_fake/reset``, ``GET /_fake/health`` (see "Stats").

With ``api_key`` set (``--api-key``) every API request needs ``x-api-key: KEY`` or
``Authorization: Bearer KEY``; otherwise 401 with an error body in the endpoint's shape.

Choosing behaviour per request
------------------------------
A request's *script* is the server defaults (`FakeSettings`) with overrides from the first of:

1. header ``x-fake-scenario``: a JSON object of knobs, or a bare scenario name (``tools``);
2. a directive in the text of the most recent user message that has one (string content or
   ``text`` blocks/parts): ``[[fake:{"scenario":"tools","chunks":5}]]`` or ``[[fake:tools]]``.
   Older user messages count too, so a directive in a Claude Code prompt still applies on the
   turn that carries the tool result;
3. nothing: the defaults.

Header and directive are not merged: a header wins outright. Unknown knobs, unknown scenarios
and wrong types are answered with 400 (``invalid_request_error``), so typos do not pass quietly.

Knobs (per request, and as server defaults)
-------------------------------------------
``scenario``          one of the scenarios below (default ``text``).
``chunks``            number of content pieces (default 5, at most 100000); see each scenario.
``chunk_delay``       seconds before each content piece of a stream (default 0). A non-stream
                      answer waits ``chunk_delay`` x pieces before its headers instead.
``first_byte_delay``  seconds before the response headers (default 0).
``text``              the answer text to stream; ``""`` gives an answer with no content.
``status``            answer with this HTTP error status (400-599) and a realistic error body
                      for the protocol (Anthropic: ``overloaded_error`` for 529, ...).
``retry_after``       ``Retry-After`` header value on such an error.
``error_code``        vendor profiles, OpenAI endpoint: the ``error.code`` of such an error
                      instead of the vendor's usual one (GLM: ``"1113"``, an empty account,
                      sent with HTTP 429). With a vendor, scripted errors on the OpenAI
                      endpoint have the vendor's error body shape.
``fail_times``        with N > 0, the failure knobs (``status``, ``hang``, ``stall_after``,
                      ``break_after``, scenario ``error_midstream``) apply to the first N
                      requests with the same ``key`` only; later ones behave normally
                      (``error_midstream`` becomes ``text``). Counters reset on /_fake/reset.
``key``               counter name for ``fail_times`` (default ``""``): use a unique key per test.
``hang``              true: wait ``forever`` seconds (default 3600) before the headers.
``stall_after``       stream: send N content pieces, then go silent for ``stall_for`` seconds
                      (default ``forever``), then finish normally.
``stall_for``         seconds a stall lasts (default: the server's ``forever``).
``break_after``       stream: send N content pieces, then close the TCP connection without
                      finish chunk, ``[DONE]`` or the chunked-encoding terminator.
                      Non-stream: close the connection without any answer. Beats
                      ``stall_after`` when both are set.
``usage``             OpenAI only: ``final`` (default; a usage-only chunk with ``choices: []``
                      when the request has ``stream_options.include_usage``), ``finish`` (usage
                      inside the finish chunk, always) or ``none`` (no usage anywhere, also
                      not in non-stream bodies). The Anthropic endpoint always reports usage.
``cached_tokens``     report this many cached prompt tokens instead of the cache simulation.
``prompt_tokens``     report this many prompt tokens instead of body bytes // 4 (so a test
                      can compare the gateway's figures with known upstream ones).
``cache_creation_tokens``  report this many prompt tokens as written to the cache: on the
                      Anthropic endpoint as ``cache_creation_input_tokens``, on the OpenAI one
                      only for vendors that report cache writes (DashScope's explicit cache:
                      ``prompt_tokens_details.cache_creation_input_tokens``). Default 0.
``finish``            override the finish reason: ``stop``, ``length``, ``tool_calls``,
                      ``content_filter`` (Anthropic names ``end_turn``, ``max_tokens``,
                      ``tool_use``, ``refusal`` are accepted too and mapped).

``queue_for``         vendor profiles: seconds the request waits in the vendor's queue, the
                      response open and sending keep-alives (the profile's SSE comment for
                      a stream, blank lines for a non-stream body), then the answer.
``error_in_200``      vendor profiles: HTTP 200 whose body (or first stream event, with
                      ``finish_reason: "error"``) is an OpenRouter-style error.

Vendor profiles (``--vendor NAME``, ``FakeSettings(vendor=NAME)``): the fake refuses what
that vendor refuses, with its error wording, and answers in its dialect (reasoning field,
usage placement, cache fields, tool ids); see gateway/testing/vendors.py and docs/vendors.md.
A request the vendor would think on gets reasoning pieces before its answer.

Order of effects: ``first_byte_delay``, ``hang``, ``status``, then the answer.

Scenarios
---------
``text``            the text (default: a sentence saying it is the fake upstream) in exactly
                    ``chunks`` pieces (a text shorter than ``chunks`` characters is repeated,
                    joined by spaces, until it is long enough); finish ``stop``.
``length``          as ``text``, finish ``length`` (Anthropic ``max_tokens``).
``tools``           two parallel tool calls, ``Read`` and ``Grep``; each call's JSON arguments
                    are cut into min(``chunks``, len) fragments and the fragments of the two
                    calls alternate (0,1,0,1, as in the ``parallel_tools_interleaved`` fixture);
                    the first fragment of each call carries id and name with ``arguments: ""``.
                    An explicit ``text`` is sent first as ``chunks`` text pieces. Finish
                    ``tool_calls``. On the Anthropic endpoint: one ``tool_use`` block per call.
``reasoning``       ``chunks`` pieces of ``reasoning_content`` (DeepSeek style), then the text
                    in ``chunks`` pieces. Anthropic: a thinking block (with a fake signature)
                    then a text block.
``echo``            the text is a JSON summary of the request: ``protocol``, ``model``,
                    ``stream``, ``messages`` (count), ``roles``, ``system`` (bool), ``tools``
                    (count), ``tool_names``, ``max_tokens``, ``keys`` (sorted body keys).
``image_check``     the text is ``image parts received: N`` (Anthropic ``image`` blocks, also
                    inside tool results, plus OpenAI ``image_url`` parts).
``write_file``      for the Claude Code end-to-end test. While the conversation has no tool
                    result: ONE call to the ``Write`` tool with ``{"file_path": P, "content":
                    "hello from fake upstream\\n"}``, P being the first absolute path in the
                    last user message's text (its last text block first; directives and
                    ``<system-reminder>`` sections are skipped), finish
                    ``tool_calls``. Once a tool result is present: the text ``Done.``, finish
                    ``stop``.
``run_command``     for the Codex CLI end-to-end test: as ``write_file``, but the one call is
                    to Codex's ``exec_command`` tool with ``{"cmd": "printf '...' > P"}``
                    (the command writes the same content to P).
``apply_patch``     for Codex's free-form (``custom``) tool: as ``write_file``, but the one
                    call is to ``apply_patch`` with ``{"input": PATCH}``, PATCH an
                    ``*** Add File: P`` patch in Codex's format whose one line is the same
                    content (the gateway turns the call into a ``custom_tool_call``).
``agent_steps``     Claude Code's multi-step task: while the history holds no tool-calling
                    turn, ONE ``Read`` of the first absolute path in the earliest user text;
                    after one such turn, a ``Write`` of ``PATH.out`` (content as in
                    ``write_file``) and a ``Bash`` (``echo agent-steps-bash``) in parallel;
                    after two, the text ``Done.``.
``error_midstream`` the text's first ceil(``chunks``/2) pieces, then an error in the stream
                    (OpenAI: ``data: {"error": {...}}``; Anthropic: ``event: error`` with
                    ``overloaded_error``) and the end of the body, no finish and no usage.
                    Non-stream: HTTP 500.

Token accounting (deterministic, so tests can assert exact sums)
----------------------------------------------------------------
- ``prompt_tokens`` = max(1, request body bytes // 4). ``count_tokens`` uses the same rule.
- ``completion_tokens`` = the number of output pieces: 1 per text piece, per reasoning piece,
  per tool call (its id/name piece) and per argument fragment. The OpenAI role-only chunk and
  the finish chunk count nothing. Stream, non-stream and both protocols agree. Examples with
  ``chunks: 5``: ``text`` 5, ``reasoning`` 10 (``reasoning_tokens`` 5), ``tools`` 12.
- Prompt-cache simulation, like the automatic prefix caches of DashScope and DeepSeek: the
  prompt is serialized in template order (model, system, tools, messages; ``cache_control``
  markers ignored) and cut into 1,024-byte blocks, each named by a hash of itself and every
  block before it. A bounded LRU remembers the names; ``cached_tokens`` (OpenAI
  ``prompt_tokens_details.cached_tokens``) = 256 x the number of leading blocks seen before,
  capped at ``prompt_tokens``. A first sighting reports 0; a prompt that changes early
  (a date in the system prompt) reports little. The ``cached_tokens`` knob overrides this.
- Anthropic usage: ``input_tokens`` = prompt - cached, ``cache_read_input_tokens`` = cached,
  ``cache_creation_input_tokens`` = 0, ``output_tokens`` = completion; sent in message_start
  (with ``output_tokens`` 0) and in message_delta.

Stats (``GET /_fake/stats``)
----------------------------
``{"requests": {"chat_completions": n, "messages": n, "count_tokens": n, "models": n},
"total_requests": n, "statuses": {"200": n, ...}, "active_streams": n, "cancelled_streams": n,
"completed_streams": n, "broken_streams": n, "active_requests": n, "cancelled_requests": n,
"fail_counts": {key: n}, "prefix_cache_entries": n, "last_request": RECORD | null,
"history": [RECORD, ...]}`` (history: the most recent ``history_size`` requests, oldest first).
RECORD = ``{"endpoint", "method", "path", "query", "headers": {lower-case name: value},
"auth": {"present", "header", "scheme", "sha256_prefix"}, "json": body | null, "script":
{knobs} | null}``. Auth headers (authorization, x-api-key, api-key) are never included;
``sha256_prefix`` is the first 12 hex digits of the key's sha256 (the token after ``Bearer``).
A stream is *cancelled* when its client went away before the end (the way to see that the
gateway closed its upstream connection), *broken* when ``break_after`` dropped it.
``requests`` counts every API request by endpoint (stats/reset/health not included);
``*_streams`` count streamed generations only; ``active_requests`` and
``cancelled_requests`` count all generations (chat completions and messages), stream or not.
``count_tokens`` and ``models`` ignore scripts.
``POST /_fake/reset`` clears counters, history, ``fail_times`` counters and the prompt cache
(but not ``active_*``, which describe connections still open).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import re
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.testing.vendors import (
    VENDORS,
    Vendor,
    check_request,
    openrouter_error_in_200,
    thinking_active,
    vendor_error_body,
)

Protocol = Literal["openai", "anthropic"]

SCENARIOS = (
    "text",
    "tools",
    "reasoning",
    "length",
    "echo",
    "image_check",
    "write_file",
    "run_command",
    "apply_patch",
    "agent_steps",
    "error_midstream",
)
USAGE_MODES = ("final", "finish", "none")
# OpenAI finish_reason -> Anthropic stop_reason (docs/protocol.md §7).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
FINISH_ALIASES = {anthropic: openai for openai, anthropic in STOP_REASONS.items()}
# Vendor finish reasons beyond OpenAI's four (DeepSeek's insufficient_system_resource, GLM's
# sensitive / network_error, vLLM's abort, OpenRouter's error); Anthropic shows end_turn.
VENDOR_FINISH = ("insufficient_system_resource", "sensitive", "network_error", "abort",
                 "error", "something_new")

DEFAULT_TEXT = "Hello from the fake upstream! This answer is scripted, not generated."
REASONING_TEXT = "The fake upstream considers the request before it answers."
WRITE_CONTENT = "hello from fake upstream\n"
FAKE_SIGNATURE = "ZmFrZS11cHN0cmVhbS1zaWduYXR1cmU="
FAKE_MODELS = ("fake-model", "fake-reasoner")
SCENARIO_HEADER = "x-fake-scenario"
MAX_CHUNKS = 100_000
AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})

# Cached streams hold these marks; each response swaps in its own id and the requested model.
_RID_MARK = "fakerid" + os.urandom(8).hex()
_MODEL_MARK = "fakemodel" + os.urandom(8).hex()
_RID_MARK_B = _RID_MARK.encode()
_MODEL_MARK_B = b'"' + _MODEL_MARK.encode() + b'"'

_DIRECTIVE = re.compile(r"\[\[fake:(\{.*?\}|[A-Za-z_]+)\]\]", re.S)
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_ABS_PATH = re.compile(r"(?<![\w/.:~-])/[^\s\"'`<>()\[\]{},;|]+")
_POLL_SECONDS = 0.05
_STREAM_CACHE_SIZE = 512
_CACHEABLE = frozenset({"text", "tools", "reasoning", "length", "error_midstream"})
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class ScriptError(ValueError):
    """A knob, header or directive the fake upstream cannot follow (answered with 400)."""


@dataclass(frozen=True, slots=True)
class Script:
    """The knobs that decide one answer; see the module docstring for their meaning."""

    scenario: str = "text"
    chunks: int = 5
    chunk_delay: float = 0.0
    first_byte_delay: float = 0.0
    text: str | None = None
    status: int = 0
    retry_after: str | None = None
    error_code: str | None = None
    fail_times: int = 0
    key: str = ""
    hang: bool = False
    stall_after: int | None = None
    stall_for: float | None = None
    break_after: int | None = None
    usage: str = "final"
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    cache_creation_tokens: int = 0
    finish: str | None = None
    queue_for: float = 0.0
    error_in_200: bool = False


@dataclass(frozen=True, slots=True)
class FakeSettings(Script):
    """Server settings: where to listen, optional auth, and the default knobs."""

    host: str = "127.0.0.1"
    port: int = 8090
    api_key: str | None = None
    forever: float = 3600.0
    prefix_cache_size: int = 65536
    history_size: int = 32
    vendor: str = ""  # a profile of gateway/testing/vendors.py: strict vendor rules and shapes


SCRIPT_FIELDS = tuple(f.name for f in dataclasses.fields(Script))


# ---------------------------------------------------------------- knob validation


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScriptError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _chunks(name: str, value: object) -> int:
    chunks = _int(name, value)
    if chunks > MAX_CHUNKS:
        raise ScriptError(f"chunks must be at most {MAX_CHUNKS}, got {chunks}")
    return chunks


def _opt_int(name: str, value: object) -> int | None:
    return None if value is None else _int(name, value)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScriptError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _opt_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value)


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ScriptError(f"{name} must be a string, got {value!r}")
    return value


def _opt_str(name: str, value: object) -> str | None:
    return None if value is None else _str(name, value)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ScriptError(f"{name} must be true or false, got {value!r}")
    return value


def _scenario(name: str, value: object) -> str:
    if value not in SCENARIOS:
        raise ScriptError(f"unknown scenario {value!r}; known: {', '.join(SCENARIOS)}")
    return str(value)


def _usage(name: str, value: object) -> str:
    if value not in USAGE_MODES:
        raise ScriptError(f"usage must be one of {', '.join(USAGE_MODES)}, got {value!r}")
    return str(value)


def _status(name: str, value: object) -> int:
    status = _int(name, value)
    if status and not 400 <= status <= 599:
        raise ScriptError(f"status must be 400-599 (or 0 for none), got {status}")
    return status


def _retry_after(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(_seconds(name, value)).removesuffix(".0")


def _finish(name: str, value: object) -> str | None:
    if value is None:
        return None
    if value in STOP_REASONS:
        return str(value)
    if value in FINISH_ALIASES:
        return FINISH_ALIASES[str(value)]
    if value in VENDOR_FINISH:
        return str(value)
    raise ScriptError(f"finish must be one of {', '.join(STOP_REASONS)}, got {value!r}")


_KNOBS: dict[str, Callable[[str, object], object]] = {
    "scenario": _scenario,
    "chunks": _chunks,
    "chunk_delay": _seconds,
    "first_byte_delay": _seconds,
    "text": _opt_str,
    "status": _status,
    "retry_after": _retry_after,
    "error_code": _opt_str,
    "fail_times": _int,
    "key": _str,
    "hang": _bool,
    "stall_after": _opt_int,
    "stall_for": _opt_seconds,
    "break_after": _opt_int,
    "usage": _usage,
    "cached_tokens": _opt_int,
    "prompt_tokens": _opt_int,
    "cache_creation_tokens": _int,
    "finish": _finish,
    "queue_for": _seconds,
    "error_in_200": _bool,
}
assert set(_KNOBS) == set(SCRIPT_FIELDS)


def apply_knobs(base: Script, overrides: Mapping[str, Any]) -> Script:
    """`base` with `overrides` (knob name -> JSON value) validated and applied."""
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        check = _KNOBS.get(name)
        if check is None:
            raise ScriptError(f"unknown knob {name!r}; known: {', '.join(_KNOBS)}")
        changes[name] = check(name, value)
    return dataclasses.replace(base, **changes) if changes else base


def parse_script_spec(spec: str, base: Script) -> Script:
    """A header/directive value (JSON object or bare scenario name) applied to `base`."""
    spec = spec.strip()
    if not spec.startswith("{"):
        return apply_knobs(base, {"scenario": spec})
    try:
        overrides = orjson.loads(spec)
    except orjson.JSONDecodeError as exc:
        raise ScriptError(f"scenario spec is not valid JSON: {exc}") from exc
    if not isinstance(overrides, dict):
        raise ScriptError("scenario spec must be a JSON object or a scenario name")
    return apply_knobs(base, overrides)


def _default_script(settings: FakeSettings) -> Script:
    return Script(**{name: getattr(settings, name) for name in SCRIPT_FIELDS})


# ---------------------------------------------------------------- answers


class Piece(NamedTuple):
    """One unit of output, counted as one completion token."""

    kind: Literal["text", "reasoning", "tool", "args"]
    text: str = ""  # the piece itself; unused for "tool" (its id derives from the response id)
    call: int = 0  # tool call index, for "tool" and "args"
    name: str = ""  # tool name, for "tool"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a scenario says, independent of protocol and of stream/non-stream."""

    pieces: tuple[Piece, ...]
    finish: str  # OpenAI finish_reason
    error_after: int | None = None  # error_midstream: pieces sent before the error

    @property
    def reasoning_tokens(self) -> int:
        return sum(1 for piece in self.pieces if piece.kind == "reasoning")


def _split(text: str, n: int) -> list[str]:
    """`text` cut into min(n, len(text)) pieces of near-equal length."""
    n = min(n, len(text))
    if n <= 0:
        return []
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _fill(text: str, n: int) -> list[str]:
    """Exactly n pieces of `text` (repeated if shorter than n characters); none for ""."""
    if not text:
        return []
    copies = -(-(n + 1) // (len(text) + 1))  # ceil: enough "text text ..." for n characters
    return _split(" ".join([text] * copies), n)


_TOOL_CALLS = (
    ("Read", '{"file_path": "/tmp/fake-upstream/notes.txt"}'),
    ("Grep", '{"pattern": "TODO", "path": "/tmp/fake-upstream"}'),
)


def scripted_answer(script: Script) -> Answer:
    """The answer of a scenario that does not depend on the request (cacheable)."""
    text = DEFAULT_TEXT if script.text is None else script.text
    scenario = script.scenario
    pieces: list[Piece]
    if scenario == "tools":
        preface = [] if script.text is None else _fill(text, script.chunks)
        pieces = [Piece("text", t) for t in preface]
        fragments = []
        for index, (name, arguments) in enumerate(_TOOL_CALLS):
            pieces.append(Piece("tool", "", index, name))
            fragments.append(_split(arguments, script.chunks))
        for position in range(max(len(f) for f in fragments)):
            for index, parts in enumerate(fragments):
                if position < len(parts):
                    pieces.append(Piece("args", parts[position], index))
        return _finished(script, pieces, "tool_calls")
    if scenario == "reasoning":
        pieces = [Piece("reasoning", t) for t in _fill(REASONING_TEXT, script.chunks)]
        pieces += [Piece("text", t) for t in _fill(text, script.chunks)]
        return _finished(script, pieces, "stop")
    pieces = [Piece("text", t) for t in _fill(text, script.chunks)]
    if scenario == "error_midstream":
        return Answer(tuple(pieces), "stop", error_after=(len(pieces) + 1) // 2)
    return _finished(script, pieces, "length" if scenario == "length" else "stop")


def _honour_max_tokens(script: Script, body: Mapping[str, Any]) -> Script:
    """A `text`/`length` answer stops at the request's output limit, finish `length`, as
    real vendors do. Anthropic: "max_tokens: The maximum number of tokens to generate before
    stopping" (docs.anthropic.com/en/api/messages); OpenAI: "max_completion_tokens: An upper
    bound for the number of tokens that can be generated for a completion"
    (platform.openai.com/docs/api-reference/chat/create). One piece is one token here."""
    if script.scenario not in ("text", "length"):
        return script
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return script
    if script.chunks <= limit:
        return script
    return dataclasses.replace(script, chunks=limit, scenario="length")


def _finished(script: Script, pieces: Iterable[Piece], finish: str) -> Answer:
    return Answer(tuple(pieces), script.finish or finish)


def request_answer(script: Script, body: Mapping[str, Any], protocol: Protocol) -> Answer:
    """The answer of a scenario that looks at the request (echo, image_check, write_file,
    run_command)."""
    messages = _messages(body)
    if script.scenario == "echo":
        text = orjson.dumps(_summary(body, protocol, messages)).decode()
    elif script.scenario == "image_check":
        text = f"image parts received: {_count_images(messages)}"
    elif script.scenario == "agent_steps":
        return _agent_step(script, messages)
    elif _has_tool_result(messages):
        text = "Done."
    else:
        path = _first_absolute_path(messages)
        if path is None:
            text = "write_file: no absolute path in the last user message"
        else:
            tool, arguments = "Write", orjson.dumps(
                {"file_path": path, "content": WRITE_CONTENT}).decode()
            if script.scenario == "run_command":
                command = f"printf '{WRITE_CONTENT.replace(chr(10), chr(92) + 'n')}' > {path}"
                tool, arguments = "exec_command", orjson.dumps({"cmd": command}).decode()
            elif script.scenario == "apply_patch":
                tool, arguments = "apply_patch", orjson.dumps(
                    {"input": apply_patch_text(path)}).decode()
            pieces = [Piece("tool", "", 0, tool)]
            pieces += [Piece("args", t, 0) for t in _split(arguments, max(1, script.chunks))]
            return _finished(script, pieces, "tool_calls")
    return _finished(script, [Piece("text", t) for t in _split(text, script.chunks)], "stop")


AGENT_BASH = "echo agent-steps-bash"


def apply_patch_text(path: str) -> str:
    """A patch in Codex's `apply_patch` format (its Lark grammar: `*** Begin Patch`, one
    `*** Add File: PATH` hunk of `+` lines, `*** End Patch`) that creates PATH with
    WRITE_CONTENT."""
    lines = "".join(f"+{line}\n" for line in WRITE_CONTENT.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def _agent_step(script: Script, messages: list[dict[str, Any]]) -> Answer:
    """agent_steps: a Read of the task's file, then a Write and a Bash in parallel, then a
    final answer; the step is the number of tool-calling turns already in the history."""
    done = sum(1 for m in messages if m.get("role") == "assistant" and (
        m.get("tool_calls") or any(b.get("type") == "tool_use" for b in _blocks(m.get("content")))))
    path = _task_path(messages)
    if path is None:
        text = "agent_steps: no absolute path in the task"
        return _finished(script, [Piece("text", t) for t in _split(text, script.chunks)], "stop")
    if done == 0:
        calls = [("Read", {"file_path": path})]
    elif done == 1:
        calls = [("Write", {"file_path": path + ".out", "content": WRITE_CONTENT}),
                 ("Bash", {"command": AGENT_BASH, "description": "Say the step ran"})]
    else:
        return _finished(script, [Piece("text", "Done.")], "stop")
    pieces: list[Piece] = []
    fragments = []
    for index, (name, arguments) in enumerate(calls):
        pieces.append(Piece("tool", "", index, name))
        fragments.append(_split(orjson.dumps(arguments).decode(), max(1, script.chunks)))
    for position in range(max(len(f) for f in fragments)):
        for index, parts in enumerate(fragments):
            if position < len(parts):
                pieces.append(Piece("args", parts[position], index))
    return _finished(script, pieces, "tool_calls")


def _task_path(messages: list[dict[str, Any]]) -> str | None:
    """The first absolute path in the earliest user text that has one (the task)."""
    for message in messages:
        if message.get("role") != "user":
            continue
        for text in _texts(message.get("content")):
            match = _ABS_PATH.search(_REMINDER.sub(" ", _DIRECTIVE.sub(" ", text)))
            if match:
                return match.group(0).rstrip(".,:;!?")
    return None


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def _blocks(content: object) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def _texts(content: object) -> list[str]:
    """The text of a message's content: a string, or its text blocks/parts in order."""
    if isinstance(content, str):
        return [content]
    return [
        block["text"]
        for block in _blocks(content)
        if block.get("type") == "text" and isinstance(block.get("text"), str)
    ]


def _summary(
    body: Mapping[str, Any], protocol: Protocol, messages: list[dict[str, Any]]
) -> dict[str, Any]:
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    names = []
    for tool in tools or []:
        if isinstance(tool, dict):
            function = tool.get("function")
            holder = function if isinstance(function, dict) else tool
            names.append(holder.get("name"))
    return {
        "protocol": protocol,
        "model": body.get("model"),
        "stream": body.get("stream") is True,
        "messages": len(messages),
        "roles": [m.get("role") for m in messages],
        "system": bool(body.get("system")) or any(m.get("role") == "system" for m in messages),
        "tools": len(names),
        "tool_names": names,
        "max_tokens": body.get("max_tokens"),
        "keys": sorted(body),
    }


def _count_images(messages: list[dict[str, Any]]) -> int:
    def count(blocks: list[dict[str, Any]]) -> int:
        total = 0
        for block in blocks:
            kind = block.get("type")
            if kind in ("image", "image_url"):
                total += 1
            elif kind == "tool_result":
                total += count(_blocks(block.get("content")))
        return total

    return sum(count(_blocks(m.get("content"))) for m in messages)


def _has_tool_result(messages: list[dict[str, Any]]) -> bool:
    return any(
        m.get("role") == "tool"
        or any(b.get("type") == "tool_result" for b in _blocks(m.get("content")))
        for m in messages
    )


def _first_absolute_path(messages: list[dict[str, Any]]) -> str | None:
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return None
    # The prompt is the last text block; Claude Code's reminders may mention other paths.
    for text in reversed(_texts(users[-1].get("content"))):
        match = _ABS_PATH.search(_REMINDER.sub(" ", _DIRECTIVE.sub(" ", text)))
        if match:
            return match.group(0).rstrip(".,:;!?")
    return None


def _directive(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        for text in reversed(_texts(message.get("content"))):
            found = _DIRECTIVE.findall(text)
            if found:
                return str(found[-1])
    return None


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class RenderedStream:
    """Stream bytes shared by every response with the same answer (with id/model marks).

    A response is: per-request start + `opening` + `frames` + `closing` + per-request end.
    `frames[i]` carries piece i (plus any block boundaries before it), so `stall_after` and
    `break_after` cut between frames. `middle` = `opening` + all frames, for one write.
    """

    opening: bytes
    frames: tuple[bytes, ...]
    closing: bytes
    middle: bytes


def _openai_chunk(
    rid: str,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    """One ``data:`` line; `delta` None makes the usage-only chunk with ``choices: []``."""
    chunk: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _tool_id(piece: Piece, rid: str, vendor: Vendor | None) -> str:
    if vendor is not None and vendor.tool_id_style == "kimi":
        return f"functions.{piece.name}:{piece.call}"  # repeats on every turn, like Kimi's
    return f"call_{rid}_{piece.call}"


def _openai_delta(piece: Piece, rid: str, vendor: Vendor | None = None) -> dict[str, Any]:
    if piece.kind == "text":
        return {"content": piece.text}
    if piece.kind == "reasoning":
        field_name = "reasoning_content" if vendor is None else vendor.reasoning_field
        return {"content": None, field_name: piece.text} if field_name else {}
    if piece.kind == "tool":
        call = {
            "index": piece.call,
            "id": _tool_id(piece, rid, vendor),
            "type": "function",
            "function": {"name": piece.name, "arguments": ""},
        }
        return {"tool_calls": [call]}
    return {"tool_calls": [{"index": piece.call, "function": {"arguments": piece.text}}]}


def _openai_error_payload(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": "500"}}


def render_openai_stream(answer: Answer, vendor: Vendor | None = None) -> RenderedStream:
    """The cacheable part of a chat.completion.chunk stream (finish chunk without usage)."""
    opening = _openai_chunk(_RID_MARK, _MODEL_MARK, {"role": "assistant", "content": ""}, None)
    frames = tuple(
        _openai_chunk(_RID_MARK, _MODEL_MARK, _openai_delta(p, _RID_MARK, vendor), None)
        for p in answer.pieces
    )
    if answer.error_after is not None:
        frames = frames[: answer.error_after]
        payload = _openai_error_payload("fake upstream: scripted error in the middle of a stream")
        closing = b"data: " + orjson.dumps(payload) + b"\n\n"
    else:
        closing = _openai_chunk(_RID_MARK, _MODEL_MARK, {}, answer.finish)
    return RenderedStream(opening, frames, closing, opening + b"".join(frames))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _anthropic_blocks(pieces: Iterable[Piece]) -> list[list[Piece]]:
    """Pieces grouped into content blocks in the order blocks first appear."""
    blocks: dict[tuple[str, int], list[Piece]] = {}
    for piece in pieces:
        kind = "tool" if piece.kind == "args" else piece.kind
        blocks.setdefault((kind, piece.call), []).append(piece)
    return list(blocks.values())


def _anthropic_block_stop(index: int, block: list[Piece]) -> bytes:
    signature = b""
    if block[0].kind == "reasoning":
        delta = {"type": "signature_delta", "signature": FAKE_SIGNATURE}
        signature = _sse(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
    return signature + _sse("content_block_stop", {"type": "content_block_stop", "index": index})


def _anthropic_tool_id(piece: Piece, rid: str, vendor: Vendor | None) -> str:
    if vendor is not None and vendor.tool_id_style == "kimi":
        return f"functions.{piece.name}:{piece.call}"  # Kimi's Anthropic endpoint too
    return f"toolu_{rid}_{piece.call}"


def _anthropic_block_start(index: int, piece: Piece, rid: str,
                           vendor: Vendor | None = None) -> bytes:
    block: dict[str, Any]
    if piece.kind == "text":
        block = {"type": "text", "text": ""}
    elif piece.kind == "reasoning":
        block = {"type": "thinking", "thinking": "", "signature": ""}
    else:
        block = {"type": "tool_use", "id": _anthropic_tool_id(piece, rid, vendor),
                 "name": piece.name}
        block["input"] = {}
    data = {"type": "content_block_start", "index": index, "content_block": block}
    return _sse("content_block_start", data)


def _anthropic_delta(index: int, piece: Piece) -> bytes:
    if piece.kind == "text":
        delta = {"type": "text_delta", "text": piece.text}
    elif piece.kind == "reasoning":
        delta = {"type": "thinking_delta", "thinking": piece.text}
    else:
        delta = {"type": "input_json_delta", "partial_json": piece.text}
    return _sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def render_anthropic_stream(answer: Answer, vendor: Vendor | None = None) -> RenderedStream:
    """The cacheable part of an Anthropic event stream: ping, the blocks, the last block stop."""
    opening = _sse("ping", {"type": "ping"})
    blocks = _anthropic_blocks(answer.pieces)
    frames: list[bytes] = []
    for index, block in enumerate(blocks):
        for position, piece in enumerate(block):
            parts = []
            if position == 0:
                if index:
                    parts.append(_anthropic_block_stop(index - 1, blocks[index - 1]))
                parts.append(_anthropic_block_start(index, piece, _RID_MARK, vendor))
            if piece.kind != "tool":
                parts.append(_anthropic_delta(index, piece))
            frames.append(b"".join(parts))
    closing = _anthropic_block_stop(len(blocks) - 1, blocks[-1]) if blocks else b""
    if answer.error_after is not None:
        frames = frames[: answer.error_after]
        closing = _sse("error", _anthropic_error_body(529, "scripted error mid-stream"))
    return RenderedStream(opening, tuple(frames), closing, opening + b"".join(frames))


# ---------------------------------------------------------------- usage and errors


class Usage(NamedTuple):
    """Token figures of one fake answer, in OpenAI terms."""

    prompt: int
    cached: int
    completion: int
    reasoning: int
    created: int = 0  # prompt tokens written to the cache (part of `prompt`, not of `cached`)
    # False: the vendor has no cache figures at all. Ollama's Anthropic endpoint reports
    # only input_tokens and output_tokens (its Usage struct, ollama/ollama
    # anthropic/anthropic.go).
    cache_fields: bool = True

    def openai(self, vendor: Vendor | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }
        style = "details" if vendor is None else vendor.cache_style
        if style == "deepseek":
            # DeepSeek context caching: prompt_cache_hit_tokens / prompt_cache_miss_tokens
            # (api-docs.deepseek.com/guides/kv_cache).
            usage["prompt_cache_hit_tokens"] = self.cached
            usage["prompt_cache_miss_tokens"] = self.prompt - self.cached
        elif style == "kimi":
            # Moonshot: usage.cached_tokens at the top level, no prompt_tokens_details.
            del usage["prompt_tokens_details"], usage["completion_tokens_details"]
            usage["cached_tokens"] = self.cached
        elif style == "none":
            del usage["prompt_tokens_details"]
        if vendor is not None and vendor.reports_cache_creation and self.created:
            usage["prompt_tokens_details"]["cache_creation_input_tokens"] = self.created
        return usage

    def anthropic(self, output_tokens: int) -> dict[str, Any]:
        if not self.cache_fields:
            return {"input_tokens": self.prompt, "output_tokens": output_tokens}
        return {
            "input_tokens": self.prompt - self.cached - self.created,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": self.created,
            "cache_read_input_tokens": self.cached,
        }


_OPENAI_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("timeout", "gateway_timeout"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    default = "api_error" if status >= 500 else "invalid_request_error"
    kind = _ANTHROPIC_ERRORS.get(status, default)
    return {"type": "error", "error": {"type": kind, "message": f"fake upstream: {message}"}}


def error_body(protocol: Protocol, status: int, message: str) -> dict[str, Any]:
    """A realistic error body for `status` in the protocol's shape."""
    if protocol == "anthropic":
        return _anthropic_error_body(status, message)
    default = ("server_error", str(status)) if status >= 500 else ("invalid_request_error", None)
    kind, code = _OPENAI_ERRORS.get(status, default)
    return {
        "error": {"message": f"fake upstream: {message}", "type": kind, "param": None, "code": code}
    }


def _error_response(
    protocol: Protocol, status: int, message: str, retry_after: str | None = None
) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(protocol, status, message)),
        content_type="application/json",
        headers=headers,
    )


# ---------------------------------------------------------------- server state


@dataclass(slots=True)
class RequestRecord:
    """What one request looked like; rendered into JSON only when stats are read."""

    endpoint: str
    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: Any
    script: Script | None = None

    def to_json(self) -> dict[str, Any]:
        headers: dict[str, str] = {}
        auth: dict[str, Any] = {
            "present": False,
            "header": None,
            "scheme": None,
            "sha256_prefix": None,
        }
        for name, value in self.headers.items():
            lower = name.lower()
            if lower not in AUTH_HEADERS:
                headers.setdefault(lower, value)
            elif not auth["present"]:
                scheme, _, token = value.partition(" ")
                bearer = lower.endswith("authorization") and bool(token)
                secret = token.strip() if bearer else value
                auth = {
                    "present": True,
                    "header": lower,
                    "scheme": scheme.lower() if bearer else None,
                    "sha256_prefix": hashlib.sha256(secret.encode()).hexdigest()[:12],
                }
        return {
            "endpoint": self.endpoint,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "auth": auth,
            "json": self.body,
            "script": None if self.script is None else dataclasses.asdict(self.script),
        }


@dataclass(slots=True)
class Stats:
    """Counters behind /_fake/stats."""

    history_size: int
    requests: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    history: deque[RequestRecord] = field(default_factory=deque)
    fail_counts: dict[str, int] = field(default_factory=dict)
    active_streams: int = 0
    cancelled_streams: int = 0
    completed_streams: int = 0
    broken_streams: int = 0
    active_requests: int = 0
    cancelled_requests: int = 0

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.history.clear()
        self.fail_counts.clear()
        self.cancelled_streams = self.completed_streams = self.broken_streams = 0
        self.cancelled_requests = 0

    def record(self, record: RequestRecord) -> None:
        self.requests[record.endpoint] = self.requests.get(record.endpoint, 0) + 1
        self.history.append(record)
        if len(self.history) > self.history_size:
            self.history.popleft()

    def answered(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


CACHE_BLOCK = 1024  # bytes of serialized prompt per cache unit (about 256 tokens)


class PrefixCache:
    """Bounded LRU of prompt-prefix blocks, simulating the automatic prefix caches of
    DashScope and DeepSeek: a request is billed as cached for the longest run of leading
    blocks that an earlier request already sent, byte for byte."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: OrderedDict[bytes, None] = OrderedDict()

    def cached_tokens(self, body: Mapping[str, Any], protocol: Protocol, raw: bytes) -> int:
        prompt = _prompt_prefix(body, protocol, b"cache_control" in raw)
        if prompt is None or self.size <= 0:
            return 0
        running = hashlib.blake2b(digest_size=16)
        hits = 0
        matching = True
        for start in range(0, len(prompt) - CACHE_BLOCK + 1, CACHE_BLOCK):
            running.update(prompt[start:start + CACHE_BLOCK])
            digest = running.digest()  # names this block *and* everything before it
            if matching and digest in self.seen:
                self.seen.move_to_end(digest)
                hits += 1
                continue
            matching = False
            self.seen[digest] = None
            if len(self.seen) > self.size:
                self.seen.popitem(last=False)
        return hits * CACHE_BLOCK // 4


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _prompt_prefix(body: Mapping[str, Any], protocol: Protocol, markers: bool) -> bytes | None:
    """The prompt in the order chat templates render it: system, tools, then the messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if protocol == "anthropic":
        head: list[Any] = [body.get("system"), body.get("tools"), messages]
    else:
        first = 0
        while first < len(messages) - 1 and _role(messages[first]) == "system":
            first += 1
        head = [messages[:first], body.get("tools"), messages[first:]]
    if markers:
        # Claude Code moves cache_control to the newest block each turn; caching ignores it.
        head = _without_cache_control(head)
    return orjson.dumps([body.get("model"), head])


def _role(message: object) -> object:
    return message.get("role") if isinstance(message, dict) else None


# ---------------------------------------------------------------- the server


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pause(request: web.BaseRequest, seconds: float) -> bool:
    """Sleep `seconds`; False as soon as the client has gone away.

    aiohttp does not cancel handlers when clients disconnect (unless the runner is built with
    handler_cancellation=True), so long waits poll the transport.
    """
    if seconds <= 0:
        return not _client_gone(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not _client_gone(request):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        await asyncio.sleep(min(remaining, _POLL_SECONDS))
    return False


_AnswerKey = tuple[str, int, str | None, str | None]


class _ClientGone(Exception):
    """The client disconnected before the answer was complete."""


class FakeUpstream:
    """Request handlers plus the state they share (one per application)."""

    def __init__(self, settings: FakeSettings) -> None:
        self.settings = settings
        self.defaults = _default_script(settings)
        self.stats = Stats(history_size=settings.history_size)
        self.prefixes = PrefixCache(settings.prefix_cache_size)
        if settings.vendor and settings.vendor not in VENDORS:
            raise ScriptError(f"vendor must be one of {', '.join(VENDORS)}, "
                              f"got {settings.vendor!r}")
        self.vendor: Vendor | None = VENDORS.get(settings.vendor)
        self._streams: dict[tuple[Protocol, _AnswerKey], RenderedStream] = {}
        self._answers: dict[_AnswerKey, Answer] = {}

    # -- routes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/chat/completions", self.chat_completions),
            web.post("/v1/messages", self.messages),
            web.post("/v1/messages/count_tokens", self.count_tokens),
            web.get("/v1/models", self.models),
            web.get("/models", self.models),
            web.get("/_fake/stats", self.stats_handler),
            web.post("/_fake/reset", self.reset_handler),
            web.get("/_fake/health", self.health_handler),
        ]

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "openai", "chat_completions")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "anthropic", "messages")

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = self._record(request, "count_tokens", raw).body
        if not self._authorized(request):
            return self._answer_error("anthropic", 401, "invalid x-api-key")
        if not isinstance(body, dict):
            return self._answer_error("anthropic", 400, "body must be a JSON object")
        return self._json({"input_tokens": max(1, len(raw) // 4)})

    async def models(self, request: web.Request) -> web.StreamResponse:
        self._record(request, "models", b"")
        if not self._authorized(request):
            return self._answer_error("openai", 401, "invalid api key")
        data = [
            {
                "id": name,
                "object": "model",
                "created": 1735689600,
                "owned_by": "fake-upstream",
                "type": "model",
                "display_name": name,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for name in FAKE_MODELS
        ]
        return self._json(
            {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": FAKE_MODELS[0],
                "last_id": FAKE_MODELS[-1],
            }
        )

    async def stats_handler(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        history = [record.to_json() for record in stats.history]
        return self._json(
            {
                "requests": stats.requests,
                "total_requests": sum(stats.requests.values()),
                "statuses": {str(k): v for k, v in stats.statuses.items()},
                "active_streams": stats.active_streams,
                "cancelled_streams": stats.cancelled_streams,
                "completed_streams": stats.completed_streams,
                "broken_streams": stats.broken_streams,
                "active_requests": stats.active_requests,
                "cancelled_requests": stats.cancelled_requests,
                "fail_counts": stats.fail_counts,
                "prefix_cache_entries": len(self.prefixes.seen),
                "last_request": history[-1] if history else None,
                "history": history,
            },
            count=False,
        )

    async def reset_handler(self, request: web.Request) -> web.StreamResponse:
        self.stats.reset()
        self.prefixes.seen.clear()
        return self._json({"ok": True}, count=False)

    async def health_handler(self, request: web.Request) -> web.StreamResponse:
        return self._json({"ok": True, "fake_upstream": True}, count=False)

    # -- helpers

    def _json(self, data: Any, status: int = 200, count: bool = True) -> web.Response:
        if count:
            self.stats.answered(status)
        return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")

    def _answer_error(
        self, protocol: Protocol, status: int, message: str, retry_after: str | None = None,
        code: str | None = None,
    ) -> web.Response:
        self.stats.answered(status)
        if self.vendor is not None and protocol == "openai":
            headers = {"Retry-After": retry_after} if retry_after else None
            return web.Response(status=status, content_type="application/json",
                                headers=headers, body=orjson.dumps(
                                    vendor_error_body(self.vendor, status, message, code)))
        return _error_response(protocol, status, message, retry_after)

    def _record(self, request: web.Request, endpoint: str, raw: bytes) -> RequestRecord:
        """Count the request and keep it for /_fake/stats; `.body` is the parsed JSON or None."""
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        record = RequestRecord(
            endpoint, request.method, request.path, request.query_string, request.headers, body
        )
        self.stats.record(record)
        return record

    def _authorized(self, request: web.Request) -> bool:
        key = self.settings.api_key
        if not key:
            return True
        headers = request.headers
        return headers.get("x-api-key") == key or headers.get("authorization") == f"Bearer {key}"

    def _script(self, request: web.Request, raw: bytes, body: Mapping[str, Any]) -> Script:
        spec = request.headers.get(SCENARIO_HEADER)
        if spec is None and b"[[fake:" in raw:
            spec = _directive(_messages(body))
        script = self.defaults if spec is None else parse_script_spec(spec, self.defaults)
        if script.fail_times:
            failures = self.stats.fail_counts.get(script.key, 0) + 1
            self.stats.fail_counts[script.key] = failures
            if failures > script.fail_times:
                scenario = "text" if script.scenario == "error_midstream" else script.scenario
                script = dataclasses.replace(
                    script,
                    status=0,
                    hang=False,
                    stall_after=None,
                    break_after=None,
                    scenario=scenario,
                )
        return script

    def _answer(self, script: Script, body: Mapping[str, Any], protocol: Protocol) -> Answer:
        if script.scenario not in _CACHEABLE:
            return request_answer(script, body, protocol)
        key = (script.scenario, script.chunks, script.text, script.finish)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= _STREAM_CACHE_SIZE:
                self._answers.clear()
            answer = self._answers[key] = scripted_answer(script)
        return answer

    def _rendered(self, protocol: Protocol, script: Script, answer: Answer) -> RenderedStream:
        if self.vendor is not None:  # per request: vendor shapes
            if protocol == "openai":
                return render_openai_stream(answer, self.vendor)
            return render_anthropic_stream(answer, self.vendor)
        render = render_openai_stream if protocol == "openai" else render_anthropic_stream
        if script.scenario not in _CACHEABLE:
            return render(answer)
        key = (protocol, (script.scenario, script.chunks, script.text, script.finish))
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= _STREAM_CACHE_SIZE:
                self._streams.clear()
            stream = self._streams[key] = render(answer)
        return stream

    # -- generation

    async def _generate(
        self, request: web.Request, protocol: Protocol, endpoint: str
    ) -> web.StreamResponse:
        raw = await request.read()
        record = self._record(request, endpoint, raw)
        body = record.body
        if not self._authorized(request):
            return self._answer_error(protocol, 401, "invalid api key")
        if not isinstance(body, dict):
            return self._answer_error(protocol, 400, "body must be a JSON object")
        try:
            script = self._script(request, raw, body)
        except ScriptError as exc:
            return self._answer_error(protocol, 400, str(exc))
        script = _honour_max_tokens(script, body)
        record.script = script
        if self.vendor is not None:
            rejection = check_request(self.vendor, body, protocol)
            if rejection is not None:
                self.stats.answered(rejection.status)
                return web.Response(status=rejection.status, body=orjson.dumps(rejection.body),
                                    content_type="application/json")
        stream = body.get("stream") is True
        stats = self.stats
        stats.active_requests += 1
        if stream:
            stats.active_streams += 1
        gone = True
        try:
            response = await self._respond(request, protocol, script, body, raw, stream)
            gone = False
            return response
        except (_ClientGone, ConnectionError):
            # Nobody is listening; aiohttp fails to send this quietly.
            return web.Response(status=499)
        finally:
            stats.active_requests -= 1
            if stream:
                stats.active_streams -= 1
            if gone:
                stats.cancelled_requests += 1
                if stream:
                    stats.cancelled_streams += 1

    async def _respond(
        self,
        request: web.Request,
        protocol: Protocol,
        script: Script,
        body: dict[str, Any],
        raw: bytes,
        stream: bool,
    ) -> web.StreamResponse:
        if script.first_byte_delay and not await _pause(request, script.first_byte_delay):
            raise _ClientGone
        if script.hang and not await _pause(request, self.settings.forever):
            raise _ClientGone
        if script.status:
            message = f"scripted {script.status} error"
            return self._answer_error(protocol, script.status, message, script.retry_after,
                                      script.error_code)
        answer = self._answer(script, body, protocol)
        vendor = self.vendor
        if vendor is not None and thinking_active(vendor, body, protocol) and not any(
                p.kind == "reasoning" for p in answer.pieces) and script.scenario != "echo":
            # The vendor thinks before it answers (and shows it where it shows reasoning).
            thoughts = [Piece("reasoning", t) for t in _fill(REASONING_TEXT, script.chunks)]
            answer = dataclasses.replace(answer, pieces=(*thoughts, *answer.pieces))
        if vendor is not None and (script.queue_for or script.error_in_200):
            return await self._vendor_special(request, protocol, script, answer, body, stream)
        prompt = max(1, len(raw) // 4) if script.prompt_tokens is None else script.prompt_tokens
        cached = self.prefixes.cached_tokens(body, protocol, raw)
        if script.cached_tokens is not None:
            cached = script.cached_tokens
        cached = min(cached, prompt)
        created = min(script.cache_creation_tokens, prompt - cached)
        caches = vendor is None or vendor.cache_style != "none"
        usage = Usage(prompt, cached if caches else 0, len(answer.pieces),
                      answer.reasoning_tokens, created if caches else 0, caches)
        model = str(body.get("model") or FAKE_MODELS[0])
        if stream:
            return await self._stream(request, protocol, script, answer, usage, model, body)
        return await self._whole(request, protocol, script, answer, usage, model)

    async def _whole(
        self,
        request: web.Request,
        protocol: Protocol,
        script: Script,
        answer: Answer,
        usage: Usage,
        model: str,
    ) -> web.StreamResponse:
        """A non-stream answer, after the time the stream would have taken."""
        pieces = len(answer.pieces)
        if script.break_after is not None:
            pieces = min(pieces, script.break_after)
        wait = script.chunk_delay * pieces
        if script.stall_after is not None and script.break_after is None:
            wait += self._stall_seconds(script)
        if wait and not await _pause(request, wait):
            raise _ClientGone
        if script.break_after is not None:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=200)
        if answer.error_after is not None:
            return self._answer_error(protocol, 500, "scripted error")
        rid = os.urandom(12).hex()
        if protocol == "openai":
            data = openai_completion(answer, usage, model, rid, script.usage != "none",
                                     self.vendor)
        else:
            data = anthropic_message(answer, usage, model, rid, self.vendor)
        return self._json(data)

    async def _stream(
        self,
        request: web.Request,
        protocol: Protocol,
        script: Script,
        answer: Answer,
        usage: Usage,
        model: str,
        body: Mapping[str, Any],
    ) -> web.StreamResponse:
        rendered = self._rendered(protocol, script, answer)
        rid = os.urandom(12).hex()
        rid_b, model_b = rid.encode(), orjson.dumps(model)
        closing = rendered.closing
        start = _stream_start(protocol, usage, rid, model)
        vendor = self.vendor
        if answer.error_after is not None:
            end = b""
        elif protocol == "openai":
            end = b"data: [DONE]\n\n"
            place = vendor.usage_place if vendor is not None else ""
            if script.usage == "none":
                pass
            elif place == "choice":
                closing = _kimi_finish_chunk(rid, model, answer.finish, usage.openai(vendor))
            elif script.usage == "finish":
                closing = _openai_chunk(rid, model, {}, answer.finish, usage.openai(vendor))
            elif place == "always_final" or _include_usage(body):
                end = _openai_chunk(rid, model, None, usage=usage.openai(vendor)) + end
        else:
            delta = {
                "type": "message_delta",
                "delta": {"stop_reason": STOP_REASONS.get(answer.finish, "end_turn"),
                          "stop_sequence": None},
                "usage": usage.anthropic(usage.completion),
            }
            end = _sse("message_delta", delta) + _sse("message_stop", {"type": "message_stop"})

        def bind(data: bytes) -> bytes:
            return data.replace(_RID_MARK_B, rid_b).replace(_MODEL_MARK_B, model_b)

        response = web.StreamResponse(headers={**_SSE_HEADERS, "X-Request-Id": rid})
        await response.prepare(request)
        self.stats.answered(200)
        pieces = len(rendered.frames)
        cut = script.break_after if script.break_after is not None else script.stall_after
        if not script.chunk_delay and cut is None:
            # The common path: one write for the whole answer.
            await response.write(bind(start + rendered.middle + closing + end))
        else:
            await response.write(bind(start + rendered.opening))
            cut = None if cut is None else min(cut, pieces)
            for position, frame in enumerate((*rendered.frames, closing + end)):
                if position == cut:
                    if script.break_after is not None:
                        return self._break(request, response)
                    if not await _pause(request, self._stall_seconds(script)):
                        raise _ClientGone
                if position < pieces and not await _pause(request, script.chunk_delay):
                    raise _ClientGone
                await response.write(bind(frame))
        await response.write_eof()
        self.stats.completed_streams += 1
        return response

    async def _vendor_special(self, request: web.Request, protocol: Protocol, script: Script,
                              answer: Answer, body: dict[str, Any],
                              stream: bool) -> web.StreamResponse:
        """A request kept in the vendor's queue (`queue_for` seconds of keep-alive comments,
        or blank lines for a non-stream request), and/or an error inside an HTTP 200."""
        vendor = self.vendor
        assert vendor is not None
        response = web.StreamResponse(headers={
            **_SSE_HEADERS,
            "Content-Type": "text/event-stream" if stream else "application/json"})
        await response.prepare(request)
        self.stats.answered(200)
        deadline = time.monotonic() + script.queue_for
        # DeepSeek: "Non-streaming requests: Continuously return empty lines"; streams get
        # the vendor's SSE comment (api-docs.deepseek.com/quick_start/rate_limit).
        beat = (vendor.keepalive or b": keep-alive\n\n") if stream else b"\n"
        while time.monotonic() < deadline:
            await response.write(beat)
            if not await _pause(request, min(0.2, max(0.0, deadline - time.monotonic()))):
                raise _ClientGone
        rid = os.urandom(12).hex()
        model = str(body.get("model") or FAKE_MODELS[0])
        if script.error_in_200:
            payload = openrouter_error_in_200("fake upstream: Provider returned error")
            if stream:
                chunk = {"id": f"gen-{rid}", "object": "chat.completion.chunk", "model": model,
                         **payload, "choices": [{"index": 0, "delta": {"content": ""},
                                                 "finish_reason": "error"}]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            else:
                await response.write(orjson.dumps(payload))
            await response.write_eof()
            return response
        usage = Usage(max(1, len(orjson.dumps(body)) // 4), 0, len(answer.pieces),
                      answer.reasoning_tokens)
        if not stream:
            data = openai_completion(answer, usage, model, rid, True, vendor) \
                if protocol == "openai" else anthropic_message(answer, usage, model, rid, vendor)
            await response.write(orjson.dumps(data))
        elif protocol == "openai":
            rendered = render_openai_stream(answer, vendor)
            out = rendered.middle + _openai_chunk(rid, model, {}, answer.finish,
                                                  usage.openai(vendor)) + b"data: [DONE]\n\n"
            await response.write(out.replace(_RID_MARK_B, rid.encode())
                                 .replace(_MODEL_MARK_B, orjson.dumps(model)))
        else:
            rendered = render_anthropic_stream(answer, vendor)
            delta = {"type": "message_delta", "delta": {
                "stop_reason": STOP_REASONS.get(answer.finish, "end_turn"),
                "stop_sequence": None}, "usage": usage.anthropic(usage.completion)}
            out = _stream_start(protocol, usage, rid, model) + rendered.middle + \
                rendered.closing + _sse("message_delta", delta) + \
                _sse("message_stop", {"type": "message_stop"})
            await response.write(out.replace(_RID_MARK_B, rid.encode())
                                 .replace(_MODEL_MARK_B, orjson.dumps(model)))
        await response.write_eof()
        self.stats.completed_streams += stream
        return response

    def _stall_seconds(self, script: Script) -> float:
        return self.settings.forever if script.stall_for is None else script.stall_for

    def _break(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Drop the connection mid-stream (aiohttp then fails write_eof quietly)."""
        if request.transport is not None:
            request.transport.close()
        self.stats.broken_streams += 1
        return response


def _stream_start(protocol: Protocol, usage: Usage, rid: str, model: str) -> bytes:
    if protocol == "openai":
        return b""
    message: dict[str, Any] = {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage.anthropic(0),
    }
    return _sse("message_start", {"type": "message_start", "message": message})


def _kimi_finish_chunk(rid: str, model: str, finish: str, usage: dict[str, Any]) -> bytes:
    """Moonshot's finish chunk: usage inside choices[0], none at the top level."""
    chunk = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk",
             "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": {}, "finish_reason": finish, "usage": usage}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def openai_completion(
    answer: Answer, usage: Usage, model: str, rid: str, with_usage: bool = True,
    vendor: Vendor | None = None,
) -> dict[str, Any]:
    """A non-stream chat.completion body."""
    text = "".join(p.text for p in answer.pieces if p.kind == "text")
    reasoning = "".join(p.text for p in answer.pieces if p.kind == "reasoning")
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    field_name = "reasoning_content" if vendor is None else vendor.reasoning_field
    if reasoning and field_name:
        message[field_name] = reasoning
    calls: dict[int, dict[str, Any]] = {}
    for piece in answer.pieces:
        if piece.kind == "tool":
            calls[piece.call] = {
                "id": _tool_id(piece, rid, vendor),
                "type": "function",
                "function": {"name": piece.name, "arguments": ""},
            }
        elif piece.kind == "args":
            calls[piece.call]["function"]["arguments"] += piece.text
    if calls:
        message["tool_calls"] = list(calls.values())
    data: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}
        ],
    }
    if with_usage:
        data["usage"] = usage.openai(vendor)
    return data


def anthropic_message(answer: Answer, usage: Usage, model: str, rid: str,
                      vendor: Vendor | None = None) -> dict[str, Any]:
    """A non-stream Anthropic message body."""
    content: list[dict[str, Any]] = []
    for block in _anthropic_blocks(answer.pieces):
        first = block[0]
        joined = "".join(p.text for p in block)
        if first.kind == "text":
            content.append({"type": "text", "text": joined})
        elif first.kind == "reasoning":
            content.append({"type": "thinking", "thinking": joined, "signature": FAKE_SIGNATURE})
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": _anthropic_tool_id(first, rid, vendor),
                    "name": first.name,
                    "input": orjson.loads(joined or "{}"),
                }
            )
    return {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(answer.finish, "end_turn"),
        "stop_sequence": None,
        "usage": usage.anthropic(usage.completion),
    }


FAKE_UPSTREAM = web.AppKey("fake_upstream", FakeUpstream)


def build_app(settings: FakeSettings | None = None) -> web.Application:
    """The fake upstream as an aiohttp application (its state is `app[FAKE_UPSTREAM]`)."""
    fake = FakeUpstream(settings or FakeSettings())
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[FAKE_UPSTREAM] = fake
    app.add_routes(fake.routes())
    return app


@asynccontextmanager
async def start_server(settings: FakeSettings | None = None) -> AsyncIterator[str]:
    """Serve the fake upstream in this event loop; yields its base URL (``http://host:port``).

    Use ``FakeSettings(port=0)`` for a free port. Providers append ``/v1`` for the OpenAI
    protocol and nothing for the Anthropic one.
    """
    settings = settings or FakeSettings()
    runner = web.AppRunner(
        build_app(settings), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.port
        yield f"http://{settings.host}:{port}"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m gateway fake-upstream``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8090, help="port (0 picks a free one)")
    parser.add_argument(
        "--api-key", default=None, help="require this key (x-api-key or Authorization: Bearer)"
    )
    parser.add_argument("--scenario", default="text", choices=SCENARIOS, help="default scenario")
    parser.add_argument("--chunks", type=int, default=5, help="content pieces per answer")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds before each streamed piece"
    )
    parser.add_argument(
        "--first-byte-delay", type=float, default=0.0, help="seconds before the response headers"
    )
    parser.add_argument("--chunk-text", default=None, help="the answer text to stream")
    parser.add_argument(
        "--usage", default="final", choices=USAGE_MODES, help="where OpenAI streams report usage"
    )
    parser.add_argument(
        "--vendor", default="", choices=("", *VENDORS),
        help="behave like this vendor: its request rules (400s) and wire shapes"
        " (gateway/testing/vendors.py)",
    )
    parser.add_argument(
        "--script",
        default=None,
        metavar="JSON",
        help="more default knobs as a JSON object, e.g. '{\"cached_tokens\": 64}'"
        " (overrides the options above)",
    )


def settings_from_args(args: argparse.Namespace) -> FakeSettings:
    """`FakeSettings` from parsed `add_arguments` options; raises `ScriptError` if invalid."""
    knobs = {
        "scenario": getattr(args, "scenario", "text"),
        "chunks": getattr(args, "chunks", 5),
        "chunk_delay": getattr(args, "chunk_delay", 0.0),
        "first_byte_delay": getattr(args, "first_byte_delay", 0.0),
        "text": getattr(args, "chunk_text", None),
        "usage": getattr(args, "usage", "final"),
    }
    script = apply_knobs(Script(), knobs)
    extra = getattr(args, "script", None)
    if extra:
        script = parse_script_spec(extra, script)
    return FakeSettings(
        **dataclasses.asdict(script),
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 8090),
        api_key=getattr(args, "api_key", None) or None,
        vendor=getattr(args, "vendor", "") or "",
    )


async def _serve_until_signalled(settings: FakeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):  # Windows has no add_signal_handler
            loop.add_signal_handler(signum, stop.set)
    async with start_server(settings) as url:
        print(f"fake upstream listening on {url}", flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM, on uvloop where available; 0 when stopped, 2 on bad options."""
    try:
        settings = settings_from_args(args)
    except ScriptError as exc:
        print(f"fake-upstream: {exc}", file=sys.stderr)
        return 2
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_until_signalled(settings))
    return 0
