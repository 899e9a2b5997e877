"""Anthropic request -> OpenAI Chat Completions request, and request validation."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.openai_request import (
    EMPTY_TOOL_RESULT,
    MISSING_TOOL_RESULT,
    TOOL_ERROR_PREFIX,
    TOOL_IMAGE_NOTE,
    OpenAIOptions,
    to_openai_request,
    validate_anthropic_request,
)

PLAIN = OpenAIOptions()
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

# Every top-level field some OpenAI-compatible upstream understands; nothing else may be sent.
OPENAI_FIELDS = {
    "model", "messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "stream",
    "stream_options", "tools", "tool_choice", "parallel_tool_calls", "user",
    "enable_thinking", "thinking_budget", "reasoning_effort",
}


def assert_upstream_accepts(request: dict[str, Any]) -> None:
    """The structural rules OpenAI-compatible upstreams enforce with a 400 (docs/protocol.md §4)."""
    assert set(request) <= OPENAI_FIELDS, set(request) - OPENAI_FIELDS
    assert isinstance(request["model"], str) and request["model"]
    assert "cache_control" not in orjson.dumps(request).decode()
    messages = request["messages"]
    assert isinstance(messages, list) and messages
    tool_names = {t["function"]["name"] for t in request.get("tools", [])}
    for tool in request.get("tools", []):
        assert set(tool) == {"type", "function"} and tool["type"] == "function"
        assert set(tool["function"]) <= {"name", "description", "parameters"}
        assert tool["function"]["name"] and isinstance(tool["function"]["parameters"], dict)
    if "tool_choice" in request or "parallel_tool_calls" in request:
        assert tool_names, "tool_choice without tools is a 400"
    if "stream_options" in request:
        assert request["stream"] is True
    expected_tool_ids: list[str] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if expected_tool_ids:
            assert role == "tool", f"message {i}: tool results must follow their calls"
        if role == "system":
            assert i == 0, "a system message must come first"
            assert set(message) == {"role", "content"}
            assert isinstance(message["content"], str) and message["content"]
        elif role == "user":
            assert set(message) == {"role", "content"}
            content = message["content"]
            if isinstance(content, list):
                assert content
                for part in content:
                    if part["type"] == "text":
                        assert set(part) == {"type", "text"} and part["text"]
                    else:
                        assert part["type"] == "image_url" and set(part) == {"type", "image_url"}
                        assert set(part["image_url"]) == {"url"}
            else:
                assert isinstance(content, str) and content
        elif role == "assistant":
            assert set(message) <= {"role", "content", "tool_calls"}
            assert isinstance(message["content"], str)
            calls = message.get("tool_calls", [])
            assert message["content"] or calls, "empty assistant message"
            for call in calls:
                assert set(call) == {"id", "type", "function"} and call["type"] == "function"
                assert call["id"] and call["function"]["name"] in tool_names
                assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
            expected_tool_ids = [call["id"] for call in calls]
            assert len(set(expected_tool_ids)) == len(expected_tool_ids)
        elif role == "tool":
            assert set(message) == {"role", "tool_call_id", "content"}
            assert isinstance(message["content"], str) and message["content"]
            assert message["tool_call_id"] in expected_tool_ids, f"message {i}: orphan tool result"
            expected_tool_ids.remove(message["tool_call_id"])
        else:
            raise AssertionError(f"message {i}: unknown role {role}")
    assert not expected_tool_ids, "unanswered tool calls at the end"


def tool(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


S = {"type": "string"}
N = {"type": "number"}
CLAUDE_CODE_TOOLS = [
    tool("Task", "Launch a new agent to handle complex, multi-step tasks autonomously.",
         {"description": S, "prompt": S, "subagent_type": S}, ["description", "prompt"]),
    tool("Bash", "Executes a given bash command in a persistent shell session.",
         {"command": S, "timeout": N, "description": S, "run_in_background": {"type": "boolean"}},
         ["command"]),
    tool("Glob", "Fast file pattern matching tool that works with any codebase size.",
         {"pattern": S, "path": S}, ["pattern"]),
    tool("Grep", "A powerful search tool built on ripgrep.",
         {"pattern": S, "path": S, "glob": S, "output_mode": {"type": "string",
          "enum": ["content", "files_with_matches", "count"]}, "-n": {"type": "boolean"}},
         ["pattern"]),
    tool("ExitPlanMode", "Use this tool when you are in plan mode and have finished planning.",
         {"plan": S}, ["plan"]),
    tool("Read", "Reads a file from the local filesystem.",
         {"file_path": S, "offset": N, "limit": N}, ["file_path"]),
    tool("Edit", "Performs exact string replacements in files.",
         {"file_path": S, "old_string": S, "new_string": S, "replace_all": {"type": "boolean"}},
         ["file_path", "old_string", "new_string"]),
    tool("Write", "Writes a file to the local filesystem.",
         {"file_path": S, "content": S}, ["file_path", "content"]),
    tool("NotebookEdit", "Completely replaces the contents of a specific cell in a notebook.",
         {"notebook_path": S, "cell_id": S, "new_source": S}, ["notebook_path", "new_source"]),
    tool("WebFetch", "Fetches content from a specified URL and processes it.",
         {"url": {"type": "string", "format": "uri"}, "prompt": S}, ["url", "prompt"]),
    tool("TodoWrite", "Use this tool to create and manage a structured task list.",
         {"todos": {"type": "array", "items": {"type": "object", "properties": {
             "content": S, "status": {"type": "string",
                                      "enum": ["pending", "in_progress", "completed"]},
             "activeForm": S}, "required": ["content", "status", "activeForm"]}}},
         ["todos"]),
    tool("WebSearch", "Allows Claude to search the web and use the results.",
         {"query": {"type": "string", "minLength": 2}, "allowed_domains": {
             "type": "array", "items": S}}, ["query"]),
    tool("BashOutput", "Retrieves output from a running or completed background bash shell.",
         {"bash_id": S, "filter": S}, ["bash_id"]),
    tool("KillShell", "Kills a running background bash shell by its ID.",
         {"shell_id": S}, ["shell_id"]),
    tool("SlashCommand", "Execute a slash command within the main conversation.",
         {"command": S}, ["command"]),
]
CLAUDE_CODE_TOOLS[-1]["cache_control"] = {"type": "ephemeral"}

SYSTEM_INTRO = "You are Claude Code, Anthropic's official CLI for Claude."
SYSTEM_MAIN = (
    "You are an interactive CLI tool that helps users with software engineering tasks.\n"
    "<env>\nWorking directory: /home/dev/proj\nIs directory a git repo: Yes\n"
    "Platform: linux\nToday's date: 2026-11-25\n</env>"
)
REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use this context.\n"
    "</system-reminder>"
)


def claude_code_request() -> dict[str, Any]:
    """Shaped like Claude Code 2.1.x's second call of a one-tool task (CLAUDE_CODE.md)."""
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64000,
        "stream": True,
        "temperature": 1,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_3f2a_account__session_9c1d"},
        "system": [
            {"type": "text", "text": SYSTEM_INTRO, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": SYSTEM_MAIN, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": CLAUDE_CODE_TOOLS,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": REMINDER},
                {"type": "text", "text": "Create hello.txt containing hi.",
                 "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "system", "content": "The user is in plan-free mode."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should write the file.",
                 "signature": "EqQBCkYIBxgCKkB..."},
                {"type": "text", "text": "I'll create the file."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Write",
                 "input": {"file_path": "/home/dev/proj/hello.txt", "content": "hi\n"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A",
                 "content": "File created successfully at: /home/dev/proj/hello.txt",
                 "cache_control": {"type": "ephemeral"}},
            ]},
        ],
    }


