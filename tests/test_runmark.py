"""Run marks (runmark.py, issue 15): the start-up repair walks files/ only where a write may
have been cut short, and a crash between a copy's rename and its metadata write is still found."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from promoter import batchcopy, placing, recovery, runmark
from promoter.layout import MARK, METADATA, REPAIRED
from promoter.localdisk import LocalDisk
from promoter.metadata import RunMetadata
from promoter.reconcile import RETRY_ROUNDS, reconcile
from promoter.startup import prepare, prepare_store
from promoter.store import Outcome, Store
from tests.store_helpers import make_store, write_session_file


def _meta(root: Path, run: str) -> RunMetadata:
    return RunMetadata.model_validate_json((root / "artifacts" / run / METADATA).read_bytes())


def _listed(root: Path, run: str) -> dict[str, str | None]:
    return {a.filename: a.sha256 for a in _meta(root, run).artifacts}


def _stored(root: Path, run: str) -> dict[str, str]:
    files = root / "artifacts" / run / "files"
    return {str(p.relative_to(files)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files.rglob("*") if p.is_file()}


def _walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs whose files/ the repair walks, in order."""
    walked: list[str] = []
    real = recovery.relist

    def counted(art: int, meta: RunMetadata, *args: Any) -> Any:
        walked.append(meta.run_id)
        return real(art, meta, *args)

    monkeypatch.setattr(recovery, "relist", counted)
    return walked


def _trace_mark_renames(patch: pytest.MonkeyPatch, log: list[str]) -> None:
    """Log "mark" when the resting mark is woken, "unmark" when the mark is put to rest."""
    real = runmark.rename_noreplace

    def traced(dir_fd: int, src: str, dst: str) -> bool:
        done = real(dir_fd, src, dst)
        if done:
            log.append("mark" if dst == MARK else "unmark")
        return done

    patch.setattr(runmark, "rename_noreplace", traced)


def _promoted(tmp_path: Path, runs: dict[str, list[str]]) -> Store:
    """A store whose runs are promoted and repaired once (marks trusted from then on)."""
    store = make_store(tmp_path)
    for run, names in runs.items():
        for name in names:
            write_session_file(tmp_path, run, name, f"{run}/{name}".encode())
        assert {r.outcome for r in store.promote_files(run, names)} == {Outcome.PROMOTED}
    prepare_store(store.config)
    return store


def test_a_clean_store_is_walked_once_then_only_its_marked_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No `.repaired` yet (a store an older promoter wrote): every run is walked, then trusted;
    a promotion leaves no mark; the next start walks only a marked run."""
    store = make_store(tmp_path)
    for run in ("r1", "r2", "r3"):
        write_session_file(tmp_path, run, "a.txt", b"a")
        store.promote_files(run, ["a.txt"])
    assert not list(tmp_path.glob(f"artifacts/*/{MARK}"))
    walked = _walks(monkeypatch)
    prepare(Store(store.config), create=False)
    assert sorted(walked) == ["r1", "r2", "r3"]
    assert (tmp_path / "artifacts" / REPAIRED).exists()
    walked.clear()
    (tmp_path / "artifacts/r2" / MARK).touch()
    prepare(Store(store.config), create=False)
    assert walked == ["r2"]
    assert not (tmp_path / "artifacts/r2" / MARK).exists()
    walked.clear()
    prepare(Store(store.config), create=False)
    assert walked == []


def test_a_failed_repair_leaves_the_store_untrusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run's repair fails: `.repaired` is not written, so the next start walks every run."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    store.promote_files("r1", ["a.txt"])

    def broken(self: Store, run_id: str) -> bool:
        raise RuntimeError("injected")

    monkeypatch.setattr(Store, "repair", broken)
    prepare(Store(store.config), create=False)
    assert not (tmp_path / "artifacts" / REPAIRED).exists()


_CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from promoter.config import load_config
    from promoter.localdisk import LocalDisk
    from promoter.store import Store
    root, run, name, at = sys.argv[1:5]
    config = load_config(None, {}, root)
    def die(*args, **kw):
        os._exit(9)  # the process is gone: no finally, no clean-up, as a kill -9
    setattr(LocalDisk, at, die)
    Store(config).promote_files(run, [name]) if at == "write_meta" else \\
        Store(config).delete_artifact(run, name)
""")


