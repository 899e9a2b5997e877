"""OpenAIStreamConverter: fixture transcripts and named behaviours of the stream conversion."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import anthropic_events
from gateway.protocol.openai_stream import OpenAIStreamConverter
from gateway.protocol.sse import SSEParser
from gateway.protocol.tool_ids import upstream_tool_id

FIXTURES = Path(__file__).parent.parent / "fixtures"
STREAM_CASES = sorted(p.name.removesuffix(".openai.sse") for p in FIXTURES.glob("*.openai.sse"))
MODEL = "claude-sonnet-4-6"
MESSAGE_ID = "msg_01TestStream"

Event = tuple[str, dict[str, Any]]


# -- running the converter ----------------------------------------------------------------


def convert(data: bytes, cuts: list[int] | None = None, **kwargs: Any) -> bytes:
    """Feed upstream bytes split at `cuts` (offsets), then finish; returns all output."""
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID, **kwargs)
    out = []
    start = 0
    for cut in [*sorted(set(cuts or [])), len(data)]:
        out.append(conv.feed(data[start:cut]))
        start = cut
    out.append(conv.finish())
    assert conv.done
    return b"".join(out)


def every(size: int, data: bytes) -> list[int]:
    return list(range(size, len(data), size))


def parse_output(data: bytes) -> list[Event]:
    """Anthropic SSE bytes back into (name, data) pairs, checking the wire shape on the way."""
    parser = SSEParser()
    events = parser.feed(data) + parser.close()
    assert data == b"" or data.endswith(b"\n\n")
    result: list[Event] = []
    for event in events:
        assert event.event is not None
        payload = orjson.loads(event.data)
        assert payload["type"] == event.event, "data.type must equal the event name"
        block = payload.get("content_block")
        if isinstance(block, dict) and block.get("type") == "tool_use":
            # The client sees `toolu_<salt>_<upstream id>`; fixtures name the upstream id.
            assert re.fullmatch(r"toolu_[0-9a-f]{12}_[A-Za-z0-9_-]+", block["id"])
            block["id"] = upstream_tool_id(block["id"])
        result.append((event.event, payload))
    return result


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


# -- comparison rules of tests/fixtures/README.md ------------------------------------------


def normalise(events: list[tuple[str, dict[str, Any], list[str]]]) -> list[Any]:
    """Drop optional events and join each block's deltas (rules 1, 3 and 4)."""
    result: list[Any] = []
    for name, data, loose in events:
        if name == "ping":
            continue
        if name == "content_block_delta":
            delta = data["delta"]
            kind = delta["type"]
            if kind == "signature_delta":
                continue
            field = anthropic_events.DELTA_FIELDS[kind]
            previous = result[-1] if result else None
            if (
                previous is not None
                and previous[0] == name
                and previous[1]["index"] == data["index"]
                and previous[1]["delta"]["type"] == kind
            ):
                previous[1]["delta"][field] += delta[field]
                continue
            data = {**data, "delta": dict(delta)}
        result.append([name, data, loose])
    for name, data, _ in result:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            joined = data["delta"].pop("partial_json")
            data["delta"]["input"] = orjson.loads(joined or "{}")
    return result


LOOSE_CHECKS = {
    "message.id": lambda v: isinstance(v, str) and re.fullmatch(r"msg_[A-Za-z0-9_]+", v),
    "message.model": lambda v: isinstance(v, str) and v != "",
    "message.usage": lambda v: all(
        isinstance(v.get(k), int) and v[k] >= 0 for k in ("input_tokens", "output_tokens")
    ),
    "usage": lambda v: isinstance(v.get("output_tokens"), int) and v["output_tokens"] > 0,
    "error.message": lambda v: isinstance(v, str) and v != "",
}


def pop_path(data: dict[str, Any], dotted: str) -> Any:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    return data.pop(last)


def assert_matches_fixture(actual: list[Event], expected: list[dict[str, Any]]) -> None:
    got = normalise([(name, data, []) for name, data in actual])
    want = normalise([(e["event"], e["data"], e.get("loose", [])) for e in expected])
    assert [g[0] for g in got] == [w[0] for w in want]
    for (name, got_data, _), (_, want_data, loose) in zip(got, want, strict=True):
        for path in loose:
            value = pop_path(got_data, path)
            pop_path(want_data, path)
            assert LOOSE_CHECKS[path](value), f"{name}: {path} = {value!r}"
        assert got_data == want_data, name