def test_claude_code_request_becomes_a_request_upstreams_accept() -> None:
    out = to_openai_request(claude_code_request(), "qwen3-coder-plus",
                            OpenAIOptions(max_output_tokens=65536, reasoning="dashscope"))
    assert_upstream_accepts(out)
    assert out["messages"] == [
        {"role": "system",
         "content": f"{SYSTEM_INTRO}\n\n{SYSTEM_MAIN}\n\nThe user is in plan-free mode."},
        {"role": "user", "content": f"{REMINDER}\n\nCreate hello.txt containing hi."},
        {"role": "assistant", "content": "I'll create the file.", "tool_calls": [
            {"id": "toolu_01A", "type": "function", "function": {
                "name": "Write",
                "arguments": '{"file_path":"/home/dev/proj/hello.txt","content":"hi\\n"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_01A",
         "content": "File created successfully at: /home/dev/proj/hello.txt"},
    ]
    assert [t["function"]["name"] for t in out["tools"]] == [t["name"] for t in CLAUDE_CODE_TOOLS]
    assert out["tools"][1] == {"type": "function", "function": {
        "name": "Bash", "description": CLAUDE_CODE_TOOLS[1]["description"],
        "parameters": CLAUDE_CODE_TOOLS[1]["input_schema"]}}
    rest = {k: v for k, v in out.items() if k not in ("messages", "tools")}
    assert rest == {
        "model": "qwen3-coder-plus",
        "max_tokens": 64000,
        "temperature": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "enable_thinking": True,
    }


def test_conversion_does_not_modify_the_request() -> None:
    body = claude_code_request()
    before = copy.deepcopy(body)
    to_openai_request(body, "m", OpenAIOptions(reasoning="dashscope", send_user=True))
    assert body == before


# -- system prompt ---------------------------------------------------------------------


def test_system_text_blocks_joined_and_cache_control_dropped() -> None:
    out = to_openai_request(
        {"model": "m", "max_tokens": 10,
         "system": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "B"}],
         "messages": [{"role": "user", "content": "hi"}]}, "up", PLAIN)
    assert out["messages"][0] == {"role": "system", "content": "A\n\nB"}


def test_system_entries_inside_messages_fold_into_the_system_prompt() -> None:
    out = to_openai_request(
        {"model": "m", "max_tokens": 10, "system": "Top.",
         "messages": [{"role": "user", "content": "hi"},
                      {"role": "system", "content": [{"type": "text", "text": "Later rule."}]},
                      {"role": "assistant", "content": "hello"},
                      {"role": "system", "content": "Last rule."},
                      {"role": "user", "content": "bye"}]}, "up", PLAIN)
    assert_upstream_accepts(out)
    assert out["messages"] == [
        {"role": "system", "content": "Top.\n\nLater rule.\n\nLast rule."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]


def test_no_system_prompt_sends_no_system_message() -> None:
    out = to_openai_request({"model": "m", "max_tokens": 10,
                             "messages": [{"role": "user", "content": "hi"}]}, "up", PLAIN)
    assert out["messages"] == [{"role": "user", "content": "hi"}]


# -- content ---------------------------------------------------------------------------


def test_text_only_user_content_is_sent_as_a_string() -> None:
    out = to_openai_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]}, "up", PLAIN)
    assert out["messages"] == [{"role": "user", "content": "a\n\nb"}]


