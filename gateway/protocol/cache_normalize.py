"""Keep the system prompt's prefix byte-identical across days by moving dates and times to its end.

Upstreams with automatic prefix caching (DashScope, DeepSeek) bill cached prompt tokens at a
fraction of the price, but only up to the first byte that differs from an earlier request.
Claude Code writes volatile values near the top of a long, otherwise stable system prompt
("Today's date: 2026-11-25" in its environment block), so every new day, or a prompt carrying a
timestamp every minute, starts with a cache miss on everything after that line.

`normalize_volatile_system` replaces those values in place with a fixed pointer and appends the
original lines in a short note at the very end of the system prompt. The prefix before the note
stays identical; only the note changes.

Trade-off: the model reads the date at the end of the system prompt instead of inline, behind
a pointer. That is a small semantic risk (a model could ignore or misplace the note), so this
is a per-provider option, off by default, worth it only for upstreams with prefix caching.
Also note that chat templates which render tool definitions after the system text (Qwen's)
put the tools after the note, so there only the system text before the note is protected.

What is moved, line by line (a line is the unit, so the note keeps each value's context):
  * any ISO-8601 timestamp (`2026-11-25T09:30:00Z`, `2026-11-25 09:30`);
  * dates (`2026-11-25`, `2026/11/25`, `November 25, 2026`, `25 Nov 2026`, `2026年11月25日`)
    and clock times (`09:30`, `9:30 PM`) on a line that also says what they are: a word such as
    today, date, time, now, current, as of (or 今天/日期/时间). A date in prose such as a
    changelog entry is left alone.
Git status blocks also change between sessions but are not touched: they describe the working
tree, and moving them would change what the model reads them as.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["NOTE_HEADER", "POINTER", "normalize_volatile_system"]

NOTE_HEADER = (
    "Current date and time details (moved here from earlier in this prompt so that the rest "
    "of it stays identical between requests):"
)
POINTER = "[see the current date and time details at the end of this prompt]"

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_WEEKDAY = r"(?:(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs)?|Fri|Sat(?:ur)?|Sun)(?:day)?,?\s+)?"
_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
    r"(?:\s?(?:Z|UTC|GMT)|[+-]\d{2}:?\d{2})?(?!\d)"
)
_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b"
    r"|\b\d{4}/\d{1,2}/\d{1,2}\b"
    r"|\d{4}年\d{1,2}月\d{1,2}日"
    rf"|\b{_WEEKDAY}{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"
    rf"|\b{_WEEKDAY}\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b"
)
_TIME = re.compile(
    r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?[Mm]\.?)?(?:\s?(?:UTC|GMT|Z)|\s?[+-]\d{2}:?\d{2})?"
    r"(?![\d:])"
)
_KEYWORD = re.compile(r"\b(?:today|date|time|now|current|currently|as of)\b|今天|日期|时间", re.I)
# Cheap first look: most system prompts contain nothing date- or time-like at all.
_CANDIDATE = re.compile(
    rf"\d{{4}}[-/年]\d{{1,2}}|\d:\d\d|{_MONTH}\.?\s+\d{{1,2}}|\d\s+{_MONTH}\b"
)


def normalize_volatile_system(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of `body` whose system prompt has its dates and times moved into a trailing note.

    The input is not modified; the copy is shallow (messages, tools... are shared). A system
    prompt that already ends with the note is returned as it is, so applying this twice is
    harmless.
    """
    out = dict(body)
    system = body.get("system")
    if isinstance(system, str):
        if NOTE_HEADER in system:
            return out
        text, moved = _move_volatile(system)
        if moved:
            out["system"] = f"{text}\n\n{_note(moved)}"
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict) and str(block.get("text", "")).startswith(NOTE_HEADER):
                return out
        blocks: list[Any] = []
        all_moved: list[str] = []
        for block in system:
            block_text = block.get("text") if isinstance(block, dict) else None
            if isinstance(block_text, str):
                new_text, moved = _move_volatile(block_text)
                if moved:
                    block = {**block, "text": new_text}
                    all_moved.extend(moved)
            blocks.append(block)
        if all_moved:
            # A block of its own, without cache_control: it is the part that changes.
            blocks.append({"type": "text", "text": _note(all_moved)})
            out["system"] = blocks
    return out


def _note(lines: list[str]) -> str:
    return NOTE_HEADER + "\n" + "\n".join(lines)


def _move_volatile(text: str) -> tuple[str, list[str]]:
    """`text` with volatile values replaced by POINTER, and the original lines that had them."""
    if not _CANDIDATE.search(text):
        return text, []
    lines = text.split("\n")
    moved: list[str] = []
    for i, line in enumerate(lines):
        if not _CANDIDATE.search(line):
            continue
        new_line = _TIMESTAMP.sub(POINTER, line)
        if _KEYWORD.search(line):
            new_line = _TIME.sub(POINTER, _DATE.sub(POINTER, new_line))
        if new_line != line:
            moved.append(line.strip())
            lines[i] = new_line
    if not moved:
        return text, []
    return "\n".join(lines), moved