def load_case(stem: str) -> tuple[bytes, list[dict[str, Any]]]:
    upstream = (FIXTURES / f"{stem}.openai.sse").read_bytes()
    lines = (FIXTURES / f"{stem}.anthropic.jsonl").read_text().splitlines()
    return upstream, [orjson.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("size", [0, 1, 7, 64], ids=lambda s: f"split{s}" if s else "whole")
@pytest.mark.parametrize("stem", STREAM_CASES)
def test_fixture_transcript(stem: str, size: int) -> None:
    upstream, expected = load_case(stem)
    output = convert(upstream, every(size, upstream) if size else None)
    assert_matches_fixture(parse_output(output), expected)


def test_every_stream_fixture_is_covered() -> None:
    assert len(STREAM_CASES) >= 11
    for stem in STREAM_CASES:
        assert (FIXTURES / f"{stem}.anthropic.jsonl").exists()


def test_comparison_helper_catches_differences() -> None:
    upstream, expected = load_case("parallel_tools_interleaved")
    actual = parse_output(convert(upstream))
    swapped = [list(e) for e in actual]
    for _, data in swapped:
        if data.get("content_block", {}).get("type") == "tool_use":
            data["content_block"]["id"] = "call_other"
    with pytest.raises(AssertionError):
        assert_matches_fixture([(n, d) for n, d in swapped], expected)
    with pytest.raises(AssertionError):
        assert_matches_fixture(actual[:-1], expected)


@settings(max_examples=150, deadline=None)
@given(
    stem=st.sampled_from(STREAM_CASES),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=30),
)
def test_rechunking_never_changes_the_events(stem: str, cuts: list[int]) -> None:
    upstream, _ = load_case(stem)
    whole = normalise([(n, d, []) for n, d in parse_output(convert(upstream))])
    split = convert(upstream, [c for c in cuts if c < len(upstream)])
    assert normalise([(n, d, []) for n, d in parse_output(split)]) == whole


# -- building upstream chunks -------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        "usage": usage,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage_chunk(**usage: Any) -> bytes:
    body = {"id": "chatcmpl-1", "choices": [], "usage": usage}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def tool(index: int, args: str, tool_id: str = "", name: str = "") -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if tool_id:
        fragment["id"] = tool_id
        fragment["type"] = "function"
    if name:
        fragment["function"]["name"] = name
    return fragment


