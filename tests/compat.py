"""The compatibility matrix: every vendor profile x protocol, checked through a running gateway
with the official anthropic SDK, rendered as the table in docs/compatibility.md.

Run ``python -m tests.compat --write`` to regenerate the file; the test suite
(tests/api/test_compatibility.py) runs the same checks and fails when the committed file
differs from what this run produces, or when a cell that must pass does not.

Each check plays a Claude-Code-shaped request (a `system` message inside `messages`,
`thinking`, `metadata`, `cache_control`, `max_tokens` 64000) against a fake upstream started
with ``vendor=NAME`` (gateway/testing/vendors.py), so the vendor's 400s apply.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.app import build_app  # noqa: E402
from gateway.protocol.tool_ids import upstream_tool_id  # noqa: E402
from gateway.testing.fake_upstream import FakeSettings  # noqa: E402
from gateway.testing.fake_upstream import build_app as build_fake  # noqa: E402
from gateway.testing.vendors import VENDORS, thinking_active  # noqa: E402
from tests.helpers.gateway import Gateway, make_config  # noqa: E402

CLAUDE_CODE_SHAPES = "2.1.x"  # request shapes of Claude Code 2.1.x (see tests/e2e)
DOC = ROOT / "docs" / "compatibility.md"
# What the last run of the real Claude Code CLI recorded (tests/e2e/claude_code_e2e.py
# --vendor all --task agent --record): the CLI's version and a result per row.
CLI_RESULTS = ROOT / "tests" / "e2e" / "claude_code_results.json"
MODEL = "claude-sonnet-4-6"
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
PDF_TEXT = "llmapi pdf probe"
TOOLS = [{"name": n, "description": n, "input_schema": {"type": "object"}}
         for n in ("Read", "Grep")]
READ_INPUT = {"file_path": "/tmp/fake-upstream/notes.txt"}
GREP_INPUT = {"pattern": "TODO", "path": "/tmp/fake-upstream"}

# Gateway provider settings per vendor profile: the preset, plus what a real deployment of a
# self-hosted server must say itself (vLLM's context length).
PROVIDER_EXTRA: dict[str, dict[str, Any]] = {
    "vllm": {"max_output_tokens": {"default": 16384}},
    # no preset; llama-server takes vLLM's chat_template_kwargs switch
    "llamacpp": {"reasoning": "vllm"},
}


def rows() -> list[tuple[str, str]]:
    return [(name, protocol) for name, vendor in VENDORS.items()
            for protocol in ("openai", "anthropic") if protocol in vendor.protocols]


def pdf_bytes(text: str = PDF_TEXT) -> bytes:
    """A one-page PDF whose text layer is `text` (hand-built: no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 144] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return out


@dataclass
class Rig:
    """One gateway in front of one strict fake vendor."""

    vendor: str
    protocol: str
    gw: Gateway
    fake: str
    sdk: anthropic.AsyncAnthropic

    async def last_upstream(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.fake + "/_fake/stats") as r:
            stats: dict[str, Any] = await r.json()
        return stats["last_request"]["json"]  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.fake + "/_fake/stats") as r:
            data: dict[str, Any] = await r.json()
            return data

    def thinks(self, upstream_body: dict[str, Any]) -> bool:
        return thinking_active(VENDORS[self.vendor], upstream_body,
                               "openai" if self.protocol == "openai" else "anthropic")


def provider_for(vendor: str, protocol: str, fake: str, **extra: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": vendor, "protocol": protocol,
        "base_url": fake + "/v1" if protocol == "openai" else fake,
        "models": {"default": "fake-model", "haiku": "fake-small"},
        "first_byte_timeout": 5.0, "idle_timeout": 5.0,
    }
    if vendor != "llamacpp":
        table["preset"] = vendor
    return {**table, **PROVIDER_EXTRA.get(vendor, {}), **extra}


