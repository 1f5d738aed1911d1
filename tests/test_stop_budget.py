"""SIGTERM in a big run exits within seconds (DESIGN §5; probe-15 findings 4 and 6)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from promoter import rules
from promoter.reconcile import reconcile
from promoter.rules import MAX_BATCH_BYTES, byte_chunks
from promoter.settle import Batch
from promoter.stopping import promote_chunks, sizes
from promoter.store import Outcome, PromoteResult, Store
from tests.daemon_helpers import base_config, start_daemon, wait_until
from tests.store_helpers import make_store, write_session_file

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
    metrics = tmp_path / "metrics.prom"
    config = base_config(watch={"settle_ms": 30_000},  # all pending at the signal
                         metrics={"textfile": str(metrics), "interval_s": 60})
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
        # written once more at the stop's end: the files it left, counted
        assert f'promoter_files_total{{result="deferred"}} {float(deferred)}' \
            in metrics.read_text()
    finally:
        d.close()
    d2 = start_daemon(root, base_config())
    try:
        d2.wait_ready(timeout=60)

        def complete() -> bool:
            meta = d2.meta("big-1") or {"artifacts": []}
            return len(meta["artifacts"]) == count

        # each look parses a 9,000-entry metadata.json: 5 a second, not 100, beside the daemon
        wait_until(complete, timeout=60, interval=0.2, what="every file promoted after the restart")
        assert d2.stop() == 0
    finally:
        d2.close()


def _spy_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every promote_files call."""
    sizes: list[int] = []
    real = store.promote_files

    def spy(run_id: str, names: Any) -> list[PromoteResult]:
        names = list(names)
        sizes.append(len(names))
        return real(run_id, names)

    monkeypatch.setattr(store, "promote_files", spy)
    return sizes


def test_the_catch_up_cuts_a_run_by_bytes_too(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With the byte cap at 10 KiB, ten 4 KiB files go in batches of two, all promoted."""
    monkeypatch.setattr(rules, "MAX_BATCH_BYTES", 10 * 1024)
    store = make_store(tmp_path)
    for i in range(10):
        write_session_file(tmp_path, "r1", f"f{i}", b"x" * 4096)
    sizes = _spy_batches(store, monkeypatch)
    assert reconcile(store).count(Outcome.PROMOTED) == 10
    assert sizes == [2] * 5


def test_a_worker_cuts_its_batch_by_bytes(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon batch of ten 4 KiB files, byte cap 10 KiB: five store calls of two files."""
    monkeypatch.setattr(rules, "MAX_BATCH_BYTES", 10 * 1024)
    store = make_store(tmp_path)
    names = [f"f{i}" for i in range(10)]
    for name in names:
        write_session_file(tmp_path, "r1", name, b"x" * 4096)
    sizes = _spy_batches(store, monkeypatch)

    results, deferred = promote_chunks(store, Batch("r1", tuple(names)), lambda: None)
    assert [r.outcome for r in results] == [Outcome.PROMOTED] * 10 and deferred == []
    assert sizes == [2] * 5


def test_once_the_stop_budget_is_spent_no_chunk_starts(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch taken after the stop budget ran out is deferred whole, the store untouched."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a", b"a")
    sizes = _spy_batches(store, monkeypatch)
    results, deferred = promote_chunks(store, Batch("r1", ("a",)),
                                       lambda: time.monotonic() - 1)
    assert results == [] and deferred == ["a"] and sizes == []


def test_once_stopping_chunks_are_cut_by_bytes_too(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """probe-cpu F4: while stopping, a chunk holds at most STOP_BYTES (a bigger file alone),
    so the budget is looked at every few MiB, not after 256 files of 4 MB."""
    store = make_store(tmp_path)
    names = [f"f{i}" for i in range(40)] + ["huge"]
    for name in names:
        write_session_file(tmp_path, "r1", name, b"x")
    sizes = _spy_batches(store, monkeypatch)
    big = {"huge": 3 * (16 << 20)}  # STOP_BYTES is 16 MiB: four 4 MB files a chunk

    def measure(run_id: str, names: Sequence[str]) -> list[tuple[str, int]]:
        return [(name, big.get(name, 4_000_000)) for name in names]  # the sizes the cut believes

    results, deferred = promote_chunks(store, Batch("r1", tuple(names)),
                                       lambda: time.monotonic() + 60, measure=measure)
    assert len(results) == 41 and deferred == []
    assert sizes == [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 1]
    assert rules.MAX_BATCH_BYTES <= 64 << 20  # a chunk begun before the signal: 64 MiB at most


def test_a_batch_is_sized_by_an_lstat_of_each_file(tmp_path: Path) -> None:
    """The sizes a worker cuts its batch by: a file's, a nested one's, a link's own (never
    followed), 0 for one gone or a name no path can hold."""
    write_session_file(tmp_path, "r1", "a", b"x" * 5000)
    write_session_file(tmp_path, "r1", "sub/b", b"y" * 7)
    (tmp_path / "sessions/r1/output/link").symlink_to(tmp_path / "sessions/r1/output/a")
    assert sizes(tmp_path / "sessions", "r1", ["a", "sub/b", "link", "gone", "n\0ul"]) == [
        ("a", 5000), ("sub/b", 7), ("link", len(str(tmp_path / "sessions/r1/output/a"))),
        ("gone", 0), ("n\0ul", 0)]