ROLE = chunk({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"
USAGE = usage_chunk(prompt_tokens=100, completion_tokens=20, total_tokens=120)


def run(*parts: bytes, **kwargs: Any) -> list[Event]:
    return parse_output(convert(b"".join(parts), **kwargs))


def blocks(events: list[Event]) -> list[tuple[int, str]]:
    return [
        (data["index"], data["content_block"]["type"])
        for name, data in events
        if name == "content_block_start"
    ]


def joined_input(events: list[Event], index: int) -> Any:
    pieces = [
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["index"] == index
    ]
    return orjson.loads("".join(pieces))


def message_delta(events: list[Event]) -> dict[str, Any]:
    (data,) = [data for name, data in events if name == "message_delta"]
    return data


# -- start of the stream --------------------------------------------------------------------


def test_nothing_is_sent_before_the_first_chunk_is_parsed() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    assert conv.feed(b": keep-alive\n\n") == b""
    assert conv.feed(ROLE[:20]) == b""
    assert not conv.started
    out = parse_output(conv.feed(ROLE[20:]))
    assert names(out) == ["message_start", "ping"]
    assert conv.started


def test_message_start_echoes_model_id_and_input_estimate() -> None:
    events = run(ROLE, chunk({"content": "hi"}, "stop"), USAGE, DONE, input_tokens=1234)
    message = events[0][1]["message"]
    assert message["id"] == MESSAGE_ID
    assert message["model"] == MODEL
    assert message["usage"] == {"input_tokens": 1234, "output_tokens": 0}
    assert message["content"] == [] and message["stop_reason"] is None


def test_role_only_and_empty_content_open_no_block() -> None:
    events = run(
        ROLE,
        chunk({"content": None}),
        chunk({"content": ""}),
        chunk({"reasoning_content": ""}),
        chunk({"tool_calls": []}),
        chunk({}, "stop"),
        USAGE,
        DONE,
    )
    assert names(events) == ["message_start", "ping", "message_delta", "message_stop"]


# -- blocks ---------------------------------------------------------------------------------


def test_thinking_block_closes_when_text_starts() -> None:
    events = run(
        ROLE,
        chunk({"reasoning_content": "think"}),
        chunk({"content": "answer", "reasoning_content": None}),
        chunk({}, "stop"),
        USAGE,
        DONE,
    )
    assert blocks(events) == [(0, "thinking"), (1, "text")]
    assert names(events)[2:8] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]


def test_reasoning_and_content_in_one_delta_put_thinking_first() -> None:
    events = run(chunk({"reasoning_content": "r", "content": "t"}, "stop"), USAGE)
    assert blocks(events) == [(0, "thinking"), (1, "text")]


def test_reasoning_field_alias_is_thinking() -> None:
    events = run(chunk({"reasoning": "r"}), chunk({"content": "t"}, "stop"), USAGE)
    assert blocks(events) == [(0, "thinking"), (1, "text")]


def test_content_as_list_of_parts_is_text() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    events = run(chunk({"content": parts}, "stop"), USAGE)
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert texts == ["ab"]


def test_parallel_tool_calls_get_distinct_indexes() -> None:
    events = run(
        ROLE,
        chunk({"content": "Reading."}),
        chunk({"tool_calls": [tool(0, "", "call_a", "Read")]}),
        chunk({"tool_calls": [tool(1, "", "call_b", "Read")]}),
        chunk({"tool_calls": [tool(0, '{"path": "a"}')]}),
        chunk({"tool_calls": [tool(1, '{"path": "b"}')]}),
        chunk({}, "tool_calls"),
        USAGE,
        DONE,
    )
    assert blocks(events) == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [(b.get("id"), b.get("name")) for b in starts[1:]] == [
        ("call_a", "Read"),
        ("call_b", "Read"),
    ]
    assert joined_input(events, 1) == {"path": "a"}
    assert joined_input(events, 2) == {"path": "b"}
    assert message_delta(events)["delta"]["stop_reason"] == "tool_use"


def test_only_one_block_is_open_at_a_time() -> None:
    upstream, _ = load_case("parallel_tools_interleaved")
    open_index = None
    for name, data in run(upstream):
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None


def test_held_back_fragments_are_sent_when_their_block_opens() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(chunk({"tool_calls": [tool(0, "", "call_a", "Read")]}))
    out = parse_output(conv.feed(chunk({"tool_calls": [tool(1, '{"x": 1}', "call_b", "Edit")]})))
    assert out == [], "call 1's fragment must wait while call 0's block is open"
    out = parse_output(conv.feed(chunk({"tool_calls": [tool(0, "{}")]})))
    assert [d["delta"]["partial_json"] for _, d in out] == ["{}"], "open call streams through"
    out = parse_output(conv.feed(chunk({}, "tool_calls")))
    assert names(out) == [
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    assert out[2][1]["delta"]["partial_json"] == '{"x": 1}'


def test_repeated_index_with_empty_id_continues_the_same_call() -> None:
    events = run(
        chunk({"tool_calls": [tool(0, "", "call_a", "Read")]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "", "type": "function", "function": {"arguments": '{"a":'}}
                ]
            }
        ),
        chunk(
            {"tool_calls": [{"index": 0, "id": "", "function": {"name": "", "arguments": "1}"}}]}
        ),
        chunk({}, "tool_calls"),
        USAGE,
    )
    assert blocks(events) == [(0, "tool_use")]
    assert joined_input(events, 0) == {"a": 1}