def _crash(root: Path, run: str, name: str, at: str) -> None:
    """Promote (or remove) `name` in a process that dies where `at` (a LocalDisk method)
    would have run: after the copy's rename, before its metadata write (or before the
    removal, after the entry went)."""
    done = subprocess.run([sys.executable, "-c", _CRASH, str(root), run, name, at],
                          capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr.decode()[-2000:]


@pytest.mark.parametrize("rewrite", [False, True])
def test_a_crash_between_rename_and_metadata_write_is_found_at_start(
        tmp_path: Path, rewrite: bool) -> None:
    """A real process death after the copies' renames: the run stays marked, and the next
    start lists the new copy (or the rewritten one's new digest), then drops the mark."""
    store = _promoted(tmp_path, {"r1": ["a.txt", "sub/b.txt"], "r2": ["c.txt"]})
    name = "a.txt" if rewrite else "sub/new.txt"
    write_session_file(tmp_path, "r1", name, b"the version the crash left unlisted")
    _crash(tmp_path, "r1", name, "write_meta")
    assert (tmp_path / "artifacts/r1" / MARK).is_file()
    assert _listed(tmp_path, "r1") != _stored(tmp_path, "r1")  # the leftover is there
    prepare(Store(store.config), create=False)
    assert _listed(tmp_path, "r1") == _stored(tmp_path, "r1")
    assert name in _listed(tmp_path, "r1")
    assert not (tmp_path / "artifacts/r1" / MARK).exists()


def test_a_crash_between_an_entrys_removal_and_its_copys_is_found_at_start(
        tmp_path: Path) -> None:
    """`rm RUN FILE` marks the run before the entry goes: a death before the copy's removal
    leaves it marked, and the start finishes the removal (deleted stays deleted)."""
    store = _promoted(tmp_path, {"r1": ["a.txt", "b.txt"]})
    _crash(tmp_path, "r1", "a.txt", "remove_file")
    assert (tmp_path / "artifacts/r1" / MARK).is_file()
    assert "a.txt" not in _listed(tmp_path, "r1")
    assert "a.txt" in _stored(tmp_path, "r1")  # the copy the crash left
    prepare(Store(store.config), create=False)
    assert _listed(tmp_path, "r1") == _stored(tmp_path, "r1")
    assert set(_stored(tmp_path, "r1")) == {"b.txt"}
    assert [r.filename for r in _meta(tmp_path, "r1").removed] == ["a.txt"]
    assert not (tmp_path / "artifacts/r1" / MARK).exists()


def test_a_removed_name_promoted_again_after_its_rewrite_is_listed_at_start(
        tmp_path: Path) -> None:
    """Only a copy no newer than its removal is a removal's leftover: a rewrite promoted
    after `rm` and cut short before its metadata write is listed, its removal dropped."""
    store = _promoted(tmp_path, {"r1": ["a.txt", "b.txt"]})
    store.delete_artifact("r1", "a.txt")
    removed_at = _meta(tmp_path, "r1").removed[0].removed_at.timestamp()
    path = write_session_file(tmp_path, "r1", "a.txt", b"rewritten after rm")
    os.utime(path, (removed_at + 5, removed_at + 5))
    _crash(tmp_path, "r1", "a.txt", "write_meta")
    prepare(Store(store.config), create=False)
    assert _listed(tmp_path, "r1") == _stored(tmp_path, "r1")
    assert "a.txt" in _listed(tmp_path, "r1")
    assert _meta(tmp_path, "r1").removed == []


def test_a_fifo_planted_as_the_repaired_marker_never_blocks_a_start(tmp_path: Path) -> None:
    """`.repaired` as a FIFO with no reader: the start neither opens it nor hangs (a
    blocking open for writing would wait for a reader for ever)."""
    store = _promoted(tmp_path, {"r1": ["a.txt"]})
    (tmp_path / "artifacts" / REPAIRED).unlink()
    os.mkfifo(tmp_path / "artifacts" / REPAIRED)
    done = subprocess.run([sys.executable, "-m", "promoter", "reconcile", "--root",
                           str(tmp_path)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.lstat(tmp_path / "artifacts" / REPAIRED).st_mode)
    prepare(Store(store.config), create=False)  # in process too: returns


def test_a_removal_that_finishes_leaves_no_mark(tmp_path: Path) -> None:
    """`rm RUN FILE` done: entry and copy gone (the removal flushed), the mark removed."""
    store = _promoted(tmp_path, {"r1": ["a.txt", "b.txt"]})
    store.delete_artifact("r1", "a.txt")
    assert _listed(tmp_path, "r1") == _stored(tmp_path, "r1")
    assert not (tmp_path / "artifacts/r1" / MARK).exists()


def test_a_failed_metadata_write_keeps_the_mark_until_a_repair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copies renamed, the metadata write fails (a full disk): the mark stays, even across
    later good batches of the run (it was not theirs), until the next start lists the run."""
    store = _promoted(tmp_path, {"r1": ["a.txt"]})
    write_session_file(tmp_path, "r1", "b.txt", b"b")

    def full(self: LocalDisk, *args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(LocalDisk, "write_meta", full)
        assert {r.outcome for r in store.promote_files("r1", ["b.txt"])} == {Outcome.FAILED}
    os.unlink(tmp_path / "sessions/r1/output/b.txt")  # never promoted again: only the repair
    write_session_file(tmp_path, "r1", "c.txt", b"c")
    assert {r.outcome for r in store.promote_files("r1", ["c.txt"])} == {Outcome.PROMOTED}
    assert (tmp_path / "artifacts/r1" / MARK).is_file()
    assert "b.txt" not in _listed(tmp_path, "r1")
    prepare(Store(store.config), create=False)
    assert sorted(_listed(tmp_path, "r1")) == ["a.txt", "b.txt", "c.txt"]
    assert not (tmp_path / "artifacts/r1" / MARK).exists()


@pytest.mark.parametrize("count", [1, 3, 40])  # fsyncs in turn, on the flushers, a syncfs
def test_the_mark_is_on_disk_before_the_first_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """In order: the mark made before the first temporary, its folder flushed (or a syncfs)
    before the first rename into files/, the mark removed after the metadata write."""
    store = _promoted(tmp_path, {"r1": ["old.txt"]})
    names = [f"f{i:02d}.txt" for i in range(count)]
    for name in names:
        write_session_file(tmp_path, "r1", name, b"x" * 100)
    run_ino = (tmp_path / "artifacts/r1").stat().st_ino
    log: list[str] = []
    real_open, real_fsync, real_rename, real_unlink = os.open, os.fsync, os.rename, os.unlink
    real_link = placing.link_unnamed
    real_syncfs = batchcopy._syncfs

    def traced_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *args, **kw)
        if str(path) == MARK and flags & os.O_CREAT:
            log.append("mark")
        elif flags & os.O_TMPFILE == os.O_TMPFILE or (
                flags & os.O_CREAT and str(path).startswith(".promoter-")):
            log.append("temp")
        return fd

    def traced_fsync(fd: int) -> None:
        real_fsync(fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode) and st.st_ino == run_ino:
            log.append("flush-run")

    def traced_rename(src: Any, dst: Any, **kw: Any) -> None:
        real_rename(src, dst, **kw)
        log.append("metadata" if str(dst) == METADATA else "rename")

    def traced_link(fd: int, dst: str, dir_fd: int) -> None:
        real_link(fd, dst, dir_fd)
        log.append("rename")  # an unnamed copy linked into place

    def traced_unlink(path: Any, **kw: Any) -> None:
        real_unlink(path, **kw)
        if str(path) == MARK:
            log.append("unmark")

    def traced_syncfs(fd: int) -> int:
        log.append("syncfs")
        return real_syncfs(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", traced_open)
        patch.setattr(os, "fsync", traced_fsync)
        patch.setattr(os, "rename", traced_rename)
        patch.setattr(os, "unlink", traced_unlink)
        patch.setattr(placing, "link_unnamed", traced_link)
        patch.setattr(batchcopy, "_syncfs", traced_syncfs)
        _trace_mark_renames(patch, log)
        assert {r.outcome for r in store.promote_files("r1", names)} == {Outcome.PROMOTED}
    assert log.index("mark") < log.index("temp")
    flushed = [i for i, e in enumerate(log) if e in ("flush-run", "syncfs")]
    assert flushed and log.index("mark") < flushed[0] < log.index("rename"), log
    assert log.index("metadata") < log.index("unmark"), log
    assert not (tmp_path / "artifacts/r1" / MARK).exists()


@pytest.mark.parametrize("kind", ["folder", "link", "dangling"])
def test_a_planted_mark_of_any_kind_is_a_mark_and_goes(tmp_path: Path, kind: str) -> None:
    """A folder (with a file in it), a link to a file outside, a dangling link named as the
    mark: the run is walked, its leftover listed, the entry removed, nothing followed."""
    store = _promoted(tmp_path, {"r1": ["a.txt"]})
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    mark = tmp_path / "artifacts/r1" / MARK
    if kind == "folder":
        (mark / "deeper").mkdir(parents=True)
        (mark / "deeper/x").write_bytes(b"x")
    else:
        mark.symlink_to(outside if kind == "link" else tmp_path / "nowhere")
    (tmp_path / "artifacts/r1/files/left.txt").write_bytes(b"left by a crash")
    # a batch meanwhile finds the mark there: not its own, so it stays
    write_session_file(tmp_path, "r1", "b.txt", b"b")
    assert {r.outcome for r in store.promote_files("r1", ["b.txt"])} == {Outcome.PROMOTED}
    assert os.path.lexists(mark)
    prepare(Store(store.config), create=False)
    assert sorted(_listed(tmp_path, "r1")) == ["a.txt", "b.txt", "left.txt"]
    assert not os.path.lexists(mark)
    assert outside.read_bytes() == b"keep me"


def test_a_mark_that_cannot_be_made_stops_the_batch_before_any_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No mark, no copy: the batch fails (retried later) and nothing is renamed in."""
    store = _promoted(tmp_path, {"r1": ["a.txt"]})
    write_session_file(tmp_path, "r1", "b.txt", b"b")
    real_open = os.open

    def refused(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path) == MARK:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refused)
        patch.setattr(runmark, "rename_noreplace", lambda *args: False)  # nor woken at rest
        results = store.promote_files("r1", ["b.txt"])
    assert {r.outcome for r in results} != {Outcome.PROMOTED}
    assert not (tmp_path / "artifacts/r1/files/b.txt").exists()
    assert sorted(_listed(tmp_path, "r1")) == ["a.txt"]
    assert {r.outcome for r in store.promote_files("r1", ["b.txt"])} == {Outcome.PROMOTED}


def test_a_catch_up_whose_mark_cannot_be_made_backs_off_and_names_the_mark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only failures left: the catch-up's rounds wait twice as long each time and stop after
    RETRY_ROUNDS (a flood of one attempt every 50 ms before), the reason naming the entry."""
    store = _promoted(tmp_path, {"r1": ["a.txt"]})
    write_session_file(tmp_path, "r1", "b.txt", b"b")
    real_open = os.open
    tries: list[float] = []

    def refused(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path) == MARK:
            tries.append(time.monotonic())
            raise OSError(errno.EPERM, "Operation not permitted", MARK)
        return real_open(path, flags, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refused)
        patch.setattr(runmark, "rename_noreplace", lambda *args: False)  # nor woken at rest
        report = reconcile(store)
    assert len(tries) == 1 + RETRY_ROUNDS
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert all(later > earlier * 1.5 for earlier, later in itertools.pairwise(gaps))
    outcome = report.outcomes[("r1", "b.txt")]
    assert outcome.outcome is Outcome.FAILED
    assert outcome.reason == f"Operation not permitted ({MARK})"
    assert not (tmp_path / "artifacts/r1/files/b.txt").exists()


def test_a_copy_put_outside_a_write_session_leaves_its_mark_and_no_descriptor(
        tmp_path: Path) -> None:
    """Never done by promoter (every write holds the run's lock): the mark is made, flushed
    and left for the next start's repair, and its folder's descriptor is closed."""
    store = _promoted(tmp_path, {"r1": ["a.txt"]})
    disk = store.disk
    assert isinstance(disk, LocalDisk)
    src = write_session_file(tmp_path, "r1", "b.txt", b"b")
    before = len(os.listdir("/proc/self/fd"))
    fd = os.open(src, os.O_RDONLY)
    try:
        with disk.reading() as art:
            disk.put_file(art, "r1", "b.txt", fd, os.fstat(fd), True, 1 << 20, None)
    finally:
        os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before
    assert (tmp_path / "artifacts/r1" / MARK).is_file()
    prepare(Store(store.config), create=False)
    assert sorted(_listed(tmp_path, "r1")) == ["a.txt", "b.txt"]


def test_a_removal_marks_the_run_on_disk_before_its_entry_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rm RUN FILE`, in order: the mark made and its folder flushed, the metadata without
    the entry renamed in, the copy unlinked and its folder flushed, then the mark removed."""
    store = _promoted(tmp_path, {"r1": ["a.txt", "b.txt"]})
    run_ino = (tmp_path / "artifacts/r1").stat().st_ino
    files_ino = (tmp_path / "artifacts/r1/files").stat().st_ino
    log: list[str] = []
    real_open, real_fsync, real_rename, real_unlink = os.open, os.fsync, os.rename, os.unlink

    def traced_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path) == MARK and flags & os.O_CREAT:
            log.append("mark")
        return real_open(path, flags, *args, **kw)

    def traced_fsync(fd: int) -> None:
        real_fsync(fd)
        ino = os.fstat(fd).st_ino
        log.extend(["flush-run"] if ino == run_ino else ["flush-files"] if ino == files_ino
                   else [])

    def traced_rename(src: Any, dst: Any, **kw: Any) -> None:
        real_rename(src, dst, **kw)
        if str(dst) == METADATA:
            log.append("metadata")

    def traced_unlink(path: Any, **kw: Any) -> None:
        real_unlink(path, **kw)
        log.append({MARK: "unmark", "a.txt": "unlink-copy"}.get(str(path), "other"))

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", traced_open)
        patch.setattr(os, "fsync", traced_fsync)
        patch.setattr(os, "rename", traced_rename)
        patch.setattr(os, "unlink", traced_unlink)
        _trace_mark_renames(patch, log)
        store.delete_artifact("r1", "a.txt")
    order = ["mark", "flush-run", "metadata", "unlink-copy", "flush-files", "unmark"]
    first = [log.index(e) for e in order]  # ValueError if one is missing
    assert first == sorted(first), log
    assert not (tmp_path / "artifacts/r1" / MARK).exists()
