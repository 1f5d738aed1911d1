"""Issue 15, big files: a copy starts its writeback as it is written, a batch of big copies is
flushed file by file (several at once on the pipeline's helpers, never by a syncfs that would
also wait for the agents' output), and every entry is still durable before it appears."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promoter import batchcopy, safeio, writeback
from promoter.layout import MARK
from promoter.safeio import CopyPools, SourceChanged, copy_and_hash, folder, open_regular
from promoter.store import Outcome
from tests.store_helpers import make_store, write_session_file
from tests.test_batching import IoTrace

BIG = writeback.EARLY_WRITEBACK_BYTES + 4096 + 17  # a big copy, not a whole number of chunks


@pytest.fixture
def pools() -> Iterator[CopyPools]:
    helpers = CopyPools()
    yield helpers
    helpers.shutdown()


def _content(i: int, size: int) -> bytes:
    return (b"%06d" % i) * (size // 6) + b"x" * (size % 6)


def test_big_copies_are_flushed_one_by_one_on_the_helpers_and_listed_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: CopyPools) -> None:
    """20 big copies: no syncfs, an fsync each (on the helper threads), each before its rename,
    folders flushed before metadata.json lists them; each copy's writeback started."""
    store = make_store(tmp_path)
    store.pools = pools
    names = [f"f{i:02d}.bin" if i % 2 else f"sub/f{i:02d}.bin" for i in range(20)]
    for i, name in enumerate(names):
        write_session_file(tmp_path, "r1", name, _content(i, BIG))
    started: list[int] = []
    real_start = writeback.start_writeback

    def counting(fd: int, offset: int = 0, length: int = 0) -> bool:
        started.append(length)
        return real_start(fd, offset, length)

    monkeypatch.setattr(safeio, "start_writeback", counting)
    trace = IoTrace(monkeypatch)
    results = store.promote_files("r1", names)
    monkeypatch.undo()
    assert {r.outcome for r in results} == {Outcome.PROMOTED}
    assert ("syncfs",) not in trace.log
    assert sum(1 for item in trace.log if item[0] == "fsync" and (
        item[1].endswith(".bin") or item[1].startswith("unnamed-"))) == len(names)
    assert trace.check_durable_before_listed() == len(names)
    assert sum(started) == BIG * len(names)  # every byte of every copy, once
    meta = store.get_run("r1")
    for i, name in enumerate(names):
        entry = next(a for a in meta.artifacts if a.filename == name)
        data = (tmp_path / "artifacts" / "r1" / "files" / name).read_bytes()
        assert data == _content(i, BIG)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()


