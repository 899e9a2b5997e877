"""The write-ahead journal on its own: nothing it was handed is lost to a kill, a slow disk
never stalls the event loop, and a compaction racing new lines keeps every one of them."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting import journal as journal_module
from gateway.accounting.journal import Journal


def row(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "user_id": 1, "output_tokens": 7}


def reopen(path: Path) -> tuple[set[str], set[str]]:
    """What a restarted process would replay: (finished ids, in-flight ids)."""
    done, starts = Journal(path).open()
    return {r["request_id"] for r in done}, {s["id"] for s in starts}


async def test_lines_reach_the_file_when_the_loop_iteration_ends(tmp_path: Path) -> None:
    """No timer has to run: start lines are in the file at once, done lines after one loop
    turn, which is what a kill -9 leaves behind (the background tick is never started)."""
    path = tmp_path / "db.journal"
    journal = Journal(path)
    journal.open()
    journal._loop = asyncio.get_running_loop()  # start() without the background tick
    for i in range(100):
        journal.started(f"s{i}", {"user_id": 1, "input_estimate": 10})
    # a start line is on file before the request can go upstream, without a loop turn
    assert reopen(path) == (set(), {f"s{i}" for i in range(100)})
    journal = Journal(path)  # reopen() rewrote the file: carry on with a fresh handle
    journal.open()
    journal._loop = asyncio.get_running_loop()
    for i in range(50):
        journal.finished(row(f"s{i}"))
    await asyncio.sleep(0)  # one loop iteration
    done, starts = reopen(path)
    assert done == {f"s{i}" for i in range(50)}
    assert starts == {f"s{i}" for i in range(50, 100)}


async def test_a_slow_fsync_does_not_stall_the_loop(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk whose fsync takes 0.5 s (a loaded machine's disk) must not hold every request
    on the loop: fsync runs in a thread while the loop keeps turning."""
    in_fsync = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        time.sleep(0.5)  # the slow disk being simulated, in the journal's thread
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", slow_fsync)
    journal = Journal(tmp_path / "db.journal")
    journal.open()
    journal.start()
    try:
        journal.started("a", {"user_id": 1})
        # a heartbeat on the loop for 1.2 s: two or three fsyncs of 0.5 s happen meanwhile
        worst, last = 0.0, time.monotonic()
        end = last + 1.2
        while last < end:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
        assert in_fsync.is_set(), "the journal never fsynced"
        assert worst < 0.25, f"the loop stalled {worst:.3f} s behind a slow fsync"
    finally:
        await journal.stop()


async def test_compaction_racing_new_lines_keeps_them_all(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Lines written while the compaction's thread writes the snapshot go to the old file
    and are appended to the new one when it takes over: a kill at any point after keeps
    every start and every finished row."""
    monkeypatch.setattr(journal_module, "COMPACT_BYTES", 2_000)
    release = threading.Event()
    writing = threading.Event()
    real_write_tmp = Journal._write_tmp

    def held_write_tmp(self: Journal, data: bytes) -> None:
        writing.set()
        assert release.wait(10)
        real_write_tmp(self, data)

    path = tmp_path / "db.journal"
    journal = Journal(path)
    journal.open()
    monkeypatch.setattr(Journal, "_write_tmp", held_write_tmp)  # the compaction's only
    journal.start()
    try:
        for i in range(100):  # past COMPACT_BYTES: the next tick compacts
            journal.started(f"a{i}", {"user_id": 1, "input_estimate": 10})
        for i in range(60):
            journal.finished(row(f"a{i}"))
        journal.committed([f"a{i}" for i in range(30)])
        deadline = time.monotonic() + 10
        while not writing.is_set():
            assert time.monotonic() < deadline, "no compaction started"
            await asyncio.sleep(0.005)
        for i in range(20):  # while the snapshot is being written
            journal.started(f"b{i}", {"user_id": 1, "input_estimate": 10})
        journal.finished(row("b0"))
        await asyncio.sleep(0)
        release.set()
        while path.with_suffix(".journal.tmp").exists() or journal._tail is not None:
            assert time.monotonic() < deadline, "the compaction never finished"
            await asyncio.sleep(0.005)
        assert b'"a0"' not in path.read_bytes()  # compacted: the committed entries are gone
        monkeypatch.setattr(Journal, "_write_tmp", real_write_tmp)
        done, starts = reopen(path)  # as after a kill -9 now
        assert done == {f"a{i}" for i in range(30, 60)} | {"b0"}
        assert starts == {f"a{i}" for i in range(60, 100)} | {f"b{i}" for i in range(1, 20)}
    finally:
        release.set()
        await journal.stop()
