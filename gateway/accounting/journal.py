"""Write-ahead journal of upstream calls, so a kill -9 cannot make an upstream bill vanish.

An append-only file of JSON lines next to the database (`<db>.journal`):

- `s` (start): written when a request is about to go upstream: who, which model, the
  input estimate;
- `p` (progress): provider, model, attempts and output tokens seen so far, appended for
  every call in flight whose figures changed since the last write;
- `d` (done): the finished usage row, exactly as the recorder will insert it;
- `c` (committed): those request ids are in the database (their `s`/`d` are dead).

An `s` line is handed to the kernel before the request goes upstream, and `d` lines at the
end of the event-loop iteration that made them (one `write` for all of them), so a process
killed with SIGKILL loses none of them, whatever the load: a timer tick can be starved for
seconds on a busy machine, an iteration's end cannot. A background task appends the `p`
lines every `WRITE_INTERVAL` and fsyncs every `FSYNC_INTERVAL` (what a power loss can
take) in a thread, so a slow disk never stalls the event loop. On start, `replay()` reads
the file: every `d` without `c` is inserted (request ids are unique, so a row already
written is skipped) and every `s` without `d` becomes a row with status `interrupted`, the
input estimate and the output tokens last seen. The file is rewritten (compacted) to just
the live entries once it passes `COMPACT_BYTES`, also without blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("llmapi.journal")

WRITE_INTERVAL = 0.02
FSYNC_INTERVAL = 0.2
COMPACT_BYTES = 4 * 1024 * 1024

# (provider, upstream_model, attempts, output tokens so far) of a call in flight
Progress = Callable[[], tuple[str, str, int, int]]


class Journal:
    """The journal file, its write buffer and the live entries a compaction keeps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buffer: list[bytes] = []
        self._starts: dict[str, dict[str, Any]] = {}      # in flight: the start entry
        self._progress: dict[str, Progress] = {}
        self._seen: dict[str, tuple[str, str, int, int]] = {}
        self._done: dict[str, dict[str, Any]] = {}        # finished, not yet committed
        self._fd = -1
        self._size = 0
        self._task: asyncio.Task[None] | None = None
        self._synced_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_pending = False
        self._job: asyncio.Future[None] | None = None   # a thread's fsync or temp file
        self._tail: list[bytes] | None = None           # lines written while compacting

    # ---- the hot path: memory only ----

    def started(self, request_id: str, entry: dict[str, Any]) -> None:
        entry = {"o": "s", "id": request_id, **entry}
        self._starts[request_id] = entry
        self._buffer.append(orjson.dumps(entry) + b"\n")
        # Written now, not at the iteration's end: the upstream request may leave in this
        # same step (a pooled connection writes at once), and a kill between the two would
        # leave an upstream call with no line. One small write per request start.
        if self._loop is not None:
            self._flush()

    def track(self, request_id: str, progress: Progress) -> None:
        """Sample this call's progress on every write tick until it is done."""
        if request_id in self._starts:
            self._progress[request_id] = progress

    def finished(self, row: dict[str, Any]) -> None:
        request_id = row["request_id"]
        self._starts.pop(request_id, None)
        self._progress.pop(request_id, None)
        self._seen.pop(request_id, None)
        self._done[request_id] = row
        self._buffer.append(orjson.dumps({"o": "d", "row": row}) + b"\n")
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Write the buffer when this loop iteration ends (once, for all its entries)."""
        if not self._flush_pending and self._loop is not None:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(OSError):  # the buffer is kept; the tick retries and logs
            self._write_buffer()

    def committed(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._done.pop(request_id, None)
        if request_ids:
            self._buffer.append(orjson.dumps({"o": "c", "ids": request_ids}) + b"\n")

    # ---- the file ----

    def open(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Read what a previous process left: (rows never committed, starts never done).
        Then start a fresh file holding exactly those, so nothing is lost if we die again
        before the replay is committed."""
        done: dict[str, dict[str, Any]] = {}
        starts: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line cut by the kill: everything before it counts
                if not isinstance(entry, dict):
                    continue
                op = entry.get("o")
                if op == "s" and isinstance(entry.get("id"), str):
                    starts[entry["id"]] = entry
                elif op == "p" and entry.get("id") in starts:
                    starts[entry["id"]].update(entry.get("v") or {})
                elif op == "d" and isinstance(entry.get("row"), dict):
                    row = entry["row"]
                    starts.pop(row.get("request_id"), None)
                    done[row.get("request_id")] = row
                elif op == "c" and isinstance(entry.get("ids"), list):
                    for request_id in entry["ids"]:
                        done.pop(request_id, None)
                        starts.pop(request_id, None)
        self._done = dict(done)
        self._rewrite(list(starts.values()))
        return list(done.values()), list(starts.values())

    def _live_lines(self, starts: list[dict[str, Any]]) -> bytes:
        lines = [orjson.dumps(s) + b"\n" for s in starts]
        lines += [orjson.dumps({"o": "d", "row": r}) + b"\n" for r in self._done.values()]
        return b"".join(lines)

    def _tmp_path(self) -> Path:
        return self.path.with_suffix(self.path.suffix + ".tmp")

    def _write_tmp(self, data: bytes) -> None:
        """Write `data` to the temp file and fsync it (blocking: a thread's job in `run`)."""
        fd = os.open(self._tmp_path(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _swap(self, size: int) -> None:
        """Put the temp file in place of the journal and append to it from now on."""
        os.replace(self._tmp_path(), self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = size

    def _rewrite(self, starts: list[dict[str, Any]]) -> None:
        """Replace the file by the live entries, blocking (on start and on a clean stop)."""
        data = self._live_lines(starts)
        self._write_tmp(data)
        self._swap(len(data))

    def _append_progress(self) -> None:
        for request_id, progress in self._progress.items():
            try:
                value = progress()
            except Exception:  # a reply object in a strange state must not stop the journal
                continue
            if self._seen.get(request_id) != value:
                self._seen[request_id] = value
                provider, model, attempts, output = value
                self._buffer.append(orjson.dumps({"o": "p", "id": request_id, "v": {
                    "provider": provider, "upstream_model": model, "attempts": attempts,
                    "output_tokens": output}}) + b"\n")
                self._starts[request_id].update(provider=provider, upstream_model=model,
                                                attempts=attempts, output_tokens=output)

    def _write_buffer(self) -> None:
        if self._fd < 0 or not self._buffer:
            return
        data = b"".join(self._buffer)
        os.write(self._fd, data)  # on OSError the buffer is kept for the next try
        self._buffer.clear()
        self._size += len(data)
        if self._tail is not None:
            self._tail.append(data)

    def write_now(self) -> None:
        """Append the buffer and fresh progress lines, fsync and compact, all blocking: for
        the start-up replay and the clean stop, where no request waits on the loop."""
        self._append_progress()
        self._write_buffer()
        if self._fd >= 0:
            os.fsync(self._fd)
            if self._size > COMPACT_BYTES:
                self._rewrite(list(self._starts.values()))

    async def run(self) -> None:
        """The background tick. fsync and the compaction's temp file go to a thread: a slow
        disk (fsync of a loaded disk can take 100 ms and more) must not stall every request
        on the event loop."""
        while True:
            await asyncio.sleep(WRITE_INTERVAL)
            try:
                self._append_progress()
                self._write_buffer()
                if self._fd < 0:
                    continue
                now = time.monotonic()
                if now - self._synced_at >= FSYNC_INTERVAL:
                    self._synced_at = now
                    await self._in_thread(os.fsync, self._fd)
                if self._size > COMPACT_BYTES:
                    await self._compact()
            except OSError:
                log.exception("journal write failed; entries kept in memory")

    async def _compact(self) -> None:
        """Rewrite the file to the live entries without blocking the loop: the snapshot is
        written and fsynced by a thread while new lines still go to the old file (and are
        kept in `_tail`); then, on the loop, the new file takes its place and gets the tail."""
        self._tail = []
        try:
            data = self._live_lines(list(self._starts.values()))
            await self._in_thread(self._write_tmp, data)
            self._swap(len(data))
            tail = b"".join(self._tail)
            if tail:
                os.write(self._fd, tail)
                self._size += len(tail)
        finally:
            self._tail = None

    async def _in_thread(self, func: Callable[..., None], *args: Any) -> None:
        """Run blocking file work in a thread; `stop` waits for it before closing the fd."""
        self._job = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            await asyncio.shield(self._job)
        finally:
            if self._job.done():
                self._job = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self.run(), name="usage-journal")

    async def stop(self) -> None:
        """Write what is buffered and close (called after the recorder drained)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._job is not None:  # a thread still fsyncing or writing the temp file
            with contextlib.suppress(Exception):
                await self._job
            self._job = None
        self._tail = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.write_now()
                if not self._starts and not self._done:
                    self._rewrite([])  # a clean stop leaves an empty journal
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    @property
    def in_flight(self) -> int:
        return len(self._starts)