def test_many_small_copies_beside_a_big_one_still_take_one_syncfs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 small copies and a big one: one syncfs covers them all (the 4 KiB path unchanged)."""
    store = make_store(tmp_path)
    names = [f"s{i:02d}.txt" for i in range(batchcopy.SYNCFS_MIN_FILES)] + ["big.bin"]
    for i, name in enumerate(names):
        write_session_file(tmp_path, "r1", name, _content(i, BIG if name == "big.bin" else 100))
    trace = IoTrace(monkeypatch)
    results = store.promote_files("r1", names)
    monkeypatch.undo()
    assert {r.outcome for r in results} == {Outcome.PROMOTED}
    assert ("syncfs",) in trace.log
    assert trace.check_durable_before_listed() == len(names)


@pytest.mark.parametrize("failing", [0, 3])
def test_a_failed_flush_on_a_helper_fails_the_batch_with_no_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: CopyPools, failing: int) -> None:
    """EIO from one of the concurrent fsyncs: every file FAILED, nothing stored or listed, no
    temp left (the run's new mark, flushed with them, stays: runmark.py), the other flushes
    finished first; the retry promotes them all."""
    store = make_store(tmp_path)
    store.pools = pools
    names = [f"f{i}.bin" for i in range(5)]
    for i, name in enumerate(names):
        write_session_file(tmp_path, "r1", name, _content(i, BIG))
    real_fsync = os.fsync
    calls: list[int] = []

    def flaky(fd: int) -> None:
        calls.append(fd)
        if len(calls) == failing + 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    results = store.promote_files("r1", names)
    monkeypatch.undo()
    assert {r.outcome for r in results} == {Outcome.FAILED}
    assert len(calls) == len(names) + 1  # no flush left running when the batch gave up
    run = tmp_path / "artifacts" / "r1"
    assert [p.name for p in run.rglob("*") if p.is_file()] == [MARK]
    assert {r.outcome for r in store.promote_files("r1", names)} == {Outcome.PROMOTED}


def test_a_copy_is_whole_where_the_kernel_has_no_sync_file_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sync_file_range (another C library) the copy is the same, only not started early."""
    monkeypatch.setattr(writeback, "libc_function", lambda name, *types: None)
    assert writeback.start_writeback(0) is False
    assert writeback.syncfs(0) == -1
    src = tmp_path / "src.bin"
    data = os.urandom(3 * safeio.CHUNK + 5)
    src.write_bytes(data)
    (tmp_path / "out").mkdir()
    with folder(tmp_path) as base, folder(tmp_path / "out") as out:
        fd, st = open_regular(base, "src.bin", allow_hardlinks=False)
        try:
            result = copy_and_hash(fd, st, out, "copy.bin", checksum=True, max_bytes=1 << 30)
        finally:
            os.close(fd)
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert os.stat(tmp_path / "out" / "copy.bin").st_mtime_ns == st.st_mtime_ns


def test_start_writeback_is_a_hint_that_never_raises(tmp_path: Path) -> None:
    """A real file: accepted; a descriptor that is no file: refused, no exception."""
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        assert writeback.start_writeback(f.fileno()) is True
    r, w = os.pipe()
    try:
        assert writeback.start_writeback(r) is False
    finally:
        os.close(r)
        os.close(w)


def test_a_source_truncated_mid_copy_is_tried_again_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent cuts its file while the copy reads it: SourceChanged, no temp left behind."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 * safeio.CHUNK))
    (tmp_path / "out").mkdir()
    real_readv = os.readv
    reads: list[int] = []

    def cutting(fd: int, buffers: Any) -> int:
        reads.append(fd)
        if len(reads) == 2:
            os.truncate(src, safeio.CHUNK + 10)
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", cutting)
    with folder(tmp_path) as base, folder(tmp_path / "out") as out:
        fd, st = open_regular(base, "src.bin", allow_hardlinks=False)
        try:
            with pytest.raises(SourceChanged):
                copy_and_hash(fd, st, out, "copy.bin", checksum=True, max_bytes=1 << 30)
        finally:
            os.close(fd)
    assert os.listdir(tmp_path / "out") == []


def test_a_source_that_grows_mid_copy_is_given_up_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grows while copied is SourceChanged as soon as the copy passes the size it
    started from: not after reading all of its growth (a probe saw a SIGTERM wait 15 s)."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * safeio.CHUNK))
    (tmp_path / "out").mkdir()
    real_readv = os.readv
    read = [0]

    def counting(fd: int, buffers: Any) -> int:
        n = real_readv(fd, buffers)
        read[0] += n
        return n

    with folder(tmp_path) as base, folder(tmp_path / "out") as out:
        fd, st = open_regular(base, "src.bin", allow_hardlinks=False)
        with src.open("ab") as grow:  # the agent appends 64 chunks after the look
            grow.write(b"\0" * (64 * safeio.CHUNK))
        monkeypatch.setattr(os, "readv", counting)
        try:
            with pytest.raises(SourceChanged):
                copy_and_hash(fd, st, out, "copy.bin", checksum=True, max_bytes=1 << 40)
        finally:
            monkeypatch.undo()
            os.close(fd)
    assert read[0] <= st.st_size + safeio.CHUNK
    assert os.listdir(tmp_path / "out") == []