def test_images_become_image_url_parts() -> None:
    out = to_openai_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Compare these."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG_B64}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ]}]}, "up", PLAIN)
    assert_upstream_accepts(out)
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
    ]


def test_thinking_blocks_are_dropped_from_history() -> None:
    out = to_openai_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "secret", "signature": "sig"},
            {"type": "redacted_thinking", "data": "abc"},
            {"type": "text", "text": "answer"}]},
        {"role": "user", "content": "thanks"}]}, "up", PLAIN)
    assert out["messages"][1] == {"role": "assistant", "content": "answer"}
    assert "secret" not in orjson.dumps(out).decode()


def test_text_documents_become_text() -> None:
    out = to_openai_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [
            {"type": "document", "title": "notes.txt",
             "source": {"type": "text", "media_type": "text/plain", "data": "line one"}},
            {"type": "text", "text": "Summarise."}]}]}, "up", PLAIN)
    assert out["messages"] == [{"role": "user", "content": "notes.txt\n\nline one\n\nSummarise."}]


# -- tool use and tool results ---------------------------------------------------------


def tool_turn(*ids: str, text: str = "") -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": "Read", "input": {"file_path": i}}
                for i in ids]
    return {"role": "assistant", "content": content}


def result(tool_id: str, content: Any = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **extra}


