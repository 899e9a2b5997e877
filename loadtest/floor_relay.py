"""The least an aiohttp-served relay can do: the floor under the gateway's cost on this stack.

POST /v1/messages and POST /v1/chat/completions are forwarded byte for byte to the same path
on UPSTREAM over one pooled upstream client and the answer is copied back as it arrives: no
auth, no parsing, no limits, no accounting, no logging. `bench.py` runs it next to the
gateway (same CPU, same upstream) so the table shows how much of the gateway's cost is the
HTTP stack itself. `--client aiohttp` (the `aiohttp-floor` row) uses aiohttp's
`ClientSession`; `--client lean` (the `lean-floor` row) the gateway's lean upstream client
(gateway/providers/lean_client.py), so the two rows show what the client alone costs.

    python loadtest/floor_relay.py --port 8081 --upstream http://127.0.0.1:8090 [--client lean]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.providers.lean_client import LeanClient, Timeouts

SESSION = web.AppKey("session", aiohttp.ClientSession)
LEAN = web.AppKey("lean", LeanClient)
UPSTREAM = web.AppKey("upstream", str)
HEADERS = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
SSE = {"Content-Type": "text/event-stream"}


async def relay_aiohttp(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(request.app[UPSTREAM] + request.path, data=body,
                            headers=HEADERS) as upstream:
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            response = web.StreamResponse(headers=SSE)
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response
        return web.Response(body=await upstream.read(), content_type="application/json")


async def relay_lean(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    upstream = await request.app[LEAN].post(request.app[UPSTREAM] + request.path, body, HEADERS)
    try:
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            response = web.StreamResponse(headers=SSE)
            await response.prepare(request)
            async for data in upstream.iter_any():
                await response.write(data)
            await response.write_eof()
            return response
        return web.Response(body=await upstream.read(), content_type="application/json")
    finally:
        upstream.release()


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(upstream: str, client: str = "aiohttp") -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream

    async def clients(app: web.Application):  # type: ignore[no-untyped-def]
        if client == "lean":
            app[LEAN] = LeanClient(Timeouts())
            yield
            await app[LEAN].close()
        else:
            app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            yield
            await app[SESSION].close()

    app.cleanup_ctx.append(clients)
    handler = relay_lean if client == "lean" else relay_aiohttp
    app.router.add_post("/v1/messages", handler)
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--client", choices=("aiohttp", "lean"), default="aiohttp")
    args = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(build_app(args.upstream, args.client), host="127.0.0.1", port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
