"""Answer "remote control" typed to Claude Code with a Bash call that starts the bridge.

No upstream is called: the gateway creates a remote session and replies in the normal
Anthropic shape (JSON or SSE, whichever was asked) with a short text and, when the client
offers a `Bash` tool, a `tool_use` running `python -m gateway remote-bridge ...`. The API key
stays in the user's environment (`--key-env`); it never appears in the command.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.protocol import anthropic_events as events
from gateway.remote.sessions import RemoteSession

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_TRAILING = " \t\r\n.!?。！？…"
MAX_TRIGGER_CHARS = 200  # anything longer is a real prompt, not a trigger


def is_trigger(body: dict[str, Any], triggers: tuple[str, ...]) -> bool:
    """The last message is the user's and its text is one of the phrases (whole phrase,
    case-insensitive, trailing punctuation ignored; Claude Code's reminders ignored)."""
    messages = body.get("messages")
    if not triggers or not messages:
        return False
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return False
    content = last.get("content")
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return False
        texts = [b.get("text", "") for b in content
                 if isinstance(b, dict) and b.get("type") == "text"]
    else:
        return False
    for text in texts:
        if not isinstance(text, str) or len(text) > MAX_TRIGGER_CHARS * 20:
            continue
        phrase = _REMINDER.sub("", text).strip().strip(_TRAILING).lower()
        if phrase and len(phrase) <= MAX_TRIGGER_CHARS and phrase in triggers:
            return True
    return False


def bridge_command(public_url: str, session_id: str) -> str:
    return (f"python -m gateway remote-bridge --server {public_url} --session {session_id} "
            "--key-env ANTHROPIC_API_KEY")


def has_bash_tool(body: dict[str, Any]) -> bool:
    tools = body.get("tools") or ()
    return any(isinstance(t, dict) and t.get("name") == "Bash" for t in tools)


def reply_content(body: dict[str, Any], session: RemoteSession, public_url: str,
                  tool_id: str) -> list[dict[str, Any]]:
    """The blocks of the answer: a text, then the Bash call when the client can run it."""
    page = f"{public_url}/remote/{session.id}"
    command = bridge_command(public_url, session.id)
    if has_bash_tool(body):
        text = (f"Remote control is ready. I'll start the bridge now; then open {page} on "
                "your phone, signed in to your account, to see and type into this terminal. "
                f"The session expires in {_hours(session)}.")
        return [{"type": "text", "text": text},
                {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {
                    "command": command, "run_in_background": True,
                    "description": "Start the llmapi remote-control bridge"}}]
    text = (f"Remote control is ready. Run this in the terminal you want to control:\n\n"
            f"    {command}\n\nThen open {page} on your phone, signed in to your account. "
            f"The session expires in {_hours(session)}.")
    return [{"type": "text", "text": text}]


def _hours(session: RemoteSession) -> str:
    hours = (session.expires_at - session.created_at) / 3600
    return "1 hour" if hours == 1 else f"{hours:g} hours"


def message_json(model: str, message_id: str, content: list[dict[str, Any]]) -> bytes:
    stop = "tool_use" if content[-1]["type"] == "tool_use" else "end_turn"
    return orjson.dumps({
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}})


def message_sse(model: str, message_id: str, content: list[dict[str, Any]]) -> bytes:
    """The same answer as the full Anthropic event grammar."""
    out = [events.message_start(message_id, model, 0), events.PING]
    for index, block in enumerate(content):
        if block["type"] == "text":
            out += [events.text_block_start(index),
                    events.content_block_delta(index, "text_delta", block["text"])]
        else:
            out += [events.tool_use_block_start(index, block["id"], block["name"]),
                    events.content_block_delta(index, "input_json_delta",
                                               orjson.dumps(block["input"]).decode())]
        out.append(events.block_stop(index))
    stop = "tool_use" if content[-1]["type"] == "tool_use" else "end_turn"
    out += [events.message_delta(stop, None, {"output_tokens": 0}), events.MESSAGE_STOP]
    return b"".join(out)