def convert(messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    out = to_openai_request({"model": "m", "max_tokens": 100, "tools": CLAUDE_CODE_TOOLS,
                             "messages": messages, **body}, "up", PLAIN)
    assert_upstream_accepts(out)
    return out


def test_tool_use_input_is_sent_as_compact_json_arguments() -> None:
    out = convert([{"role": "user", "content": "go"},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "t1", "name": "Grep",
                        "input": {"pattern": "def 解析", "-n": True}}]},
                   {"role": "user", "content": [result("t1")]}])
    call = out["messages"][1]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"pattern":"def 解析","-n":true}'
    assert out["messages"][1]["content"] == ""


def test_tool_results_follow_their_assistant_turn() -> None:
    out = convert([
        {"role": "user", "content": "read both"},
        tool_turn("t1", "t2", text="Reading."),
        {"role": "user", "content": [
            {"type": "text", "text": "Also, hurry."},
            result("t1", "one"),
            result("t2", "two"),
        ]},
    ])
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool", "tool", "user"]
    assert out["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": "two"},
        {"role": "user", "content": "Also, hurry."},
    ]


def test_tool_results_are_ordered_like_the_calls() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a", "b", "c"),
                   {"role": "user", "content": [result("c", "C"), result("a", "A"),
                                                result("b", "B")]}])
    assert [m["tool_call_id"] for m in out["messages"][2:]] == ["a", "b", "c"]


def test_unanswered_tool_call_gets_a_placeholder_result() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a", "b"),
                   {"role": "user", "content": [result("b", "B"),
                                                {"type": "text", "text": "stop that"}]}])
    assert out["messages"][2:] == [
        {"role": "tool", "tool_call_id": "a", "content": MISSING_TOOL_RESULT},
        {"role": "tool", "tool_call_id": "b", "content": "B"},
        {"role": "user", "content": "stop that"},
    ]


def test_tool_call_followed_by_plain_user_text_still_gets_answered() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a"),
                   {"role": "user", "content": "never mind"}])
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool", "user"]


def test_tool_call_at_the_end_of_history_gets_answered() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a")])
    assert out["messages"][-1] == {"role": "tool", "tool_call_id": "a",
                                   "content": MISSING_TOOL_RESULT}


def test_tool_result_without_matching_call_becomes_user_text() -> None:
    out = convert([{"role": "user", "content": "go"},
                   {"role": "assistant", "content": "done"},
                   {"role": "user", "content": [result("ghost", "late output")]}])
    assert out["messages"][-1] == {"role": "user",
                                   "content": "[result of tool call ghost]\nlate output"}


def test_assistant_turn_with_only_thinking_is_skipped_without_breaking_tool_order() -> None:
    out = convert([
        {"role": "user", "content": "go"},
        tool_turn("a"),
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm",
                                           "signature": "s"}]},
        {"role": "user", "content": [result("a", "A")]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
        {"role": "user", "content": "next"},
    ])
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": out["messages"][1]["tool_calls"]},
        {"role": "tool", "tool_call_id": "a", "content": "A"},
        {"role": "user", "content": "next"},
    ]


def test_tool_result_blocks_are_joined_as_text() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a"),
                   {"role": "user", "content": [result("a", [
                       {"type": "text", "text": "first"}, {"type": "text", "text": "second"}])]}])
    assert out["messages"][2]["content"] == "first\n\nsecond"


def test_empty_tool_result_is_sent_as_a_marker() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a", "b"),
                   {"role": "user", "content": [result("a", ""), result("b", [])]}])
    assert [m["content"] for m in out["messages"][2:]] == [EMPTY_TOOL_RESULT] * 2


def test_tool_error_results_are_marked() -> None:
    out = convert([{"role": "user", "content": "go"}, tool_turn("a"),
                   {"role": "user", "content": [result("a", "No such file", is_error=True)]}])
    assert out["messages"][2]["content"] == TOOL_ERROR_PREFIX + "No such file"


