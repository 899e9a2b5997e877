"""SSEParser: event-stream parsing that must not depend on how the bytes were split."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.sse import SSEEvent, SSEEventTooLarge, SSEParser

FIXTURES = Path(__file__).parent.parent / "fixtures"
SSE_FIXTURES = sorted(FIXTURES.glob("*.openai.sse"))


def parse_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    """Feed `data` split at the given offsets, then close."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
    return events + parser.close()


def parse_every(data: bytes, size: int) -> list[SSEEvent]:
    return parse_in_pieces(data, list(range(size, len(data), size)))


def reference_parse(data: bytes) -> list[SSEEvent]:
    """The WHATWG algorithm, line by line, plus the final event without blank line at EOF."""
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    events: list[SSEEvent] = []
    name: str | None = None
    lines: list[str] | None = None
    for line in [*re.split(r"\r\n|\r|\n", text), ""]:
        if line == "":
            if lines is not None:
                events.append(SSEEvent(name, "\n".join(lines)))
            name, lines = None, None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            lines = [*(lines or []), value]
        elif field == "event":
            name = value or None
    return events


def test_single_data_event() -> None:
    assert SSEParser().feed(b'data: {"a":1}\n\n') == [SSEEvent(None, '{"a":1}')]


def test_partial_event_is_buffered_until_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: hel") == []
    assert parser.feed(b"lo\n") == []
    assert parser.feed(b"\n") == [SSEEvent(None, "hello")]


def test_multiple_data_lines_are_joined_with_newline() -> None:
    assert SSEParser().feed(b"data: a\ndata: b\ndata:\n\n") == [SSEEvent(None, "a\nb\n")]


def test_data_without_space_after_colon() -> None:
    assert SSEParser().feed(b"data:[DONE]\n\n") == [SSEEvent(None, "[DONE]")]


def test_only_one_space_after_colon_is_stripped() -> None:
    assert SSEParser().feed(b"data:  x\n\n") == [SSEEvent(None, " x")]


def test_event_name_is_reported() -> None:
    events = SSEParser().feed(b'event: ping\ndata: {"type":"ping"}\n\n')
    assert events == [SSEEvent("ping", '{"type":"ping"}')]


def test_comment_lines_are_skipped() -> None:
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\n: another\n\n") == []
    assert parser.feed(b": inside\ndata: x\n: more\n\n") == [SSEEvent(None, "x")]


def test_unknown_fields_are_ignored() -> None:
    data = b"id: 7\nretry: 1000\nfoo: bar\ndata: x\n\n"
    assert SSEParser().feed(data) == [SSEEvent(None, "x")]


def test_event_without_data_is_not_dispatched() -> None:
    assert SSEParser().feed(b"event: ping\n\nid: 3\n\n") == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_all_line_endings(newline: bytes) -> None:
    data = b"event: e\ndata: a\ndata: b\n\ndata: c\n\n".replace(b"\n", newline)
    assert SSEParser().feed(data) == [SSEEvent("e", "a\nb"), SSEEvent(None, "c")]


def test_crlf_split_between_cr_and_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # This LF completes the CRLF: counted as a second line break, it would end the event.
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: b\r\n\r") == [SSEEvent(None, "a\nb")]
    assert parser.feed(b"\ndata: c\r\n\r\n") == [SSEEvent(None, "c")]


def test_cr_then_cr_is_two_line_breaks() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [SSEEvent(None, "a")]


def test_utf8_split_across_reads() -> None:
    data = 'data: {"text":"17 × 23 — ok 😀"}\n\n'.encode()
    split_inside_char = data.index("😀".encode()) + 2
    parser = SSEParser()
    assert parser.feed(data[:split_inside_char]) == []
    assert parser.feed(data[split_inside_char:]) == [SSEEvent(None, '{"text":"17 × 23 — ok 😀"}')]


def test_close_flushes_final_event_without_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\n\ndata: two\n") == [SSEEvent(None, "one")]
    assert parser.close() == [SSEEvent(None, "two")]
    assert parser.close() == []


def test_close_flushes_event_without_any_newline() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.close() == [SSEEvent(None, "[DONE]")]


def test_leading_byte_order_mark_is_dropped() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: x\n\n") == [SSEEvent(None, "x")]


def test_invalid_utf8_does_not_raise() -> None:
    assert SSEParser().feed(b"data: \xff\xfe\n\n") == [SSEEvent(None, "\ufffd\ufffd")]


def test_only_events_drops_other_events() -> None:
    parser = SSEParser(only_events={"message_delta"})
    data = b"event: ping\ndata: {}\n\nevent: message_delta\ndata: {}\n\ndata: anonymous\n\n"
    assert parser.feed(data) == [SSEEvent("message_delta", "{}")]


def test_many_tiny_reads_of_a_large_event() -> None:
    payload = "x" * 200_000
    data = f"data: {payload}\n\n".encode()
    assert parse_every(data, 1000) == [SSEEvent(None, payload)]


@pytest.mark.parametrize("path", SSE_FIXTURES, ids=lambda p: p.name.split(".")[0])
@pytest.mark.parametrize("size", [1, 7, 64])
def test_fixture_split_matches_whole(path: Path, size: int) -> None:
    data = path.read_bytes()
    whole = parse_in_pieces(data, [])
    assert whole == reference_parse(data)
    assert parse_every(data, size) == whole


_sse_text = st.lists(
    st.one_of(
        st.sampled_from(
            ["data: ", "data:", "data", "event: ", "event:x", ": c", "id: 1", "retry: 5", "é", "😀"]
        ),
        st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n"]),
        st.text(
            alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
            max_size=8,
        ),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_sse_text, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_split_matches_reference_parser(text: str, cuts: list[int]) -> None:
    data = text.encode()
    expected = reference_parse(data)
    assert parse_in_pieces(data, [c for c in cuts if c <= len(data)]) == expected


def test_an_event_that_never_ends_is_cut_at_the_cap() -> None:
    """An upstream that never sends a blank line must not grow the buffer to its size."""
    parser = SSEParser(max_event_bytes=1000)
    parser.feed(b"data: " + b"x" * 500 + b"\n")
    with pytest.raises(SSEEventTooLarge):
        for _ in range(10):
            parser.feed(b"data: " + b"x" * 200 + b"\n")
    # an event exactly as large as the cap still passes
    ok = SSEParser(max_event_bytes=1000)
    assert ok.feed(b"data: " + b"y" * 990 + b"\n\n") == [SSEEvent(None, "y" * 990)]
