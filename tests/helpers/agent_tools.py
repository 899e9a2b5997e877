"""The three tools of the agent task (Read, then Write and Bash in parallel), in Claude
Code's shapes: one definition for the in-process task (tests/api/test_agent_task.py) and
the end-to-end script's SDK dry path (tests/e2e/claude_code_e2e.py)."""

from __future__ import annotations

from typing import Any

AGENT_TOOLS: list[dict[str, Any]] = [
    {"name": "Read", "description": "Read a file", "input_schema": {
        "type": "object", "properties": {"file_path": {"type": "string"}},
        "required": ["file_path"]}},
    {"name": "Write", "description": "Write a file", "input_schema": {
        "type": "object", "properties": {"file_path": {"type": "string"},
                                         "content": {"type": "string"}},
        "required": ["file_path", "content"]}},
    {"name": "Bash", "description": "Run a shell command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"},
                                         "description": {"type": "string"}},
        "required": ["command"]}},
]
