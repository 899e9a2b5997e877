"""Measure OpenAIStreamConverter throughput (upstream chunks per second) on one core.

The stream is shaped like a real qwen3-coder-plus answer: a role chunk, 2,000 short text
chunks, one tool call whose arguments arrive in 120 fragments, a finish chunk, a usage chunk
and `[DONE]`, as the exact bytes an OpenAI-compatible upstream sends. It is fed in reads of
three sizes: one event per read (live token streaming, the worst case), random 1-4,096 byte
reads, and 16 KiB reads (a burst that queued up in the socket buffer).

The reference is a plain `orjson.loads` + `orjson.dumps` loop over the same chunk payloads in
the same run: the least any JSON-to-JSON converter must do, so the ratio says how much the
SSE parsing and state machine cost on top of it.

    python loadtest/bench_converter.py [--streams N] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.protocol.openai_stream import OpenAIStreamConverter

TEXT_CHUNKS = 2_000
TOOL_FRAGMENTS = 120
TARGET_CHUNKS_PER_S = 100_000
WORDS = (
    " the", " function", " returns", " None", " when", " list", " is", " empty", ".", "\n",
    " We", " should", " check", " `items`", " before", " indexing", ",", " e.g.", " très",
    " 17 × 23", " — ", " résumé", " 😀", "\n\n```python\n", "def", " main", "():", "\n    ",
)  # fmt: skip


def build_stream(seed: int = 7) -> tuple[bytes, list[bytes]]:
    """The upstream bytes of one answer and the JSON payload of each of its chunks."""
    rng = random.Random(seed)
    head: dict[str, Any] = {"id": "chatcmpl-8f3c2a71d94e4b0c9a6e15b2f07d3c11"}
    head |= {"object": "chat.completion.chunk", "created": 1764063512, "model": "qwen3-coder-plus"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return orjson.dumps({**head, "choices": [choice], "usage": None})

    payloads = [chunk({"role": "assistant", "content": ""})]
    for _ in range(TEXT_CHUNKS):
        payloads.append(chunk({"content": "".join(rng.choices(WORDS, k=rng.randint(1, 3)))}))
    call = {"index": 0, "id": "call_5c1e8a0f3b7d4e29a6c2d8f1", "type": "function"}
    header = {**call, "function": {"name": "Edit", "arguments": ""}}
    payloads.append(chunk({"tool_calls": [header]}))
    arguments = orjson.dumps(
        {"file_path": "src/app/main.py", "old_string": "x = 1\n" * 40, "new_string": "x = 2\n" * 40}
    ).decode()
    step = -(-len(arguments) // TOOL_FRAGMENTS)
    for start in range(0, len(arguments), step):
        piece = arguments[start : start + step]
        fragment = {"index": 0, "id": "", "type": "function", "function": {"arguments": piece}}
        payloads.append(chunk({"tool_calls": [fragment]}))
    payloads.append(chunk({}, "tool_calls"))
    usage: dict[str, Any] = {"prompt_tokens": 18_211, "completion_tokens": 2_950}
    usage |= {"total_tokens": 21_161, "prompt_tokens_details": {"cached_tokens": 17_920}}
    payloads.append(orjson.dumps({**head, "choices": [], "usage": usage}))
    wire = b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"
    return wire, payloads


def split_reads(wire: bytes, mode: str, seed: int = 11) -> list[bytes]:
    """The stream cut the way a socket would hand it over."""
    if mode == "event":
        return [event + b"\n\n" for event in wire.split(b"\n\n") if event]
    if mode == "random":
        rng = random.Random(seed)
        reads, start = [], 0
        while start < len(wire):
            size = rng.randint(1, 4096)
            reads.append(wire[start : start + size])
            start += size
        return reads
    size = 16 * 1024
    return [wire[start : start + size] for start in range(0, len(wire), size)]


def convert_once(reads: list[bytes]) -> int:
    conv = OpenAIStreamConverter("claude-sonnet-4-6", "msg_01Bench", input_tokens=18_000)
    size = 0
    for read in reads:
        size += len(conv.feed(read))
    size += len(conv.finish())
    assert conv.done and conv.error is None
    return size


def baseline_once(payloads: list[bytes]) -> int:
    size = 0
    for payload in payloads:
        size += len(orjson.dumps(orjson.loads(payload)))
    return size


def best_seconds(run: Callable[[], object], streams: int, repeat: int) -> float:
    """Best wall time of `repeat` rounds of `streams` runs (least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(streams):
            run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20, help="streams per timed round")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds, best one counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    wire, payloads = build_stream()
    chunks = len(payloads)
    total = chunks * args.streams

    convert_once(split_reads(wire, "event"))  # warm-up, and proves the stream converts cleanly
    baseline_s = best_seconds(lambda: baseline_once(payloads), args.streams, args.repeat)
    baseline_rate = total / baseline_s
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "chunks_per_stream": chunks,
        "upstream_bytes_per_stream": len(wire),
        "streams_per_round": args.streams,
        "rounds": args.repeat,
        "target_chunks_per_s": TARGET_CHUNKS_PER_S,
        "baseline_orjson_chunks_per_s": round(baseline_rate),
        "modes": {},
    }
    print(f"stream: {chunks} chunks, {len(wire):,} bytes; {args.streams} streams x best of "
          f"{args.repeat} rounds, one core")  # fmt: skip
    print(f"{'orjson loads+dumps baseline':<34}{baseline_rate:>12,.0f} chunks/s")
    for mode in ("event", "random", "16k"):
        reads = split_reads(wire, mode)
        out_bytes = convert_once(reads)
        seconds = best_seconds(partial(convert_once, reads), args.streams, args.repeat)
        rate = total / seconds
        results["modes"][mode] = {
            "reads_per_stream": len(reads),
            "chunks_per_s": round(rate),
            "upstream_mb_per_s": round(len(wire) * args.streams / seconds / 1e6, 1),
            "output_bytes_per_stream": out_bytes,
            "ratio_to_baseline": round(rate / baseline_rate, 3),
            "meets_target": rate >= TARGET_CHUNKS_PER_S,
        }
        label = f"converter, {mode} reads ({len(reads)}/stream)"
        print(f"{label:<34}{rate:>12,.0f} chunks/s  {rate / baseline_rate:5.2f}x baseline")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
        print(f"results written to {args.json}")
    if not all(m["meets_target"] for m in results["modes"].values()):
        print(f"below the target of {TARGET_CHUNKS_PER_S:,} chunks/s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
