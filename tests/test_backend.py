"""The storage seam's contract (STYLE §20): what every backend must do, proven against each
backend: the local disk and the object store on a real SeaweedFS (DESIGN §10)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promoter.backend import Backend, LostRace
from promoter.localdisk import LocalDisk, Oversized

pytest_plugins = ("s3_fixtures",)
LIMIT = 1 << 20


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend[Any]]:
    if request.param == "local":
        art = tmp_path / "artifacts"
        art.mkdir()
        yield LocalDisk(art)
        return
    from promoter.s3backend import S3Backend

    yield S3Backend(request.getfixturevalue("objstore"))


def source(tmp_path: Path, data: bytes) -> tuple[int, os.stat_result]:
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return fd, os.fstat(fd)


def test_metadata_round_trip_changes_its_version(backend: Backend[Any]) -> None:
    """No metadata yet reads None; a write makes the run, and each write a new version."""
    with backend.locked("r1") as h:
        assert backend.read_meta(h, "r1", LIMIT) is None
        backend.write_meta(h, "r1", b'{"a": 1}')
        first = backend.meta_version("r1")
        backend.write_meta(h, "r1", b'{"a": 22}')
        assert backend.read_meta(h, "r1", LIMIT) == b'{"a": 22}'
    assert first is not None and backend.meta_version("r1") not in (None, first)
    assert backend.run_ids() == ["r1"] and backend.is_run("r1")


def test_metadata_over_the_limit_is_not_read(backend: Backend[Any]) -> None:
    """A metadata object larger than the limit is refused before it is read."""
    with backend.locked("r1") as h:
        backend.read_meta(h, "r1", LIMIT)
        backend.write_meta(h, "r1", b"x" * 100)
        with pytest.raises(Oversized):
            backend.read_meta(h, "r1", 99)


def test_two_sessions_on_one_run_never_both_write_from_one_read(
        backend: Backend[Any]) -> None:
    """The compare-and-set: the local lock refuses a second session at once; on the object
    store the second session's write wins and the first's, from a stale read, is LostRace."""
    with backend.locked("r1") as first:
        assert backend.read_meta(first, "r1", LIMIT) is None
        try:
            with backend.locked("r1", wait=False) as second:
                assert backend.read_meta(second, "r1", LIMIT) is None
                backend.write_meta(second, "r1", b"second")
        except BlockingIOError:
            assert isinstance(backend, LocalDisk)  # the lock is the compare-and-set
            backend.write_meta(first, "r1", b"first")
        else:
            with pytest.raises(LostRace):
                backend.write_meta(first, "r1", b"first")
        with backend.locked("r2", wait=False):  # other runs are free
            pass
    with backend.reading() as h:
        assert backend.read_meta(h, "r1", LIMIT) in (b"first", b"second")


def test_put_read_list_and_remove_a_stored_file(backend: Backend[Any], tmp_path: Path) -> None:
    """A file put under a path comes back whole from read_file, hashed, listed; a ranged read
    gives its bytes; removed, it is gone."""
    fd, st = source(tmp_path, b"hello world")
    try:
        with backend.locked("r1") as h:
            copied = backend.put_file(h, "r1", "sub/a.txt", fd, st, True, 1 << 20, None,
                                      agent_id="viz")
            backend.sync_folders(h, "r1", [("sub",)])
    finally:
        os.close(fd)
    assert copied.size == 11 and copied.sha256 is not None
    assert backend.list_files("r1") == ["sub/a.txt"]
    with backend.read_file("r1", "sub/a.txt") as read:
        assert read.size == 11 and b"".join(read.chunks()) == b"hello world"
        assert b"".join(read.chunks(6, 9)) == b"wor" and b"".join(read.chunks(11)) == b""
        assert read.sha256 in (None, copied.sha256)
    with backend.locked("r1") as h:
        backend.remove_file(h, "r1", "sub/a.txt", "0" * 64)  # another version's: stays
        if read.sha256 is not None:
            assert backend.list_files("r1") == ["sub/a.txt"]
        backend.remove_file(h, "r1", "sub/a.txt", copied.sha256)
        backend.remove_file(h, "r1", "sub/a.txt")  # gone already: no error
    with pytest.raises(FileNotFoundError):
        backend.read_file("r1", "sub/a.txt")
    assert backend.list_files("r1") == []


def test_a_trashed_run_is_gone_at_once(backend: Backend[Any], tmp_path: Path) -> None:
    """trash_run takes the run out of the listing with its copies; empty_trash frees it."""
    fd, st = source(tmp_path, b"data")
    try:
        with backend.locked("r1") as h:
            backend.read_meta(h, "r1", LIMIT)
            backend.write_meta(h, "r1", b"{}")
            backend.put_file(h, "r1", "a.txt", fd, st, True, 1 << 20, None)
            backend.trash_run(h, "r1")
    finally:
        os.close(fd)
    assert backend.run_ids() == [] and not backend.is_run("r1")
    assert backend.meta_version("r1") is None and backend.list_files("r1") == []
    backend.empty_trash()
    backend.clean_leftovers()


def test_tombstones_round_trip(backend: Backend[Any]) -> None:
    """Tombstones are written, listed, read and dropped by run id."""
    assert backend.read_tombstone("r1") is None and backend.tombstones() == []
    with backend.locked("r1") as h:
        backend.write_tombstone(h, "r1", b"stone")
    assert backend.read_tombstone("r1") == b"stone" and backend.tombstones() == ["r1"]
    assert backend.drop_tombstone("r1") and not backend.drop_tombstone("r1")
    assert backend.tombstones() == []


def test_orphan_copies_are_found_and_described(backend: Backend[Any], tmp_path: Path) -> None:
    """A copy whose entry was never written (a crash between the two) is seen by has_files
    and described by stored_entries with its size and sha256, for the rebuild."""
    from promoter.context import RunContext

    fd, st = source(tmp_path, b"orphan")
    try:
        with backend.locked("r1") as h:
            copied = backend.put_file(h, "r1", "o.txt", fd, st, True, 1 << 20, None,
                                      agent_id="maker")
    finally:
        os.close(fd)
    with backend.locked("r1") as h:
        assert backend.has_files(h, "r1") and not backend.has_files(h, "r2")
        [entry] = backend.stored_entries(h, "r1", RunContext(), True)
    assert (entry.filename, entry.size_bytes, entry.sha256) == ("o.txt", 6, copied.sha256)
    assert backend.is_run("r1")
