"""The least an aiohttp relay can do: the floor under the gateway's cost on this stack.

POST /v1/messages is forwarded byte for byte to `UPSTREAM/v1/messages` over one pooled
`ClientSession` and the answer is copied back as it arrives: no auth, no parsing, no limits,
no accounting, no logging. `bench.py` runs it next to the gateway (same CPU, same upstream) so
the table shows how much of the gateway's cost is aiohttp + uvloop itself.

    python loadtest/floor_relay.py --port 8081 --upstream http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    async with session.post(request.app[UPSTREAM], data=body, headers=headers) as upstream:
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response
        return web.Response(body=await upstream.read(), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream + "/v1/messages"

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/messages", relay)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    args = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