@asynccontextmanager
async def rig(vendor: str, protocol: str, tmp: Path, fake_settings: dict[str, Any] | None = None,
              routing: dict[str, Any] | None = None, **provider: Any) -> AsyncIterator[Rig]:
    """A fake vendor and a gateway in front of it, on loopback, for one block."""
    fake_server = TestServer(build_fake(FakeSettings(port=0, vendor=vendor,
                                                     **(fake_settings or {}))),
                             host="127.0.0.1")
    await fake_server.start_server()
    fake = str(fake_server.make_url("")).rstrip("/")
    data = {"providers": [provider_for(vendor, protocol, fake, **provider)],
            "plans": [{"name": "free", "rpm": 0, "monthly_tokens": 0, "max_input_tokens": 0}],
            "routing": {"retry_backoff": 0.01, "health_interval": 0, **(routing or {})}}
    app = build_app(make_config(tmp, data))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        gw = Gateway(server, app)
        key = await gw.new_key()
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
        yield Rig(vendor, protocol, gw, fake, sdk)
    finally:
        await server.close()
        await fake_server.close()


def claude_code_body(text: str, **extra: Any) -> dict[str, Any]:
    """The parts of a Claude Code 2.1.x request that trip vendors up."""
    return {
        "model": MODEL, "max_tokens": 64000,
        "system": [{"type": "text", "text": "You are a coding agent.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": text}]},
            {"role": "system", "content": "Mid-conversation instructions."},
            {"role": "user", "content": "Go on."},
        ],
        "metadata": {"user_id": "user_abc"},
        **extra,
    }


SDK_EXTRA = ("context_management", "output_config", "temperature")


async def final_of(sdk: anthropic.AsyncAnthropic, body: dict[str, Any]) -> Any:
    """The validated final message of a stream (fields this SDK version does not type, such
    as Claude Code's `context_management`, go as extra body)."""
    extra = {k: body[k] for k in SDK_EXTRA if k in body}
    kwargs = {k: v for k, v in body.items() if k not in SDK_EXTRA}
    if extra:
        kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **extra}
    async with sdk.messages.stream(**kwargs) as stream:
        return await stream.get_final_message()


# ------------------------------------------------------------------------------ checks

Result = tuple[bool | None, str]  # None = not applicable (the vendor does not offer it)


async def check_text(r: Rig) -> Result:
    # Non-stream: the SDK refuses max_tokens 64000 without streaming, so 8000.
    message = await r.sdk.messages.create(**claude_code_body(
        '[[fake:{"text":"Hello there","chunks":3}]]', thinking={"type": "disabled"},
        max_tokens=8000))
    texts = [b.text for b in message.content if b.type == "text"]
    return bool(texts and "Hello" in texts[0]), ""


async def check_streaming(r: Rig) -> Result:
    final = await final_of(r.sdk, claude_code_body(
        '[[fake:{"text":"Hello there","chunks":4}]]', thinking={"type": "adaptive"}))
    texts = [b.text for b in final.content if b.type == "text"]
    return bool(texts) and final.stop_reason == "end_turn", ""


