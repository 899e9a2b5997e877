"""Prompt-cache normalisation: volatile dates and times move to the end of the system prompt."""

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


def split_note(system: str) -> tuple[str, str]:
    prefix, _, note = system.partition(NOTE_HEADER)
    return prefix, note


def test_prefix_is_identical_on_different_days() -> None:
    monday = normalize_volatile_system(body(claude_code_system("2026-11-24")))["system"]
    tuesday = normalize_volatile_system(body(claude_code_system("2026-11-25")))["system"]
    assert monday != tuesday
    prefix_monday, note_monday = split_note(monday)
    prefix_tuesday, note_tuesday = split_note(tuesday)
    assert prefix_monday == prefix_tuesday
    assert "2026-11" not in prefix_monday
    assert note_monday.strip() == "Today's date: 2026-11-24"
    assert note_tuesday.strip() == "Today's date: 2026-11-25"


def test_date_is_replaced_in_place_by_a_pointer_and_noted_at_the_end() -> None:
    system = normalize_volatile_system(body(claude_code_system("2026-11-25")))["system"]
    assert f"Today's date: {POINTER}\n</env>" in system
    assert system.endswith(f"\n\n{NOTE_HEADER}\nToday's date: 2026-11-25")


def test_input_is_not_modified() -> None:
    original = body([{"type": "text", "text": claude_code_system("2026-11-25"),
                      "cache_control": {"type": "ephemeral"}}])
    before = copy.deepcopy(original)
    out = normalize_volatile_system(original)
    assert original == before
    assert out is not original
    assert out["messages"] is original["messages"]  # shallow: untouched parts are shared


def test_system_blocks_keep_cache_control_and_get_a_separate_note_block() -> None:
    out = normalize_volatile_system(body([
        {"type": "text", "text": INTRO, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": claude_code_system("2026-11-25"),
         "cache_control": {"type": "ephemeral"}},
    ]))
    blocks = out["system"]
    assert len(blocks) == 3
    assert blocks[0] == {"type": "text", "text": INTRO, "cache_control": {"type": "ephemeral"}}
    assert blocks[1]["cache_control"] == {"type": "ephemeral"}
    assert "2026-11-25" not in blocks[1]["text"]
    assert blocks[2] == {"type": "text", "text": f"{NOTE_HEADER}\nToday's date: 2026-11-25"}


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
    system = normalize_volatile_system(body(f"Rules.\n{line}\nMore rules."))["system"]
    prefix, note = split_note(system)
    assert note.strip() == line
    assert not any(ch.isdigit() for ch in prefix)


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


def test_requests_without_system_prompt_pass_through() -> None:
    original = {"model": "m", "max_tokens": 5, "messages": []}
    assert normalize_volatile_system(original) == original
