"""Claude Code's multi-step task with thinking on, per vendor profile and protocol, played
with the SDK through the running gateway (the dry path of tests/e2e/claude_code_e2e.py's
agent task): a Read, then a Write and a Bash in parallel, then the final answer."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.fake_upstream import WRITE_CONTENT
from gateway.testing.vendors import VENDORS
from tests.compat import claude_code_body, final_of, rig, rows
from tests.helpers.agent_tools import AGENT_TOOLS as CLAUDE_CODE_TOOLS


def run_tool(name: str, tool_input: dict[str, Any]) -> str:
    """What Claude Code's tools do, for real, on loopback files."""
    if name == "Read":
        return Path(tool_input["file_path"]).read_text()
    if name == "Write":
        Path(tool_input["file_path"]).write_text(tool_input["content"])
        return f"File created successfully at: {tool_input['file_path']}"
    done = subprocess.run(["bash", "-c", tool_input["command"]], capture_output=True,
                          text=True, timeout=10)
    return done.stdout + done.stderr


@pytest.mark.parametrize(("vendor", "protocol"), rows(), ids=lambda v: str(v))
async def test_read_then_write_and_bash_in_parallel_then_answer(
        tmp_path: Path, vendor: str, protocol: str) -> None:
    task = tmp_path / "notes.txt"
    task.write_text("the task file\n")
    async with rig(vendor, protocol, tmp_path, fake_settings={"scenario": "agent_steps"}) as r:
        body = claude_code_body(f"Read {task}, then write a copy and run a command.",
                                tools=CLAUDE_CODE_TOOLS, thinking={"type": "adaptive"},
                                context_management={"edits": []},
                                output_config={"effort": "high"})
        messages = body["messages"]
        steps: list[list[str]] = []
        for _ in range(4):
            answer = await final_of(r.sdk, {**body, "messages": messages})
            uses = [b for b in answer.content if b.type == "tool_use"]
            steps.append([u.name for u in uses] or [b.type for b in answer.content])
            shows_thinking = protocol == "anthropic" or (
                VENDORS[vendor].reasoning_field and (VENDORS[vendor].thinking_default
                                                     or VENDORS[vendor].thinking_param))
            if shows_thinking:
                assert answer.content[0].type == "thinking", steps
            if not uses:
                break
            messages = [*messages,
                        {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                          for b in answer.content]},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": u.id,
                             "content": run_tool(u.name, u.input)} for u in uses]}]
        assert steps[:2] == [["Read"], ["Write", "Bash"]]
        assert [b.text for b in answer.content if b.type == "text"] == ["Done."]
        assert (tmp_path / "notes.txt.out").read_text() == WRITE_CONTENT
        assert (await r.stats())["statuses"] == {"200": 3}