def test_images_inside_tool_result_move_to_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG_B64}}
    out = convert([{"role": "user", "content": "screenshot please"}, tool_turn("a"),
                   {"role": "user", "content": [
                       result("a", [{"type": "text", "text": "Captured."}, image]),
                       {"type": "text", "text": "What do you see?"}]}])
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "a",
                                  "content": f"Captured.\n{TOOL_IMAGE_NOTE}"}
    assert out["messages"][3] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "text", "text": "What do you see?"},
    ]}


def test_server_tools_are_dropped() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
             CLAUDE_CODE_TOOLS[0]]
    out = to_openai_request({"model": "m", "max_tokens": 10, "tools": tools,
                             "messages": [{"role": "user", "content": "hi"}]}, "up", PLAIN)
    assert [t["function"]["name"] for t in out["tools"]] == ["Task"]


def test_only_server_tools_means_no_tools_and_no_tool_choice() -> None:
    out = to_openai_request({"model": "m", "max_tokens": 10,
                             "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                             "tool_choice": {"type": "any"},
                             "messages": [{"role": "user", "content": "hi"}]}, "up", PLAIN)
    assert "tools" not in out and "tool_choice" not in out
    assert_upstream_accepts(out)


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "Bash"}, {"type": "function", "function": {"name": "Bash"}}),
    ({"type": "tool", "name": "web_search"}, "required"),
])
def test_tool_choice_mapping(choice: dict[str, Any], expected: Any) -> None:
    out = convert([{"role": "user", "content": "hi"}], tool_choice=choice)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use_sets_parallel_tool_calls_false() -> None:
    out = convert([{"role": "user", "content": "hi"}],
                  tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert out["parallel_tool_calls"] is False


# -- parameters ------------------------------------------------------------------------


def simple(**body: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}],
            **body}


def test_max_tokens_clamped_to_upstream_limit() -> None:
    assert to_openai_request(simple(max_tokens=64000), "up",
                             OpenAIOptions(max_output_tokens=8192))["max_tokens"] == 8192
    assert to_openai_request(simple(max_tokens=512), "up",
                             OpenAIOptions(max_output_tokens=8192))["max_tokens"] == 512
    assert to_openai_request(simple(max_tokens=64000), "up", PLAIN)["max_tokens"] == 64000


def test_stop_sequences_become_stop() -> None:
    out = to_openai_request(simple(stop_sequences=["\n\nHuman:", "END"]), "up", PLAIN)
    assert out["stop"] == ["\n\nHuman:", "END"]
    assert "stop" not in to_openai_request(simple(stop_sequences=[]), "up", PLAIN)


def test_sampling_parameters_are_forwarded() -> None:
    out = to_openai_request(simple(temperature=0.2, top_p=0.9), "up", PLAIN)
    assert (out["temperature"], out["top_p"]) == (0.2, 0.9)


def test_top_k_only_sent_to_upstreams_that_accept_it() -> None:
    assert "top_k" not in to_openai_request(simple(top_k=20), "up", PLAIN)
    assert to_openai_request(simple(top_k=20), "up", OpenAIOptions(send_top_k=True))["top_k"] == 20


def test_stream_requests_ask_for_usage() -> None:
    out = to_openai_request(simple(stream=True), "up", PLAIN)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    out = to_openai_request(simple(stream=False), "up", PLAIN)
    assert "stream" not in out and "stream_options" not in out


def test_metadata_user_id_sent_as_user_only_when_enabled() -> None:
    body = simple(metadata={"user_id": "u-42"})
    assert "user" not in to_openai_request(body, "up", PLAIN)
    assert to_openai_request(body, "up", OpenAIOptions(send_user=True))["user"] == "u-42"


@pytest.mark.parametrize("field", [
    "context_management", "output_config", "metadata", "thinking", "container", "mcp_servers",
    "service_tier", "anthropic_version", "some_future_field",
])
def test_anthropic_only_fields_never_forwarded(field: str) -> None:
    body = simple(**{field: {"type": "enabled", "budget_tokens": 2048, "x": 1}})
    for options in (PLAIN, OpenAIOptions(reasoning="dashscope", send_user=True)):
        out = to_openai_request(body, "up", options)
        assert field not in out
        assert set(out) <= OPENAI_FIELDS


