"""The run mark at rest (runmark.py, issue 15, tenth round): one file for the life of a run,
renamed between `.listed` and `.unlisted`, so that a write session makes and frees no inode
(on an ext4 without a journal each freed inode taxes every later create for a minute)."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from promoter import runmark
from promoter.layout import MARK, MARK_AT_REST, METADATA
from promoter.metadata import RunMetadata
from promoter.startup import prepare_store
from promoter.store import Outcome, Store
from tests.store_helpers import make_store, write_session_file


def _promote(store: Store, root: Path, run: str, names: list[str]) -> None:
    for name in names:
        write_session_file(root, run, name, f"{run}/{name}".encode())
    assert {r.outcome for r in store.promote_files(run, names)} == {Outcome.PROMOTED}


def _listed(root: Path, run: str) -> list[str]:
    meta = RunMetadata.model_validate_json((root / "artifacts" / run / METADATA).read_bytes())
    return sorted(a.filename for a in meta.artifacts)


def test_sessions_after_the_first_make_and_free_no_inode(tmp_path: Path) -> None:
    """The first session makes the mark and puts it to rest; every later one wakes that
    same inode and puts it back: no create, no unlink, nothing left marked."""
    store = make_store(tmp_path)
    run = tmp_path / "artifacts/r1"
    _promote(store, tmp_path, "r1", ["a.txt"])
    rest = run / MARK_AT_REST
    assert rest.is_file() and rest.stat().st_size == 0
    assert not (run / MARK).exists()
    ino = rest.stat().st_ino
    for i in range(5):
        _promote(store, tmp_path, "r1", [f"b{i}.txt", f"c{i}.txt"])
        assert rest.stat().st_ino == ino
        assert not (run / MARK).exists()
    store.delete_artifact("r1", "a.txt")  # a removal's session too
    assert rest.stat().st_ino == ino and not (run / MARK).exists()
    assert "a.txt" not in _listed(tmp_path, "r1")


def test_a_mark_left_by_a_cut_short_session_is_never_replaced(tmp_path: Path) -> None:
    """A resting mark and a mark some other session left (a crash): waking the resting
    one must not rename over the other (RENAME_NOREPLACE); the found mark stays until the
    repair, which then lists the run and removes it."""
    store = make_store(tmp_path)
    _promote(store, tmp_path, "r1", ["a.txt"])
    prepare_store(store.config)  # marks trusted from here on
    run = tmp_path / "artifacts/r1"
    left = run / MARK
    left.write_bytes(b"left by a crash")
    (run / "files/orphan.txt").write_bytes(b"a copy renamed in, never listed")
    _promote(store, tmp_path, "r1", ["b.txt"])
    assert left.read_bytes() == b"left by a crash"  # not ours: it stays as it was
    assert (run / MARK_AT_REST).is_file()
    prepare_store(store.config)
    assert _listed(tmp_path, "r1") == ["a.txt", "b.txt", "orphan.txt"]
    assert not left.exists()


def test_a_crash_with_the_mark_awake_is_found_at_start(tmp_path: Path) -> None:
    """A session cut short after waking the resting mark leaves `.unlisted` (and no
    `.listed`): the start-up repair walks the run and lists what the crash left."""
    store = make_store(tmp_path)
    _promote(store, tmp_path, "r1", ["a.txt"])
    prepare_store(store.config)
    run = tmp_path / "artifacts/r1"
    os.rename(run / MARK_AT_REST, run / MARK)  # what `set` does, then the crash
    (run / "files/orphan.txt").write_bytes(b"renamed in before the crash")
    prepare_store(store.config)
    assert _listed(tmp_path, "r1") == ["a.txt", "orphan.txt"]
    assert not (run / MARK).exists()


def test_without_renameat2_the_mark_is_made_and_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another C library, or a file system without RENAME_NOREPLACE: the mark is made and
    removed each session as before, and no resting mark appears."""
    monkeypatch.setattr(runmark, "libc_function", lambda name, *args: None)
    store = make_store(tmp_path)
    _promote(store, tmp_path, "r1", ["a.txt"])
    _promote(store, tmp_path, "r1", ["b.txt"])
    run = tmp_path / "artifacts/r1"
    assert not (run / MARK).exists() and not (run / MARK_AT_REST).exists()
    assert _listed(tmp_path, "r1") == ["a.txt", "b.txt"]


def test_rename_noreplace_refuses_an_existing_name(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"s")
    (tmp_path / "dst").write_bytes(b"d")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            runmark.rename_noreplace(fd, "src", "dst")
        assert runmark.rename_noreplace(fd, "missing", "other") is False
        assert runmark.rename_noreplace(fd, "src", "moved") is True
    finally:
        os.close(fd)
    assert (tmp_path / "dst").read_bytes() == b"d"
    assert (tmp_path / "moved").read_bytes() == b"s" and not (tmp_path / "src").exists()


@pytest.mark.parametrize("err", [errno.EPERM, errno.EACCES, errno.EBUSY, errno.EXDEV])
def test_a_refused_rename_falls_back_to_making_the_mark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """A sandbox that answers renameat2 with EPERM, a resting mark made immutable, bind
    mounted or in an overlay's lower layer: the mark is made and removed as before, and
    every file is promoted (probe r10 F1: nothing was promoted any more)."""
    store = make_store(tmp_path)
    _promote(store, tmp_path, "r1", ["a.txt"])  # a resting mark exists from here on

    def refused(*args: object) -> int:
        ctypes.set_errno(err)
        return -1

    monkeypatch.setattr(runmark, "libc_function", lambda name, *args: refused)
    _promote(store, tmp_path, "r1", ["b.txt"])
    _promote(store, tmp_path, "r2", ["c.txt"])
    assert _listed(tmp_path, "r1") == ["a.txt", "b.txt"]
    assert _listed(tmp_path, "r2") == ["c.txt"]
    assert not (tmp_path / "artifacts/r1" / MARK).exists()
    assert not (tmp_path / "artifacts/r2" / MARK).exists()
    store.delete_artifact("r1", "a.txt")
    assert _listed(tmp_path, "r1") == ["b.txt"]
