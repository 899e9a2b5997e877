"""Raw HTTP for tests that must send what no client library will: bytes that are not UTF-8
in a header, malformed header lines, bodies whose Content-Encoding lies.

Also the checks every bad-input test shares: the error has the shape of the route it was
sent to (Anthropic on /v1/messages, OpenAI on /v1/chat/completions and /v1/responses).
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from typing import Any

import orjson

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/responses")
ROUTES = ("/v1/messages", *OPENAI_ROUTES)


async def raw_request(port: int, head: bytes, body: bytes = b"",
                      timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Write `head` (request line and header lines, no blank line) and `body` on one
    connection; return status, lower-case headers and body of the answer (read to EOF:
    `Connection: close` is added)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head_part, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return status, headers, payload


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


def error_of(path: str, status: int, body: bytes) -> tuple[str, str]:
    """(type, message) of an error answer, asserting the shape its route promises."""
    assert status >= 400, (status, body[:300])
    payload: Any = orjson.loads(body)
    if path in OPENAI_ROUTES:
        assert set(payload) == {"error"}, payload
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
    else:
        assert payload["type"] == "error", payload
        error = payload["error"]
        assert set(error) == {"type", "message"}, error
    assert isinstance(error["message"], str) and error["message"], error
    return str(error["type"]), str(error["message"])


def minimal_body(path: str, **extra: Any) -> dict[str, Any]:
    """The smallest valid request body for each route, plus `extra` fields."""
    if path == "/v1/messages":
        body: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 32,
                                "messages": [{"role": "user", "content": "hi"}]}
    elif path == "/v1/chat/completions":
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    else:
        body = {"model": "gpt-4o", "input": "hi"}
    body.update(extra)
    return body


HOLE = "__raw_json_here__"


def nested_json(levels: int) -> bytes:
    """JSON text `levels` objects deep, `{"a":{"a":...1}}` (orjson itself cannot write it
    past 254 levels, which is why the gateway must refuse it before it tries)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def body_with(body: dict[str, Any], raw: bytes) -> bytes:
    """`body` as JSON with the string `HOLE` replaced by the raw JSON text `raw`."""
    text = orjson.dumps(body)
    assert text.count(b'"' + HOLE.encode() + b'"') == 1
    return text.replace(b'"' + HOLE.encode() + b'"', raw)


@functools.cache
def gzip_bomb(inflated: int) -> bytes:
    """One gzip member (RFC 1952) of `inflated` zero bytes in about inflated / 1000 bytes.

    Built from one compressed MiB repeated: after a full flush the compressor starts from a
    clean state, so every MiB compresses to the same bytes; the trailer carries the real
    CRC-32 and size, so any decompressor inflates the whole `inflated` bytes."""
    mib = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    assert again == block
    count = inflated >> 20
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(mib, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (count << 20) & 0xFFFFFFFF)
    return header + block * count + packer.flush(zlib.Z_FINISH) + trailer