def test_context_management_never_forwarded() -> None:
    out = to_openai_request(claude_code_request(), "up",
                            OpenAIOptions(reasoning="openai", send_top_k=True))
    text = orjson.dumps(out).decode()
    assert "context_management" not in out and "clear_thinking" not in text


# -- thinking --------------------------------------------------------------------------


def test_dashscope_thinking_with_budget() -> None:
    out = to_openai_request(simple(stream=True, thinking={"type": "enabled",
                                                          "budget_tokens": 4000}),
                            "qwen-plus", OpenAIOptions(reasoning="dashscope"))
    assert out["enable_thinking"] is True and out["thinking_budget"] == 4000


def test_dashscope_adaptive_thinking_has_no_budget() -> None:
    out = to_openai_request(simple(stream=True, thinking={"type": "adaptive"}), "qwen-plus",
                            OpenAIOptions(reasoning="dashscope"))
    assert out["enable_thinking"] is True and "thinking_budget" not in out


def test_dashscope_thinking_disabled_is_sent_as_false() -> None:
    out = to_openai_request(simple(stream=True, thinking={"type": "disabled"}), "qwen-plus",
                            OpenAIOptions(reasoning="dashscope"))
    assert out["enable_thinking"] is False


def test_dashscope_non_stream_requests_run_without_thinking() -> None:
    out = to_openai_request(simple(thinking={"type": "enabled", "budget_tokens": 4000}),
                            "qwen-plus", OpenAIOptions(reasoning="dashscope"))
    assert out["enable_thinking"] is False and "thinking_budget" not in out


def test_deepseek_thinking_switches_to_the_reasoner_model() -> None:
    options = OpenAIOptions(reasoning="deepseek", reasoning_model="deepseek-reasoner")
    out = to_openai_request(simple(thinking={"type": "adaptive"}), "deepseek-chat", options)
    assert out["model"] == "deepseek-reasoner"
    # thinking is on by default at DeepSeek, so the switch is always said explicitly
    assert set(out) == {"model", "messages", "max_tokens", "thinking"}
    assert out["thinking"] == {"type": "enabled"}
    out = to_openai_request(simple(thinking={"type": "disabled"}), "deepseek-chat", options)
    assert out["model"] == "deepseek-chat" and out["thinking"] == {"type": "disabled"}
    out = to_openai_request(simple(thinking={"type": "enabled"}), "deepseek-chat",
                            OpenAIOptions(reasoning="deepseek"))
    assert out["model"] == "deepseek-chat"


@pytest.mark.parametrize(("thinking", "effort"), [
    ({"type": "enabled", "budget_tokens": 1024}, "low"),
    ({"type": "enabled", "budget_tokens": 8000}, "medium"),
    ({"type": "enabled", "budget_tokens": 32000}, "high"),
    ({"type": "adaptive"}, "medium"),
])
def test_openai_reasoning_effort_from_budget(thinking: dict[str, Any], effort: str) -> None:
    out = to_openai_request(simple(thinking=thinking), "o4", OpenAIOptions(reasoning="openai"))
    assert out["reasoning_effort"] == effort


def test_openai_reasoning_effort_from_output_config_when_no_budget() -> None:
    out = to_openai_request(simple(thinking={"type": "adaptive"},
                                   output_config={"effort": "high"}),
                            "o4", OpenAIOptions(reasoning="openai"))
    assert out["reasoning_effort"] == "high"


def test_thinking_ignored_without_a_reasoning_style() -> None:
    out = to_openai_request(simple(thinking={"type": "enabled", "budget_tokens": 4000}),
                            "up", PLAIN)
    assert set(out) == {"model", "messages", "max_tokens"}


# -- any valid history converts into something upstreams accept ------------------------

