"""Keep the system prompt and tools byte-identical across days by moving dates and times out.

Upstreams with automatic prefix caching (DashScope, DeepSeek) bill cached prompt tokens at a
fraction of the price, but only up to the first byte that differs from an earlier request.
Claude Code writes volatile values near the top of a long, otherwise stable system prompt
("Today's date: 2026-11-25" in its environment block), so every new day, or a prompt carrying a
timestamp every minute, starts with a cache miss on everything after that line: the rest of
the system prompt and the ~10k tokens of tool definitions that chat templates render after it.

`normalize_volatile_system` replaces those values in place with a fixed pointer and puts the
original lines in a short note at the start of the first user message. System prompt and
tools then stay identical between sessions and days; within one conversation the first user
message is the same on every turn too, so the whole history stays cacheable.

Trade-off: the model reads the date in a note at the start of the conversation instead of
inline, behind a pointer. That is a small semantic risk (a model could ignore or misplace the
note), so this is a per-provider option, off by default, worth it only for upstreams with
prefix caching.

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
    "Current date and time details (moved here from the system prompt so that it stays "
    "identical between requests):"
)
POINTER = "[see the current date and time details at the start of the conversation]"

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
    """A copy of `body` whose system prompt's dates and times moved into a note that opens the
    first user message.

    The input is not modified; the copy is shallow (tools and untouched messages are shared).
    Applying this twice is harmless: the second time the system prompt has nothing to move.
    """
    out = dict(body)
    system = body.get("system")
    moved: list[str] = []
    if isinstance(system, str):
        text, moved = _move_volatile(system)
        if moved:
            out["system"] = text
    elif isinstance(system, list):
        blocks: list[Any] = []
        for block in system:
            block_text = block.get("text") if isinstance(block, dict) else None
            if isinstance(block_text, str):
                new_text, block_moved = _move_volatile(block_text)
                if block_moved:
                    block = {**block, "text": new_text}
                    moved.extend(block_moved)
            blocks.append(block)
        if moved:
            out["system"] = blocks
    if moved and not _add_note(out, moved):
        return dict(body)  # nowhere to put the note: better a cache miss than a lost date
    return out


def _add_note(out: dict[str, Any], lines: list[str]) -> bool:
    messages = out.get("messages")
    if not isinstance(messages, list):
        return False
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            note = {"type": "text", "text": NOTE_HEADER + "\n" + "\n".join(lines)}
            content = message.get("content")
            if isinstance(content, str):
                blocks = [note, {"type": "text", "text": content}]
            elif isinstance(content, list):
                blocks = [note, *content]
            else:
                return False
            out["messages"] = [*messages[:i], {**message, "content": blocks}, *messages[i + 1:]]
            return True
    return False


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