async def tool_turns(r: Rig, thinking: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A parallel tool-call turn, then the turn that sends both results back; returns the
    first answer and the upstream body of the second request."""
    body = claude_code_body("[[fake:tools]]", tools=TOOLS, thinking=thinking)
    first = await final_of(r.sdk, body)
    uses = [b for b in first.content if b.type == "tool_use"]
    history = [*body["messages"],
               {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                 for b in first.content]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": u.id, "content": f"result {u.name}"}
                   for u in uses]}]
    await final_of(r.sdk, {**body, "messages": history})
    return first, await r.last_upstream()


async def check_parallel_tools(r: Rig) -> Result:
    first, upstream = await tool_turns(r, {"type": "disabled"})
    uses = [b for b in first.content if b.type == "tool_use"]
    if [u.name for u in uses] != ["Read", "Grep"] or len({u.id for u in uses}) != 2:
        return False, "tool calls not shown as two tool_use blocks"
    if [u.input for u in uses] != [READ_INPUT, GREP_INPUT]:
        return False, "tool inputs differ from the upstream's"
    if r.protocol == "openai":
        sent = [m["tool_call_id"] for m in upstream["messages"] if m.get("role") == "tool"]
        if sent != [upstream_tool_id(u.id) for u in uses]:
            return False, "history sent back with ids the upstream did not make"
    return True, ""


async def check_thinking(r: Rig) -> Result:
    first, upstream = await tool_turns(r, {"type": "enabled", "budget_tokens": 2048})
    thoughts = [b for b in first.content if b.type == "thinking"]
    vendor = VENDORS[r.vendor]
    if r.protocol == "openai" and not vendor.reasoning_field:
        return None, "reasoning not shown by the vendor"
    if r.protocol == "openai" and not vendor.thinking_param and not vendor.thinking_default:
        return None, "thinking depends on the served model; the server has no switch"
    if not thoughts:
        return False, "no thinking block"
    if r.protocol == "openai" and vendor.replay_message:
        calls = [m for m in upstream["messages"] if m.get("tool_calls")]
        if not calls or calls[-1].get("reasoning_content") != thoughts[0].thinking:
            return False, "reasoning_content not sent back"
    # thinking off must reach vendors whose thinking is on by default
    await final_of(r.sdk, claude_code_body("hi", thinking={"type": "disabled"}))
    if r.thinks(await r.last_upstream()):
        return False, "thinking: disabled did not switch thinking off"
    return True, ""


async def check_images(r: Rig) -> Result:
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
               {"type": "text", "text": "[[fake:image_check]]"}]
    body = claude_code_body("x", thinking={"type": "disabled"})
    body["messages"] = [{"role": "user", "content": content}]
    final = await final_of(r.sdk, body)
    texts = [b.text for b in final.content if b.type == "text"]
    return bool(texts) and texts[0] == "image parts received: 1", ""


async def check_documents(r: Rig) -> Result:
    document = {"type": "document", "title": "probe.pdf", "source": {
        "type": "base64", "media_type": "application/pdf",
        "data": base64.b64encode(pdf_bytes()).decode()}}
    body = claude_code_body("x", thinking={"type": "disabled"})
    body["messages"] = [{"role": "user", "content": [document, {"type": "text",
                                                                "text": "Summarise."}]}]
    await final_of(r.sdk, body)
    sent = str(await r.last_upstream())
    if r.protocol == "anthropic":
        return "'type': 'document'" in sent, "sent as the client's document block"
    if "'type': 'file'" in sent:
        return True, "PDF sent as a file part"
    return PDF_TEXT in sent, "PDF text extracted"


async def check_count_tokens(r: Rig) -> Result:
    count = await r.sdk.messages.count_tokens(model=MODEL, messages=[
        {"role": "user", "content": "How many tokens is this?"}])
    return count.input_tokens > 0, ""


# What the fake upstream is told to report in `check_usage` (prompt total, cache hits, cache
# writes), so every figure the gateway shows and stores can be compared with a known one.
USAGE_PROBE = {"chunks": 7, "prompt_tokens": 5000, "cached_tokens": 1200,
               "cache_creation_tokens": 300}


def reported_usage(r: Rig, thinks: bool) -> tuple[int, int, int, int]:
    """(input, output, cache read, cache creation) in Anthropic terms, as the vendor reports
    USAGE_PROBE: vendors without cache figures on their OpenAI endpoint report neither hits
    nor writes; only some report writes there; Anthropic endpoints report both, and their
    `input_tokens` excludes both."""
    vendor = VENDORS[r.vendor]
    cached, created = USAGE_PROBE["cached_tokens"], USAGE_PROBE["cache_creation_tokens"]
    if vendor.cache_style == "none":  # no cache figures on either endpoint (Ollama)
        cached = created = 0
    elif r.protocol == "openai" and not vendor.reports_cache_creation:
        created = 0
    output = USAGE_PROBE["chunks"] * (2 if thinks else 1)  # the vendor's thinking counts
    return USAGE_PROBE["prompt_tokens"] - cached - created, output, cached, created


async def check_usage(r: Rig) -> Result:
    """Input, output, cache read and cache creation, stream and non-stream: what the client
    is shown and what the usage row holds are exactly what the upstream reported."""
    directive = "[[fake:" + json.dumps(USAGE_PROBE) + "]]"
    for stream in (True, False):
        body = claude_code_body(directive, thinking={"type": "disabled"})
        if stream:
            final = await final_of(r.sdk, body)
        else:
            final = await r.sdk.messages.create(**{**body, "max_tokens": 8000})
        expected = reported_usage(r, r.thinks(await r.last_upstream()))
        usage = final.usage
        shown = (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens or 0,
                 usage.cache_creation_input_tokens or 0)
        label = "stream" if stream else "non-stream"
        if shown != expected:
            return False, f"{label}: client shown {shown}, upstream reported {expected}"
        await r.gw.recorder.flush()
        with sqlite3.connect(r.gw.db.path) as conn:
            row = conn.execute("SELECT input_tokens, output_tokens, cache_read_tokens, "
                               "cache_creation_tokens FROM usage_logs "
                               "ORDER BY rowid DESC LIMIT 1").fetchone()
        if tuple(row) != expected:
            return False, f"{label}: usage row {tuple(row)}, upstream reported {expected}"
    return True, ""


async def check_cache(r: Rig) -> Result:
    if VENDORS[r.vendor].cache_style == "none":
        return None, "the vendor reports no cache hits"
    final = await final_of(r.sdk, claude_code_body('[[fake:{"cached_tokens":64}]]',
                                                   thinking={"type": "disabled"}))
    return final.usage.cache_read_input_tokens == 64, ""


async def check_errors(r: Rig) -> Result:
    try:
        await r.sdk.messages.create(**claude_code_body(
            '[[fake:{"status":429,"retry_after":"7"}]]', thinking={"type": "disabled"},
            max_tokens=8000))
    except anthropic.RateLimitError as exc:
        if exc.response.headers.get("retry-after") != "7" or "429" not in str(exc.message):
            return False, "429 without the upstream's retry-after or message"
    else:
        return False, "429 not surfaced"
    try:
        await r.sdk.messages.create(**claude_code_body(
            '[[fake:{"status":400}]]', thinking={"type": "disabled"}, max_tokens=8000))
    except anthropic.BadRequestError as exc:
        ok = exc.response.headers.get("x-should-retry") == "false" \
            and "scripted 400" in str(exc.message)
        return ok, "" if ok else "400 without the upstream's message or x-should-retry"
    return False, "400 not surfaced"


CHECKS: dict[str, Callable[[Rig], Awaitable[Result]]] = {
    "text": check_text,
    "streaming": check_streaming,
    "parallel tools": check_parallel_tools,
    "thinking round trip": check_thinking,
    "images": check_images,
    "documents": check_documents,
    "count_tokens": check_count_tokens,
    "usage exact": check_usage,
    "cache tokens": check_cache,
    "errors surfaced": check_errors,
}


async def run_row(vendor: str, protocol: str, tmp: Path) -> dict[str, Result]:
    results: dict[str, Result] = {}
    async with rig(vendor, protocol, tmp) as r:
        for name, check in CHECKS.items():
            try:
                results[name] = await check(r)
            except (anthropic.APIError, AssertionError, KeyError, ValueError) as exc:
                results[name] = (False, f"{type(exc).__name__}: {str(exc)[:120]}")
    return results


async def run_matrix(tmp: Path) -> dict[tuple[str, str], dict[str, Result]]:
    matrix = {}
    for i, (vendor, protocol) in enumerate(rows()):
        folder = tmp / f"row{i}"
        folder.mkdir()
        matrix[(vendor, protocol)] = await run_row(vendor, protocol, folder)
    return matrix


def render(matrix: dict[tuple[str, str], dict[str, Result]]) -> str:
    mark = {True: "yes", False: "**no**", None: "n/a"}
    lines = [
        "# Compatibility matrix",
        "",
        "<!-- generated by `python -m tests.compat --write`; tests/api/test_compatibility.py "
        "fails when this file is stale -->",
        "",
        "Each row is a vendor profile of the fake upstream (`gateway/testing/vendors.py`: the "
        "vendor's documented request rules and wire shapes) behind the gateway with that "
        "vendor's `preset`, over one upstream protocol. Each cell is a check run through the "
        "running gateway with the official `anthropic` SDK, with Claude Code "
        f"{CLAUDE_CODE_SHAPES} request shapes (a `system` message inside `messages`, "
        "`thinking`, `metadata`, `cache_control`, `max_tokens` 64000). `n/a`: the vendor "
        "does not offer it. What each check asserts: see `tests/compat.py`.",
        "",
        "| vendor | protocol | " + " | ".join(CHECKS) + " |",
        "|---|---|" + "---|" * len(CHECKS),
    ]
    notes: list[str] = []
    for (vendor, protocol), results in matrix.items():
        cells = []
        for name in CHECKS:
            ok, note = results[name]
            cell = mark[ok]
            if note and ok is not True:
                notes.append(f"- {vendor} / {protocol} / {name}: {note}")
            cells.append(cell)
        lines.append(f"| {vendor} | {protocol} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += cli_section(matrix)
    return "\n".join(lines) + "\n"


def cli_section(matrix: dict[tuple[str, str], dict[str, Result]]) -> list[str]:
    """The real Claude Code CLI's run of the agent task per row, from CLI_RESULTS: the
    version it was checked with, and which rows it has not been run on."""
    try:
        data = json.loads(CLI_RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    rows = data.get("rows") if isinstance(data.get("rows"), dict) else {}
    version = str(data.get("claude_code") or "")
    lines = ["", "## With the real Claude Code CLI", ""]
    if not version:
        return [*lines, "Not run yet: `python tests/e2e/claude_code_e2e.py --vendor all "
                "--task agent --record`."]
    lines += [
        f"Checked with Claude Code {version} on {data.get('date')} "
        "(`python tests/e2e/claude_code_e2e.py --vendor all --task agent --record`): in "
        "print mode, with thinking on, Claude Code reads a file, then writes a copy and "
        "runs a command in parallel, then answers; every upstream call must reach the "
        "vendor as one it thinks on, and every usage row must say success. Then it is run "
        "with a wrong key, which must fail in under 5 s after exactly one request (401, "
        "`x-should-retry: false`) with the gateway's message; when only the CLI's own "
        "start-up made a run slower (a loaded machine), it is run again, up to 3 times, "
        "and every run's time is listed.",
        "",
    ]
    for vendor, protocol in matrix:
        row = rows.get(f"{vendor}/{protocol}")
        if not isinstance(row, dict):
            lines.append(f"- {vendor} / {protocol}: not run with this version")
            continue
        wrong = row.get("wrong_key") or {}
        runs = row.get("wrong_key_runs") or [wrong]
        walls = ", ".join(f"{r.get('seconds')} s" for r in runs)
        verdict = "passed" if row.get("passed") else "**failed**"
        lines.append(
            f"- {vendor} / {protocol}: {verdict}, {row.get('upstream_calls')} upstream calls "
            f"in {row.get('seconds')} s; wrong key failed in {walls} after "
            f"{wrong.get('message_requests')} request(s) (last run: CLI start-up to its "
            f"request {wrong.get('startup_seconds')} s, answer to exit "
            f"{wrong.get('after_answer_seconds')} s)")
        lines += [f"  - {problem}" for problem in row.get("problems") or []]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        text = render(asyncio.run(run_matrix(Path(tmp))))
    if args.write:
        DOC.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
