"""Requests aiohttp's parser rejects, sent to a real server process: answered in the
Anthropic shape, and its log (captured from the process's stderr) never holds the API key
or the cookie that sat in the malformed line, nor a traceback.

Before: a malformed header line was answered in plain text quoting the line, and logged
with a traceback that quoted it too, key or cookie included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from tests.helpers.process import GatewayProcess
from tests.helpers.wire import raw_request

SECRET_KEY = "sk-llmapi-SECRETKEYaaaaaaaaaaaaaaaaaaaaaaaa"
SECRET_COOKIE = "SECRETCOOKIEbbbbbbbbbbbbbbbbbbbb"
BODY = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"x"}]}'


def requests() -> list[tuple[str, bytes]]:
    start = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    length = b"Content-Length: %d\r\n" % len(BODY)
    key, cookie = SECRET_KEY.encode(), SECRET_COOKIE.encode()
    return [
        ("control char in the key", start + length + b"x-api-key: " + key + b"\x01\r\n"),
        ("DEL in the cookie", start + length + b"Cookie: llmapi_session=" + cookie
         + b"\x7f\r\n"),
        ("no colon", start + length + b"x-api-key " + key + b"\r\n"),
        ("space in the name", start + length + b"x api key: " + key + b"\r\n"),
        ("NUL in the bearer", start + length + b"Authorization: Bearer " + key
         + b"\x00x\r\n"),
        ("line too long", start + length + b"Cookie: s=" + cookie + b"c" * 9000 + b"\r\n"),
        ("bad request line", b"POST /v1/messages?key=" + key + b" HTTP/1.1\x01\r\nHost: x\r\n"),
        ("request line too long", b"POST /v1/messages?key=" + key + b"k" * 9000
         + b" HTTP/1.1\r\nHost: x\r\n"),
        ("too many headers", start + length + b"".join(
            b"x-h%d: %s\r\n" % (i, key) for i in range(200))),
        ("bad content-length", start + b"Content-Length: " + key + b"\r\n"),
        ("bad chunk size", start + b"Transfer-Encoding: chunked\r\nx-api-key: " + key
         + b"\r\n"),
    ]


async def test_malformed_requests_are_answered_as_json_and_never_logged_raw(
        tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        for name, head in requests():
            body = b"zz\r\n" + BODY + b"\r\n0\r\n\r\n" if name == "bad chunk size" else BODY
            status, headers, payload = await raw_request(gw.port, head, body)
            assert status == 400, (name, status, payload[:300])
            assert headers["content-type"].startswith("application/json"), (name, headers)
            error = orjson.loads(payload)
            assert error["type"] == "error", (name, error)
            assert error["error"]["type"] == "invalid_request_error", (name, error)
            assert SECRET_KEY not in payload.decode("latin-1"), name
            assert SECRET_COOKIE not in payload.decode("latin-1"), name
        # a body whose chunked framing breaks after the handler started reading it
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\nx-api-key: " + gw.key.encode()
                     + b"\r\n\r\n10\r\n" + BODY[:16] + b"\r\n")
        await writer.drain()
        writer.write(b"zz" + SECRET_KEY.encode() + b"\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.split(b" ", 2)[1] == b"400", raw[:300]
        assert b'"invalid_request_error"' in raw and SECRET_KEY.encode() not in raw
        # the server is fine afterwards, and a good request still works
        status, _, payload = await raw_request(gw.port, (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"x-api-key: " + gw.key.encode() + b"\r\nContent-Length: %d\r\n" % len(BODY)), BODY)
        assert status == 200, payload[:300]
        log = gw.log()
    assert "refused a request" in log or "dropped a malformed request" in log, log[-2000:]
    assert SECRET_KEY not in log and SECRET_COOKIE not in log, log[-4000:]
    assert SECRET_KEY[:20] not in log
    assert "Traceback" not in log, log[-4000:]