def test_same_index_with_new_id_starts_a_new_call() -> None:
    # Some upstreams number every parallel call 0 and tell them apart only by id.
    events = run(
        chunk({"tool_calls": [tool(0, '{"a": 1}', "call_a", "Read")]}),
        chunk({"tool_calls": [tool(0, '{"b": 2}', "call_b", "Read")]}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    assert blocks(events) == [(0, "tool_use"), (1, "tool_use")]
    assert joined_input(events, 0) == {"a": 1}
    assert joined_input(events, 1) == {"b": 2}


def test_several_calls_in_one_delta_each_get_a_block() -> None:
    both = [tool(0, '{"a": 1}', "call_a", "Read"), tool(1, '{"b": 2}', "call_b", "Grep")]
    events = run(chunk({"tool_calls": both}, "tool_calls"), USAGE)
    assert blocks(events) == [(0, "tool_use"), (1, "tool_use")]
    assert joined_input(events, 1) == {"b": 2}


def test_tool_call_without_id_gets_a_generated_unique_id() -> None:
    events = run(
        chunk({"tool_calls": [{"index": 0, "function": {"name": "A", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"name": "B", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    ids = [d["content_block"]["id"] for n, d in events if n == "content_block_start"]
    assert len(set(ids)) == 2 and all(ids)


def test_tool_block_waits_for_a_name_that_comes_late() -> None:
    events = run(
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "Read", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    start = events[2][1]["content_block"]
    assert (start["id"], start["name"]) == ("call_a", "Read")


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    events = run(
        chunk({"tool_calls": [{"id": "call_a", "function": {"name": "A", "arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"id": "call_b", "function": {"name": "B", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    starts = [d["content_block"]["id"] for n, d in events if n == "content_block_start"]
    assert starts == ["call_a", "call_b"]
    assert joined_input(events, 0) == {"a": 1}


def test_empty_data_event_is_skipped() -> None:
    events = run(chunk({"content": "x"}), b"data: \n\n", chunk({}, "stop"), USAGE)
    assert names(events)[-2:] == ["message_delta", "message_stop"]


def test_non_object_chunk_is_an_api_error() -> None:
    events = run(chunk({"content": "x"}), b"data: [1, 2]\n\n")
    assert events[-1][1]["error"]["type"] == "api_error"


def test_empty_tool_arguments_become_empty_object() -> None:
    events = run(
        chunk({"tool_calls": [tool(0, "", "call_a", "TodoRead")]}), chunk({}, "tool_calls")
    )
    deltas = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert deltas == ["{}"]


def test_arguments_sent_as_object_are_serialised() -> None:
    fragment = {"index": 0, "id": "call_a", "function": {"name": "A", "arguments": {"k": "v"}}}
    events = run(chunk({"tool_calls": [fragment]}, "tool_calls"), USAGE)
    assert joined_input(events, 0) == {"k": "v"}


def test_legacy_function_call_becomes_tool_use() -> None:
    events = run(
        chunk({"function_call": {"name": "Read", "arguments": '{"p":'}}),
        chunk({"function_call": {"arguments": "1}"}}),
        chunk({}, "function_call"),
        USAGE,
    )
    assert blocks(events) == [(0, "tool_use")]
    start = events[2][1]["content_block"]
    assert start["name"] == "Read" and start["id"].startswith("call_")
    assert joined_input(events, 0) == {"p": 1}
    assert message_delta(events)["delta"]["stop_reason"] == "tool_use"


def test_text_after_tool_call_closes_the_tool_block() -> None:
    events = run(
        chunk({"tool_calls": [tool(0, "{}", "call_a", "A")]}),
        chunk({"content": "done"}),
        chunk({}, "tool_calls"),
        USAGE,
    )
    assert blocks(events) == [(0, "tool_use"), (1, "text")]


def test_content_in_the_finish_chunk_is_sent_before_the_block_closes() -> None:
    events = run(chunk({"content": "a"}), chunk({"content": "b"}, "stop"), USAGE)
    assert names(events)[2:6] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
    ]


def test_content_after_finish_is_ignored() -> None:
    events = run(chunk({"content": "a"}, "stop"), chunk({"content": "late"}), USAGE)
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert texts == ["a"]


# -- stop reasons ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("sensitive", "refusal"),
        ("eos", "end_turn"),
    ],
)
def test_finish_reason_mapping(finish: str, stop_reason: str) -> None:
    events = run(chunk({"content": "x"}, finish), USAGE)
    assert message_delta(events)["delta"] == {"stop_reason": stop_reason, "stop_sequence": None}


@pytest.mark.parametrize(("finish", "error_type"), [
    ("insufficient_system_resource", "overloaded_error"),  # DeepSeek: cut off, not complete
    ("something_new", "api_error"),
])
def test_incomplete_or_unknown_finish_reason_ends_in_an_error(finish: str,
                                                              error_type: str) -> None:
    events = run(chunk({"content": "x"}, finish), USAGE)
    assert "message_stop" not in names(events)
    error = events[-1][1]["error"]
    assert events[-1][0] == "error" and error["type"] == error_type and finish in error["message"]


def test_kimi_usage_in_the_choice_with_cached_tokens() -> None:
    # Moonshot: stream usage in choices[0].usage, cache hits in usage.cached_tokens
    usage = {"prompt_tokens": 23, "completion_tokens": 5, "total_tokens": 28, "cached_tokens": 16}
    events = run(b"data: " + orjson.dumps({"id": "c", "choices": [
        {"index": 0, "delta": {"content": "x"}, "finish_reason": "stop", "usage": usage}]})
        + b"\n\n")
    assert message_delta(events)["usage"] == {
        "input_tokens": 7, "output_tokens": 5, "cache_read_input_tokens": 16}


def test_repeated_upstream_tool_ids_are_unique_per_answer() -> None:
    ids = []
    for message_id in ("msg_one", "msg_two"):
        conv = OpenAIStreamConverter("m", message_id)
        out = conv.feed(chunk({"tool_calls": [
            {"index": 0, "id": "functions.Read:0", "type": "function",
             "function": {"name": "Read", "arguments": "{}"}}]}, "tool_calls"))
        out += conv.finish()
        (start,) = [d for n, d in parse_raw(out) if n == "content_block_start"]
        ids.append(start["content_block"]["id"])
    assert ids[0] != ids[1]
    assert {upstream_tool_id(i) for i in ids} == {"functions.Read:0"}


def parse_raw(data: bytes) -> list[Event]:
    parser = SSEParser()
    return [(e.event or "", orjson.loads(e.data)) for e in parser.feed(data) + parser.close()]


def test_tool_calls_with_finish_stop_report_tool_use() -> None:
    events = run(chunk({"tool_calls": [tool(0, "{}", "call_a", "A")]}), chunk({}, "stop"), USAGE)
    assert message_delta(events)["delta"]["stop_reason"] == "tool_use"


def test_finish_tool_calls_without_any_call_reports_end_turn() -> None:
    events = run(chunk({"content": "x"}, "tool_calls"), USAGE)
    assert message_delta(events)["delta"]["stop_reason"] == "end_turn"


def test_stop_sequence_stays_null_because_upstream_does_not_say_which_matched() -> None:
    events = run(chunk({"content": "x"}, "stop"), USAGE)
    assert message_delta(events)["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


# -- usage ----------------------------------------------------------------------------------


def test_usage_subtracts_cached_tokens_from_input() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID, input_tokens=5)
    out = conv.feed(chunk({"content": "x"}, "stop"))
    out += conv.feed(
        usage_chunk(
            prompt_tokens=4096,
            completion_tokens=30,
            prompt_tokens_details={"cached_tokens": 3840},
            completion_tokens_details={"reasoning_tokens": 12},
        )
    )
    assert message_delta(parse_output(out))["usage"] == {
        "input_tokens": 256,
        "output_tokens": 30,
        "cache_read_input_tokens": 3840,
    }
    assert conv.done
    usage = conv.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (
        256,
        30,
        3840,
    )
    assert usage.thinking_tokens == 12
    assert not usage.estimated


def test_deepseek_cache_hit_tokens_count_as_cached_without_details() -> None:
    events = run(
        chunk({"content": "x"}, "stop"),
        usage_chunk(prompt_tokens=500, completion_tokens=3, prompt_cache_hit_tokens=448),
    )
    assert message_delta(events)["usage"] == {
        "input_tokens": 52,
        "output_tokens": 3,
        "cache_read_input_tokens": 448,
    }


def test_cache_read_is_absent_when_not_reported() -> None:
    events = run(chunk({"content": "x"}, "stop"), USAGE)
    assert message_delta(events)["usage"] == {"input_tokens": 100, "output_tokens": 20}


def test_message_delta_waits_for_usage_after_finish() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    out = parse_output(conv.feed(chunk({"content": "x"}) + chunk({}, "stop")))
    assert names(out)[-1] == "content_block_stop"
    assert not conv.done
    out = parse_output(conv.feed(USAGE))
    assert names(out) == ["message_delta", "message_stop"]
    assert conv.done
    assert conv.feed(DONE) == b""
    assert conv.finish() == b""


def test_usage_in_the_finish_chunk_ends_the_message_at_once() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    out = parse_output(conv.feed(chunk({"content": "x"}, "stop", usage={"completion_tokens": 1})))
    assert names(out)[-2:] == ["message_delta", "message_stop"]
    assert conv.done


def test_usage_before_finish_is_kept_but_does_not_end_the_message() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    early = {"prompt_tokens": 10, "completion_tokens": 1}
    conv.feed(chunk({"content": "x"}, usage=early))
    assert not conv.done
    out = parse_output(conv.feed(chunk({}, "stop") + DONE))
    assert message_delta(out)["usage"] == {"input_tokens": 10, "output_tokens": 1}


def test_missing_usage_is_estimated_and_flagged() -> None:
    text = "x" * 41
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID, input_tokens=77)
    out = parse_output(conv.feed(chunk({"content": text}, "stop") + DONE))
    assert message_delta(out)["usage"] == {"output_tokens": 11}
    assert conv.usage.estimated
    assert (conv.usage.input_tokens, conv.usage.output_tokens) == (77, 11)


def test_estimate_is_at_least_one_token() -> None:
    events = run(chunk({"content": "x"}), chunk({}, "stop"), DONE)
    assert message_delta(events)["usage"]["output_tokens"] == 1


def test_usage_so_far_is_estimated_mid_stream() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID, input_tokens=9)
    conv.feed(chunk({"content": "y" * 8}))
    assert conv.usage.estimated
    assert (conv.usage.input_tokens, conv.usage.output_tokens) == (9, 2)


# -- endings and failures -------------------------------------------------------------------


def test_eof_before_finish_reason_closes_block_and_sends_api_error() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(ROLE + chunk({"content": "partial"}))
    out = parse_output(conv.finish())
    assert names(out) == ["content_block_stop", "error"]
    assert out[1][1]["error"]["type"] == "api_error"
    assert conv.error is not None and conv.error[0] == "api_error"
    assert conv.done


def test_eof_after_finish_without_done_is_a_normal_end() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(chunk({"content": "x"}, "stop"))
    assert names(parse_output(conv.finish())) == ["message_delta", "message_stop"]
    assert conv.error is None


def test_final_event_without_blank_line_is_used_at_eof() -> None:
    events = run(chunk({"content": "x"}, "stop"), USAGE.rstrip(b"\n"))
    assert message_delta(events)["usage"] == {"input_tokens": 100, "output_tokens": 20}


def test_done_without_finish_reason_is_an_error() -> None:
    events = run(chunk({"content": "x"}), DONE)
    assert names(events)[-2:] == ["content_block_stop", "error"]


def test_upstream_error_payload_becomes_error_event() -> None:
    error = b'data: {"error": {"message": "internal failure", "type": "server_error"}}\n\n'
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    out = parse_output(conv.feed(chunk({"content": "x"}) + error + chunk({"content": "more"})))
    assert names(out)[-2:] == ["content_block_stop", "error"]
    assert out[-1][1]["error"] == {
        "type": "api_error",
        "message": "upstream error: internal failure",
    }
    assert conv.error == ("api_error", "upstream error: internal failure")
    assert conv.feed(chunk({"content": "after"})) == b""
    assert conv.finish() == b""


@pytest.mark.parametrize(
    "error",
    [
        {"message": "Rate limit reached for requests", "type": "requests"},
        {"message": "The engine is currently overloaded", "type": "server_error"},
        {"message": "slow down", "code": 429},
        {"message": "Too many requests", "code": "limit_requests"},
    ],
)
def test_upstream_overload_error_maps_to_overloaded_error(error: dict[str, Any]) -> None:
    events = run(chunk({"content": "x"}), b"data: " + orjson.dumps({"error": error}) + b"\n\n")
    assert events[-1][1]["error"]["type"] == "overloaded_error"


def test_error_after_finish_still_ends_the_message_normally() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(chunk({"content": "x"}, "stop"))
    out = parse_output(conv.feed(b'data: {"error": {"message": "usage lost"}}\n\n'))
    assert names(out) == ["message_delta", "message_stop"]
    assert conv.error is None


def test_null_error_field_is_not_an_error() -> None:
    body = orjson.loads(chunk({"content": "x"}, "stop")[6:])
    body["error"] = None
    events = run(b"data: " + orjson.dumps(body) + b"\n\n", USAGE)
    assert names(events)[-2:] == ["message_delta", "message_stop"]


def test_error_event_name_from_upstream_is_an_error() -> None:
    events = run(chunk({"content": "x"}), b'event: error\ndata: {"message": "boom"}\n\n')
    assert events[-1][0] == "error"


def test_error_before_first_chunk_sends_only_the_error() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    out = parse_output(conv.feed(b'data: {"error": {"message": "bad key"}}\n\n'))
    assert names(out) == ["error"]
    assert not conv.started and conv.error is not None


def test_invalid_json_chunk_becomes_api_error() -> None:
    events = run(chunk({"content": "x"}), b'data: {"choices": [\n\n')
    assert names(events)[-2:] == ["content_block_stop", "error"]
    assert events[-1][1]["error"]["type"] == "api_error"


def test_malformed_chunk_shape_becomes_api_error() -> None:
    events = run(chunk({"content": "x"}), b'data: {"choices": [1, 2]}\n\n')
    assert events[-1][1]["error"]["type"] == "api_error"


def test_abort_closes_open_block_once() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(chunk({"content": "x"}))
    out = parse_output(conv.abort("api_error", "upstream idle for 300 s"))
    assert names(out) == ["content_block_stop", "error"]
    assert out[1][1]["error"] == {"type": "api_error", "message": "upstream idle for 300 s"}
    assert conv.abort("api_error", "again") == b""
    assert conv.finish() == b""
    assert conv.feed(chunk({}, "stop")) == b""
    assert conv.error == ("api_error", "upstream idle for 300 s")


def test_abort_of_open_tool_block_still_closes_it_with_valid_json() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(chunk({"tool_calls": [tool(0, "", "call_a", "A")]}))
    out = parse_output(conv.abort("overloaded_error", "socket reset"))
    assert names(out) == ["content_block_delta", "content_block_stop", "error"]


def test_abort_after_finish_ends_message_normally() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    conv.feed(chunk({"content": "x"}, "stop"))
    out = parse_output(conv.abort("api_error", "idle"))
    assert names(out) == ["message_delta", "message_stop"]
    assert conv.error is None and conv.usage.estimated


def test_abort_before_start_sends_only_the_error() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    assert names(parse_output(conv.abort("api_error", "timeout"))) == ["error"]
    assert not conv.started and conv.done


def test_empty_upstream_is_an_error() -> None:
    conv = OpenAIStreamConverter(MODEL, MESSAGE_ID)
    assert names(parse_output(conv.finish())) == ["error"]
    assert conv.error == ("api_error", "upstream stream ended before a finish_reason")


# -- bytes ----------------------------------------------------------------------------------


def test_utf8_split_across_reads() -> None:
    data = ROLE + chunk({"content": "17 × 23 — 😀"}, "stop") + USAGE + DONE
    cut = data.index("😀".encode()) + 1
    events = parse_output(convert(data, [cut, cut + 1, cut + 2]))
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert texts == ["17 × 23 — 😀"]


def test_output_bytes_do_not_depend_on_read_boundaries() -> None:
    upstream, _ = load_case("reasoning_then_text")
    assert convert(upstream, every(3, upstream)) == convert(upstream)


def test_fast_delta_encoding_matches_generic_encoding() -> None:
    for kind, field in anthropic_events.DELTA_FIELDS.items():
        value = 'quote " backslash \\ newline \n ü 😀 \x00'
        generic = anthropic_events.encode_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 12, "delta": {"type": kind, field: value}},
        )
        assert anthropic_events.content_block_delta(12, kind, value) == generic


def test_error_event_encoding() -> None:
    assert anthropic_events.error_event("overloaded_error", "busy") == (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    )
