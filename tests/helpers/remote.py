"""A real `remote-bridge` process for the remote-control tests (API, pages, browser)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from tests.helpers.gateway import ROOT, Gateway


async def start_bridge(gw: Gateway, session_id: str, key: str) -> asyncio.subprocess.Process:
    """`python -m gateway remote-bridge` running `sh` for this session, with this key."""
    env = {**os.environ, "LLMAPI_TEST_KEY": key, "PYTHONPATH": str(ROOT), "PS1": "$ "}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "remote-bridge", "--server", gw.url,
        "--session", session_id, "--key-env", "LLMAPI_TEST_KEY", "--command", "sh",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_bridge(gw: Gateway, session_id: str, proc: asyncio.subprocess.Process,
                      timeout: float = 20) -> None:
    """Until the hub has the bridge in the session's room (or the bridge died)."""
    deadline = time.monotonic() + timeout
    while not gw.remote.bridge_connected(session_id):
        if proc.returncode is not None:
            assert proc.stderr is not None
            raise AssertionError(f"bridge exited: {(await proc.stderr.read()).decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the bridge never connected within {timeout}s")
        await asyncio.sleep(0.02)
