"""Locust scenarios shaped like Claude Code traffic through the gateway to `fake-upstream`.

Run them with `python loadtest/run.py` (starts and stops the gateway and the fake upstream,
writes Locust's CSV stats under loadtest/results/). By hand, against a running gateway:

    LLMAPI_KEYS_FILE=keys.txt locust -f loadtest/locustfile.py --host http://127.0.0.1:8080

Each simulated developer holds one of the keys in `LLMAPI_KEYS_FILE` (one per line; many
users with several keys each, so auth, limits and accounting see a realistic spread) and
mixes, by weight:

- `quick_chat` (5): a short non-streamed haiku-class chat (titles, summaries, quota checks);
- `coding_turn` (3): a streamed sonnet turn with Claude Code's large system prompt and 20 tool
  definitions (about 30 KB of request body) answered with two parallel tool calls, followed
  by the turn that carries their tool results and is answered with text;
- `long_stream` (1): a streamed answer of 2,000 chunks (a long file written in one go);
- `passthrough_turn` (1): the coding turn on an `opus` model, which the load-test config
  routes to the anthropic-protocol provider (bytes passed through untouched).

A streamed answer counts as a failure unless it ends with `message_stop`.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
OPUS = "claude-opus-4-6"  # routed to the pass-through provider by loadtest/run.py's config

TOOL_NAMES = ("Bash", "Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS", "NotebookRead",
              "NotebookEdit", "WebFetch", "WebSearch", "TodoRead", "TodoWrite", "Task",
              "ExitPlanMode", "BashOutput", "KillShell", "SlashCommand", "ListMcpResources")


def _tool(name: str) -> dict[str, Any]:
    """A tool definition about as large as Claude Code's own (description plus schema)."""
    description = (f"{name}: " + "Use this tool when the task calls for it. " * 8).strip()
    properties = {
        f"{field}": {"type": "string", "description": f"The {field} for {name}. " * 3}
        for field in ("file_path", "pattern", "content", "command", "description")
    }
    return {"name": name, "description": description,
            "input_schema": {"type": "object", "properties": properties,
                             "required": ["file_path"], "additionalProperties": False}}


TOOLS = [_tool(name) for name in TOOL_NAMES]
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": ("You are an interactive CLI tool that helps users with software "
                              "engineering tasks. Follow the repository's conventions. ") * 80,
     "cache_control": {"type": "ephemeral"}},
]
TOOL_ANSWER = '[[fake:{"scenario":"tools","chunks":12}]]'
TEXT_ANSWER = '[[fake:{"chunks":40}]]'


def coding_request(model: str, with_results: bool) -> dict[str, Any]:
    """A Claude Code turn: ~30 KB of system prompt and tools, streamed."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": f"{TOOL_ANSWER} Find where the relay parses the request "
                                 "body and read that file."}]}]
    if with_results:
        calls = [("toolu_01", "Read", {"file_path": "/src/gateway/relay.py"}),
                 ("toolu_02", "Grep", {"pattern": "parse_request", "file_path": "/src"})]
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": cid, "name": name, "input": args}
            for cid, name, args in calls]})
        messages.append({"role": "user", "content": [
            *({"type": "tool_result", "tool_use_id": cid,
               "content": "def parse_request(raw: bytes) -> dict: ...\n" * 20}
              for cid, _, _ in calls),
            {"type": "text", "text": f"{TEXT_ANSWER} Explain what you found."}]})
    return {"model": model, "max_tokens": 32000, "stream": True, "system": SYSTEM,
            "tools": TOOLS, "messages": messages}


def _keys() -> list[str]:
    path = os.environ.get("LLMAPI_KEYS_FILE")
    if path:
        keys = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if keys:
            return keys
    key = os.environ.get("LLMAPI_KEY")
    if not key:
        raise RuntimeError("set LLMAPI_KEYS_FILE (one key per line) or LLMAPI_KEY")
    return [key]


KEYS = _keys()
_next_key = itertools.cycle(random.sample(KEYS, len(KEYS)))


class ClaudeCodeUser(FastHttpUser):
    """One developer running Claude Code with one API key."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.headers = {"x-api-key": next(_next_key), "anthropic-version": "2023-06-01",
                        "content-type": "application/json"}

    def _post(self, body: dict[str, Any], name: str) -> None:
        stream = body.get("stream") is True
        with self.client.post("/v1/messages", data=json.dumps(body), headers=self.headers,
                              name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            elif stream and b"event: message_stop" not in (resp.content or b""):
                resp.failure("stream did not end with message_stop")
            else:
                resp.success()

    @task(5)
    def quick_chat(self) -> None:
        self._post({"model": HAIKU, "max_tokens": 512, "messages": [
            {"role": "user", "content": "Write a 5-word title for: fix the flaky test"}]},
            "quick_chat (haiku, non-stream)")

    @task(3)
    def coding_turn(self) -> None:
        self._post(coding_request(SONNET, with_results=False), "coding_turn (tool calls)")
        self._post(coding_request(SONNET, with_results=True), "coding_turn (tool results)")

    @task(1)
    def long_stream(self) -> None:
        self._post({"model": SONNET, "max_tokens": 32000, "stream": True, "messages": [
            {"role": "user", "content": '[[fake:{"chunks":2000}]] Write the whole module.'}]},
            "long_stream (2,000 chunks)")

    @task(1)
    def passthrough_turn(self) -> None:
        self._post(coding_request(OPUS, with_results=True), "passthrough_turn (anthropic)")
