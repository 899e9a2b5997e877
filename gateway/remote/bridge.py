"""`python -m gateway remote-bridge`: run a terminal in a pty and relay it to the gateway's hub.

Started on the user's machine (usually by Claude Code's Bash tool after "remote control"):
it spawns `claude` when installed, else the user's shell (or `--command`), connects to
`ws(s)://SERVER/remote-ws?role=bridge&session=ID` with the API key read from the environment
variable named by `--key-env` (never from the command line), sends the terminal's output in
batches at most every 30 ms, types what the phone sends, and follows its window size.
If the connection drops it reconnects with backoff; it exits when the terminal exits, the
session ends or expires, or another bridge takes over. Unix only (it needs a pty).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import struct
import sys
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("llmapi.bridge")

BATCH_SECONDS = 0.03
MAX_BATCH = 32 * 1024  # raw output bytes per frame, unless the hub's limit is lower
FRAME_OVERHEAD = 64  # the JSON around the base64 data of an output frame
CLOSE_ENDED, CLOSE_REPLACED = 4410, 4000
BACKOFF_START, BACKOFF_MAX = 0.5, 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="the gateway's public URL")
    parser.add_argument("--session", required=True, help="remote session id (rc_...)")
    parser.add_argument("--key-env", default="ANTHROPIC_API_KEY",
                        help="environment variable holding your API key")
    parser.add_argument("--command", dest="program", default=None,
                        help="program to run (default: claude if installed, else $SHELL)")
    parser.add_argument("--cols", type=int, default=100)
    parser.add_argument("--rows", type=int, default=30)


def default_command() -> list[str]:
    if shutil.which("claude"):
        return ["claude"]
    return [os.environ.get("SHELL") or "/bin/sh"]


class Terminal:
    """A child process on a pseudo-terminal."""

    def __init__(self, argv: list[str], cols: int, rows: int) -> None:
        import pty  # Unix only: imported here so the CLI itself still loads on Windows

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the program
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.resize(cols, rows)
        os.set_blocking(self.fd, False)

    def resize(self, cols: int, rows: int) -> None:
        import fcntl
        import termios

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                continue
            view = view[written:]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGHUP)
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Bridge:
    def __init__(self, server: str, session: str, key: str, terminal: Terminal) -> None:
        base = server.rstrip("/")
        scheme = "wss" if base.startswith("https://") else "ws"
        host = base.split("://", 1)[-1]
        self.url = f"{scheme}://{host}/remote-ws?role=bridge&session={session}"
        self.key = key
        self.term = terminal
        self.output = asyncio.Queue[bytes | None]()  # None: the terminal has exited
        self._unsent = bytearray()
        self.frame_bytes = MAX_BATCH  # raw bytes per output frame (the hub's hello lowers it)
        self.done = asyncio.Event()
        self.exit_reason = ""

    def _on_readable(self) -> None:
        try:
            data = os.read(self.term.fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.term.fd)
            self.finish("the terminal exited")
            return
        self.output.put_nowait(data)

    def finish(self, reason: str) -> None:
        if not self.done.is_set():
            self.exit_reason = reason
            self.done.set()
            self.output.put_nowait(None)

    async def run(self) -> str:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.term.fd, self._on_readable)
        backoff = BACKOFF_START
        async with aiohttp.ClientSession() as http:
            while not self.done.is_set():
                try:
                    async with http.ws_connect(self.url, headers={"x-api-key": self.key},
                                               heartbeat=20) as ws:
                        backoff = BACKOFF_START
                        log.info("connected to %s", self.url.split("?")[0])
                        await self._session(ws)
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (401, 403, 404, 410):
                        self.finish(f"the gateway refused the bridge (HTTP {exc.status})")
                        break
                    log.warning("handshake failed (HTTP %s); retrying", exc.status)
                except (aiohttp.ClientError, OSError) as exc:
                    log.warning("connection failed (%s); retrying in %.1fs",
                                type(exc).__name__, backoff)
                if self.done.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.done.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self.term.fd)
        return self.exit_reason

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        sender = asyncio.create_task(self._send_output(ws))
        try:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                self._on_message(orjson.loads(msg.data))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        if ws.close_code in (CLOSE_ENDED, CLOSE_REPLACED):
            self.finish("the session ended" if ws.close_code == CLOSE_ENDED
                        else "another bridge took over")
        elif self.done.is_set() and not ws.closed:
            await ws.close()

    def _on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "input":
            self.term.write(base64.b64decode(data["data"]))
        elif kind == "resize":
            self.term.resize(int(data["cols"]), int(data["rows"]))
        elif kind == "status" and data.get("ended"):
            self.finish("the session ended")
        elif kind == "hello":
            limit = data.get("max_message_bytes")
            if isinstance(limit, int) and not isinstance(limit, bool):
                # base64 makes 4 bytes of every 3; a larger frame would close the connection
                self.frame_bytes = max(1, min(MAX_BATCH, (limit - FRAME_OVERHEAD) * 3 // 4))

    async def _send_output(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Batch terminal output: one frame per 30 ms at most (fewer frames on a phone).

        Cancelled whenever the connection drops; output taken from the queue but not yet
        sent waits in `_unsent` for the next connection, so a reconnect loses nothing.
        """
        exiting = False
        while not exiting:
            if not self._unsent:
                item = await self.output.get()  # cancellation-safe: no item is lost
                if item is None:
                    exiting = True
                else:
                    self._unsent += item
                    await asyncio.sleep(BATCH_SECONDS)
            while not exiting and not self.output.empty() and len(self._unsent) < MAX_BATCH:
                item = self.output.get_nowait()
                if item is None:
                    exiting = True
                else:
                    self._unsent += item
            while self._unsent:  # in frames the hub accepts; what is sent leaves `_unsent`
                piece = bytes(self._unsent[:self.frame_bytes])
                await ws.send_bytes(orjson.dumps({
                    "type": "output", "data": base64.b64encode(piece).decode()}))
                del self._unsent[:len(piece)]
        await ws.send_bytes(orjson.dumps({"type": "status", "state": "exited"}))
        await ws.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s remote-bridge: %(message)s")
    key = os.environ.get(args.key_env, "")
    if not key:
        print(f"remote-bridge: set {args.key_env} to your llmapi API key", file=sys.stderr)
        return 2
    if sys.platform == "win32":
        print("remote-bridge: needs a Unix pty (Linux, macOS, or WSL on Windows)",
              file=sys.stderr)
        return 2
    argv = args.program.split() if args.program else default_command()
    terminal = Terminal(argv, args.cols, args.rows)
    bridge = Bridge(args.server, args.session, key, terminal)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.finish, "stopped by signal")
        return await bridge.run()

    try:
        reason = asyncio.run(main())
    finally:
        terminal.stop()
    print(f"remote-bridge: {reason or 'stopped'}", file=sys.stderr)
    return 0
