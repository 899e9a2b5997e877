"""`first_output`: the wait for a stream's first bytes, with one timer in the caller's task.

The upstream is played by an async generator that does what `UpstreamStream._produce` does:
it stamps `last_read` on every read and yields b"" for reads that produce no client bytes
(SSE keep-alive comments). The end-to-end versions of these cases run through the gateway in
tests/api/test_vendor_relay.py (DeepSeek's `: keep-alive` queue, `queue_timeout`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from gateway.config import ProviderConfig
from gateway.providers.base import UpstreamError
from gateway.providers.http import first_output


def config(first_byte: float, queue: float) -> ProviderConfig:
    return ProviderConfig("p", "openai", first_byte_timeout=first_byte, queue_timeout=queue)


async def upstream(last_read: list[float], beats: int, every: float, tasks: list[int],
                   then: bytes | None = b"data") -> AsyncGenerator[bytes, None]:
    """`beats` keep-alive reads `every` seconds apart, then `then` (None: silence)."""
    tasks.append(len(asyncio.all_tasks()))
    for _ in range(beats):
        await asyncio.sleep(every)
        last_read[0] = time.monotonic()
        yield b""
    if then is None:
        await asyncio.Event().wait()
    yield then or b""


async def test_keep_alive_is_liveness_past_first_byte_timeout() -> None:
    last_read, tasks = [time.monotonic()], []
    before = len(asyncio.all_tasks())
    started = time.monotonic()
    out = await first_output(upstream(last_read, 8, 0.1, tasks), config(0.3, 10), last_read)
    assert out == b"data"
    assert time.monotonic() - started >= 0.8  # well past first_byte_timeout
    assert tasks == [before]  # the read ran in the caller's task: no task per stream


async def test_silence_after_the_headers_times_out_after_first_byte_timeout() -> None:
    last_read, tasks = [time.monotonic()], []
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await first_output(upstream(last_read, 2, 0.1, tasks, then=None), config(0.3, 10),
                           last_read)
    elapsed = time.monotonic() - started
    assert info.value.reason == "timeout" and info.value.client_status == 504
    assert 0.5 <= elapsed < 0.9  # 0.2 s of beats, then 0.3 s of silence


async def test_queued_too_long_is_its_own_error() -> None:
    last_read, tasks = [time.monotonic()], []
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await first_output(upstream(last_read, 1000, 0.05, tasks), config(0.3, 0.6),
                           last_read)
    elapsed = time.monotonic() - started
    assert info.value.reason == "queued" and "queued for 0.6 s" in info.value.message
    assert 0.6 <= elapsed < 1.0


async def test_a_prompt_answer_leaves_no_timer_behind() -> None:
    """The timer must not fire into whatever the task awaits next (the rest of the stream)."""
    last_read, tasks = [time.monotonic()], []
    for _ in range(3):
        assert await first_output(upstream(last_read, 0, 0, tasks), config(0.1, 0.2),
                                  last_read) == b"data"
    await asyncio.sleep(0.4)  # past both deadlines: a stray timer would cancel this sleep
    last_read[0] = time.monotonic()
    # and after keep-alives that re-armed it
    assert await first_output(upstream(last_read, 3, 0.05, tasks), config(0.1, 5),
                              last_read) == b"data"
    await asyncio.sleep(0.3)


async def test_an_outside_cancel_stays_a_cancel() -> None:
    """A client that goes away cancels the wait: that is CancelledError, not a timeout."""
    last_read, tasks = [time.monotonic()], []
    wait = asyncio.ensure_future(first_output(upstream(last_read, 0, 0, tasks, then=None),
                                              config(5, 10), last_read))
    await asyncio.sleep(0.05)
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait


async def test_hundreds_of_waits_at_once_each_keep_their_own_deadline() -> None:
    """Half are kept alive past first_byte_timeout and answer; half go silent and time out."""
    async def one(i: int) -> str:
        last_read: list[float] = [time.monotonic()]
        tasks: list[int] = []
        alive = i % 2 == 0
        gen = upstream(last_read, 16 if alive else 1, 0.05, tasks,
                       then=b"x" if alive else None)
        try:
            return (await first_output(gen, config(0.5, 10), last_read)).decode()
        except UpstreamError as exc:
            return exc.reason
    results = await asyncio.gather(*(one(i) for i in range(400)))
    assert results.count("x") == 200 and results.count("timeout") == 200