_ids = st.sampled_from(["t1", "t2", "t3", "t4"])
_text = st.text(min_size=0, max_size=8)
_user_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda i, t, e: {"type": "tool_result", "tool_use_id": i, "content": t,
                               "is_error": e}, _ids, _text, st.booleans()),
    st.builds(lambda i: {"type": "tool_result", "tool_use_id": i, "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PNG_B64}}]}, _ids),
    st.just({"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}),
    st.just({"type": "search_result", "source": "x", "title": "t", "content": []}),
)
_assistant_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda i: {"type": "tool_use", "id": i, "name": "Read", "input": {"file_path": i}},
              _ids),
    st.just({"type": "thinking", "thinking": "hm", "signature": "s"}),
)
_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c},
              st.one_of(_text, st.lists(_user_block, max_size=4))),
    st.builds(lambda c: {"role": "assistant", "content": c},
              st.one_of(_text, st.lists(_assistant_block, max_size=4))),
    st.builds(lambda t: {"role": "system", "content": t}, _text),
)


def _unique_tool_use_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic itself rejects a turn calling one id twice; keep the generated ones unique."""
    for message in messages:
        if message["role"] == "assistant" and isinstance(message["content"], list):
            seen: set[str] = set()
            kept = []
            for block in message["content"]:
                if block["type"] == "tool_use":
                    if block["id"] in seen:
                        continue
                    seen.add(block["id"])
                kept.append(block)
            message["content"] = kept
    return messages


@settings(max_examples=300, deadline=None)
@given(st.lists(_message, min_size=1, max_size=8).map(_unique_tool_use_ids))
def test_any_history_converts_into_a_request_upstreams_accept(
    messages: list[dict[str, Any]],
) -> None:
    body = {"model": "m", "max_tokens": 10, "tools": CLAUDE_CODE_TOOLS, "messages": messages}
    assert validate_anthropic_request(body) is None
    out = to_openai_request(body, "up", PLAIN)
    if out["messages"]:
        assert_upstream_accepts(out)


# -- validation ------------------------------------------------------------------------


def test_claude_code_request_is_valid() -> None:
    assert validate_anthropic_request(claude_code_request()) is None


@pytest.mark.parametrize(("body", "message"), [
    ([], "body: must be a JSON object"),
    ({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}, "model: field required"),
    ({"model": "", "max_tokens": 1, "messages": []}, "model: must be a non-empty string"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]},
     "max_tokens: field required"),
    ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens: must be a positive integer"),
    ({"model": "m", "max_tokens": True, "messages": []},
     "max_tokens: must be a positive integer"),
    ({"model": "m", "max_tokens": "9", "messages": []}, "max_tokens: must be a positive integer"),
    ({"model": "m", "max_tokens": 5}, "messages: field required"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages: must be a non-empty list"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]},
     "messages.0.role: must be 'user' or 'assistant'"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}, "hi"]},
     "messages.1: must be an object"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"},
                                                  {"role": "assistant"}]},
     "messages.1.content: field required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]},
     "messages.0.content: must be a string or a list of content blocks"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages.0.content.0.type: field required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": None}]}]}, "messages.0.content.0.text: must be a string"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "x", "input": "[]"}]}]},
     "messages.0.content.0.input: must be an object"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "content": "x"}]}]},
     "messages.0.content.0.tool_use_id: field required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "system": 3}, "system: must be a string or a list of text blocks"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"description": "no name"}]}, "tools.0.name: field required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "sometimes"}},
     "tool_choice.type: must be one of 'auto', 'any', 'tool', 'none'"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "stop_sequences": "END"}, "stop_sequences: must be a list of strings"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "temperature": "hot"}, "temperature: must be a number"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "stream": "yes"}, "stream: must be a boolean"),
])
def test_invalid_requests_name_the_bad_field(body: Any, message: str) -> None:
    assert validate_anthropic_request(body) == message


def test_validation_is_lenient_on_what_real_clients_send() -> None:
    body = simple(messages=[
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [{"type": "brand_new_block", "payload": 1}]},
    ], some_future_field={"x": 1}, thinking={"type": "adaptive"})
    assert validate_anthropic_request(body) is None


def test_claude_code_billing_header_never_reaches_the_upstream() -> None:
    """Its per-session suffix at the start of the prompt would defeat prefix caching."""
    from gateway.protocol.openai_request import OpenAIOptions, to_openai_request

    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.1.9f"},
                       {"type": "text", "text": "You are Claude Code."}]}
    out = to_openai_request(body, "up", OpenAIOptions())
    assert out["messages"][0] == {"role": "system", "content": "You are Claude Code."}
