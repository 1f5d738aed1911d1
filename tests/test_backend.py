"""The storage seam's contract (STYLE §20): what every backend must do, proven against each
backend fixture (the local disk today; the object store joins the list with issue 12)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from promoter.backend import Backend
from promoter.localdisk import LocalDisk


@pytest.fixture(params=["local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend[int]]:
    art = tmp_path / "artifacts"
    art.mkdir()
    yield LocalDisk(art)


def source(tmp_path: Path, data: bytes) -> tuple[int, os.stat_result]:
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return fd, os.fstat(fd)


def test_metadata_round_trip_changes_its_version(backend: Backend[int]) -> None:
    """No metadata yet reads None; a write makes the run, and each write a new version."""
    with backend.locked("r1") as h:
        assert backend.read_meta(h, "r1", 1 << 20) is None
        backend.write_meta(h, "r1", b'{"a": 1}')
        first = backend.meta_version("r1")
        backend.write_meta(h, "r1", b'{"a": 22}')
        assert backend.read_meta(h, "r1", 1 << 20) == b'{"a": 22}'
    assert first is not None and backend.meta_version("r1") not in (None, first)
    assert backend.run_ids() == ["r1"] and backend.is_run("r1")


def test_metadata_over_the_limit_is_not_read(backend: Backend[int]) -> None:
    """A metadata object larger than the limit is refused before it is read."""
    from promoter.localdisk import Oversized

    with backend.locked("r1") as h:
        backend.write_meta(h, "r1", b"x" * 100)
        with pytest.raises(Oversized):
            backend.read_meta(h, "r1", 99)


def test_a_held_run_is_refused_at_once_without_waiting(backend: Backend[int]) -> None:
    """wait=False: a second writer of the same run is told at once; other runs are free."""
    with backend.locked("r1"):
        with pytest.raises(BlockingIOError), backend.locked("r1", wait=False):
            pass
        with backend.locked("r2", wait=False):
            pass


def test_put_open_and_remove_a_stored_file(backend: Backend[int], tmp_path: Path) -> None:
    """A file put under a path comes back whole from open_file, hashed; removed, it is gone."""
    fd, st = source(tmp_path, b"hello")
    try:
        with backend.locked("r1") as h:
            copied = backend.put_file(h, "r1", "sub/a.txt", fd, st, True, 1 << 20, None)
            backend.sync_folders(h, "r1", [("sub",)])
    finally:
        os.close(fd)
    assert copied.size == 5 and copied.sha256 is not None
    out, ost = backend.open_file("r1", "sub/a.txt")
    try:
        assert os.read(out, 100) == b"hello" and ost.st_size == 5
    finally:
        os.close(out)
    with backend.locked("r1") as h:
        backend.remove_file(h, "r1", "sub/a.txt")
        backend.remove_file(h, "r1", "sub/a.txt")  # gone already: no error
    with pytest.raises(FileNotFoundError):
        backend.open_file("r1", "sub/a.txt")


def test_a_trashed_run_is_gone_at_once(backend: Backend[int]) -> None:
    """trash_run takes the run out of the listing in one step; empty_trash frees it."""
    with backend.locked("r1") as h:
        backend.write_meta(h, "r1", b"{}")
        backend.trash_run(h, "r1")
    assert backend.run_ids() == [] and not backend.is_run("r1")
    assert backend.meta_version("r1") is None
    backend.empty_trash()


def test_tombstones_round_trip(backend: Backend[int]) -> None:
    """Tombstones are written, listed, read and dropped by run id."""
    assert backend.read_tombstone("r1") is None and backend.tombstones() == []
    with backend.locked("r1") as h:
        backend.write_tombstone(h, "r1", b"stone")
    assert backend.read_tombstone("r1") == b"stone" and backend.tombstones() == ["r1"]
    assert backend.drop_tombstone("r1") and not backend.drop_tombstone("r1")
    assert backend.tombstones() == []
