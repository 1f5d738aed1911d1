"""SIGTERM in a big run exits within seconds (DESIGN §5; probe-15 findings 4 and 6)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from promoter.rules import MAX_BATCH_BYTES, byte_chunks
from tests.daemon_helpers import base_config, start_daemon, wait_until

MIB = 1 << 20


def test_byte_chunks_close_a_chunk_before_it_passes_the_byte_cap() -> None:
    """Files are cut in order into chunks whose sizes stay within the cap."""
    sized = [(f"f{i}", 100 * MIB) for i in range(5)]
    assert byte_chunks(sized, 256 * MIB) == [["f0", "f1"], ["f2", "f3"], ["f4"]]


def test_byte_chunks_let_a_huge_file_go_alone() -> None:
    """A file bigger than the cap is a chunk of its own, never an empty chunk."""
    sized = [("a", 1), ("huge", 5 * MAX_BATCH_BYTES), ("b", 1)]
    assert byte_chunks(sized) == [["a"], ["huge"], ["b"]]


def test_byte_chunks_also_cap_the_file_count() -> None:
    """Empty files are bounded by count: 10 files at 4 a chunk make 4 + 4 + 2."""
    sized = [(f"f{i}", 0) for i in range(10)]
    assert [len(c) for c in byte_chunks(sized, MAX_BATCH_BYTES, 4)] == [4, 4, 2]
    assert byte_chunks([]) == []


def test_sigterm_with_thousands_pending_exits_fast_and_the_next_start_catches_up(
        tmp_path: Path) -> None:
    """9,000 closed files pending in one run at SIGTERM: exit 0 within ~5 s, every entry has
    its copy, no temp is left, the rest is logged deferred and the next start promotes it."""
    root = tmp_path / "storage"
    out = root / "sessions" / "big-1" / "output"
    out.mkdir(parents=True)
    config = base_config(watch={"settle_ms": 30_000})  # all pending at the signal
    d = start_daemon(root, config)
    try:
        d.wait_ready()
        count = 9_000
        for i in range(count):
            (out / f"f{i:05}.txt").write_bytes(b"x" * 100)
        signalled = time.monotonic()
        d.send(signal.SIGTERM)
        assert d.proc.wait(30) == 0
        took = time.monotonic() - signalled
        assert took < 6, took  # budget 1.5 s + the chunks in flight + start-up, loaded
        assert not d.events("daemon.thread_stuck")
        meta = d.meta("big-1") or {"artifacts": []}
        stored = {a["filename"] for a in meta["artifacts"]}
        files = root / "artifacts" / "big-1" / "files"
        assert all((files / name).stat().st_size == 100 for name in stored)
        temps = [n for _, _, names in os.walk(root / "artifacts") for n in names
                 if n.startswith(".promoter-")]
        assert temps == []
        deferred = sum(e.get("files", 1) for e in d.events("artifact.deferred", run_id="big-1"))
        assert len(stored) + deferred == count, (len(stored), deferred)
    finally:
        d.close()
    d2 = start_daemon(root, base_config())
    try:
        d2.wait_ready(timeout=60)

        def complete() -> bool:
            meta = d2.meta("big-1") or {"artifacts": []}
            return len(meta["artifacts"]) == count

        wait_until(complete, timeout=60, what="every file promoted after the restart")
        assert d2.stop() == 0
    finally:
        d2.close()
