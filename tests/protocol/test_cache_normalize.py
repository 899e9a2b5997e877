"""Prompt-cache normalisation: volatile dates and times move from the system prompt into a
note at the start of the first user message."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.protocol.cache_normalize import NOTE_HEADER, POINTER, normalize_volatile_system

INTRO = "You are Claude Code, Anthropic's official CLI for Claude."


def claude_code_system(date: str) -> str:
    return (
        "You are an interactive CLI tool that helps users with software engineering tasks.\n"
        "<env>\nWorking directory: /home/dev/proj\nIs directory a git repo: Yes\n"
        f"Platform: linux\nToday's date: {date}\n</env>\n"
        "You are powered by the model named Sonnet 4.6.\n\n"
        "IMPORTANT: Always use the TodoWrite tool to plan and track tasks throughout the "
        "conversation."
    )


def body(system: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "system": system,
            "messages": [{"role": "user", "content": "hi"}]}


def note_of(out: dict[str, Any]) -> str:
    first = out["messages"][0]["content"][0]
    assert first["type"] == "text" and first["text"].startswith(NOTE_HEADER)
    return str(first["text"][len(NOTE_HEADER):])


def test_prefix_is_identical_on_different_days() -> None:
    monday = normalize_volatile_system(body(claude_code_system("2026-11-24")))
    tuesday = normalize_volatile_system(body(claude_code_system("2026-11-25")))
    assert monday["system"] == tuesday["system"]
    assert "2026-11" not in monday["system"]
    assert note_of(monday).strip() == "Today's date: 2026-11-24"
    assert note_of(tuesday).strip() == "Today's date: 2026-11-25"
    assert monday["messages"][0]["content"][1] == {"type": "text", "text": "hi"}


def test_date_is_replaced_in_place_by_a_pointer_and_noted_in_the_first_user_turn() -> None:
    out = normalize_volatile_system(body(claude_code_system("2026-11-25")))
    assert f"Today's date: {POINTER}\n</env>" in out["system"]
    assert out["messages"][0]["content"][0]["text"] == f"{NOTE_HEADER}\nToday's date: 2026-11-25"


def test_input_is_not_modified() -> None:
    original = body([{"type": "text", "text": claude_code_system("2026-11-25"),
                      "cache_control": {"type": "ephemeral"}}])
    before = copy.deepcopy(original)
    out = normalize_volatile_system(original)
    assert original == before
    assert out is not original
    assert out["messages"][0] is not original["messages"][0]


def test_system_blocks_keep_cache_control() -> None:
    out = normalize_volatile_system(body([
        {"type": "text", "text": INTRO, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": claude_code_system("2026-11-25"),
         "cache_control": {"type": "ephemeral"}},
    ]))
    blocks = out["system"]
    assert len(blocks) == 2
    assert blocks[0] == {"type": "text", "text": INTRO, "cache_control": {"type": "ephemeral"}}
    assert blocks[1]["cache_control"] == {"type": "ephemeral"}
    assert "2026-11-25" not in blocks[1]["text"]
    assert note_of(out).strip() == "Today's date: 2026-11-25"


def test_stable_prompt_is_left_alone() -> None:
    stable = claude_code_system("2026-11-25").replace("Today's date: 2026-11-25\n", "")
    assert normalize_volatile_system(body(stable))["system"] == stable
    blocks = [{"type": "text", "text": INTRO}]
    assert normalize_volatile_system(body(blocks))["system"] is blocks


@pytest.mark.parametrize("line", [
    "Today's date is 2026-11-25.",
    "Current date: 2026/11/25",
    "Today is Tuesday, November 25, 2026.",
    "As of 25 Nov 2026 the service is in beta.",
    "Current time: 9:30 PM UTC",
    "The time now is 21:30:05",
    "今天是2026年11月25日。",
    "Log written at 2026-11-25T21:30:05Z by the session hook.",  # timestamp: no keyword needed
    "Started 2026-11-25 21:30 in the background.",
])
def test_volatile_lines_are_moved(line: str) -> None:
    out = normalize_volatile_system(body(f"Rules.\n{line}\nMore rules."))
    assert note_of(out).strip() == line
    assert not any(ch.isdigit() for ch in out["system"])


@pytest.mark.parametrize("line", [
    "Version 2.1.4 was released 2024-05-01 with fixes.",  # a date in prose, no keyword
    "Set timeout: 10:00 for long builds.",  # "timeout" is not "time"
    "Ratios like 16:9 are fine.",
    "Knowledge cutoff: January 2025.",  # month and year only: not a day
])
def test_stable_dates_and_numbers_stay_in_place(line: str) -> None:
    text = f"Rules.\n{line}\nMore rules."
    assert normalize_volatile_system(body(text))["system"] == text


def test_normalising_twice_changes_nothing_more() -> None:
    once = normalize_volatile_system(body(claude_code_system("2026-11-25")))
    assert normalize_volatile_system(once) == once
    blocks_once = normalize_volatile_system(body([{"type": "text",
                                                   "text": claude_code_system("2026-11-25")}]))
    assert normalize_volatile_system(blocks_once) == blocks_once


def test_note_joins_a_block_list_user_message() -> None:
    request = body(claude_code_system("2026-11-25"))
    request["messages"] = [{"role": "user", "content": [{"type": "text", "text": "go"}]},
                           {"role": "assistant", "content": "ok"}]
    out = normalize_volatile_system(request)
    assert [b["text"][:7] for b in out["messages"][0]["content"]] == [NOTE_HEADER[:7], "go"]
    assert out["messages"][1] is request["messages"][1]


def test_without_a_user_message_nothing_is_moved() -> None:
    request = body(claude_code_system("2026-11-25"))
    request["messages"] = [{"role": "assistant", "content": "ok"}]
    assert normalize_volatile_system(request) == request


def test_requests_without_system_prompt_pass_through() -> None:
    original = {"model": "m", "max_tokens": 5, "messages": []}
    assert normalize_volatile_system(original) == original
