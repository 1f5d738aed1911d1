"""Issue 15: a batch's copies are made durable together before any entry names them, big runs
get batches that grow with them, and the catch-up and recovery share one tree walk."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promoter import batchcopy, placing
from promoter.layout import MARK, METADATA
from promoter.metadata import RunMetadata
from promoter.names import TEMP_PREFIX
from promoter.pipeline import MAX_BATCH, MIN_BATCH, batch_limit
from promoter.reconcile import Rejections, scan_run
from promoter.recovery import walk_files
from promoter.safeio import folder
from promoter.settle import Settler
from promoter.store import Outcome
from promoter.walk import walk_tree
from tests.store_helpers import make_store, write_session_file


class IoTrace:
    """Records, in order, every flush, syncfs, link and rename the store makes, and what each
    metadata.json listed at the moment it was renamed into place. An unnamed copy
    (O_TMPFILE) is traced as `unnamed-N` until it is linked to a name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.temps: dict[int, str] = {}  # open fd -> temp name
        real_open, real_fsync, real_rename = os.open, os.fsync, os.rename
        real_link = placing.link_unnamed
        real_syncfs = batchcopy._syncfs

        def traced_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            fd = real_open(path, flags, *args, **kw)
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                self.temps[fd] = f"unnamed-{len(self.log)}"
                self.log.append(("create", self.temps[fd]))
            elif os.path.basename(str(path)).startswith(TEMP_PREFIX):
                self.temps[fd] = str(path)
                if flags & os.O_CREAT:
                    self.log.append(("create", str(path)))
            return fd

        def traced_fsync(fd: int) -> None:
            real_fsync(fd)
            if fd in self.temps:
                self.log.append(("fsync", self.temps[fd]))
            elif stat.S_ISDIR(os.fstat(fd).st_mode):
                self.log.append(("fsync-dir", os.fstat(fd).st_ino))

        def traced_syncfs(fd: int) -> int:
            self.log.append(("syncfs",))
            return real_syncfs(fd)

        def traced_rename(src: Any, dst: Any, *, src_dir_fd: int | None = None,
                          dst_dir_fd: int | None = None) -> None:
            listed: list[str] = []
            if str(dst) == METADATA and src_dir_fd is not None:
                fd = real_open(str(src), os.O_RDONLY, dir_fd=src_dir_fd)
                try:
                    doc = json.loads(os.pread(fd, 1 << 24, 0))
                finally:
                    os.close(fd)
                listed = [a["filename"] for a in doc["artifacts"]]
            real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            ino = os.fstat(dst_dir_fd).st_ino if dst_dir_fd is not None else 0
            self.log.append(("rename", str(src), str(dst), ino, listed))

        def traced_link(fd: int, dst: str, dst_dir_fd: int) -> None:
            real_link(fd, dst, dst_dir_fd)
            self.log.append(("link", self.temps[fd], dst, os.fstat(dst_dir_fd).st_ino))

        def traced_close(fd: int, real_close: Callable[[int], None] = os.close) -> None:
            self.temps.pop(fd, None)
            real_close(fd)

        monkeypatch.setattr(os, "open", traced_open)
        monkeypatch.setattr(os, "fsync", traced_fsync)
        monkeypatch.setattr(os, "rename", traced_rename)
        monkeypatch.setattr(placing, "link_unnamed", traced_link)
        monkeypatch.setattr(os, "close", traced_close)
        monkeypatch.setattr(batchcopy, "_syncfs", traced_syncfs)

    def check_durable_before_listed(self) -> int:
        """Every copy flushed before its rename; every listed file renamed, and its folder
        flushed after that, before the metadata.json listing it. Returns the names checked."""
        flushed: set[str] = set()
        created: list[str] = []
        renamed_at: dict[str, tuple[int, int]] = {}  # name -> (log index, folder inode)
        dir_flushes: list[tuple[int, int]] = []
        checked = 0
        for i, item in enumerate(self.log):
            kind = item[0]
            if kind == "create":
                created.append(item[1])
            elif kind == "fsync":
                flushed.add(item[1])
            elif kind == "syncfs":
                flushed.update(created)
            elif kind == "fsync-dir":
                dir_flushes.append((i, item[1]))
            elif kind == "link":
                assert item[1] in flushed, f"{item[2]} linked into place before it was flushed"
                if item[2].startswith(TEMP_PREFIX):  # a name taken: renamed over it next
                    flushed.add(item[2])
                else:
                    renamed_at[item[2]] = (i, item[3])
            elif kind == "rename" and item[2] != METADATA:
                assert item[1] in flushed, f"{item[2]} renamed into place before it was flushed"
                renamed_at[item[2]] = (i, item[3])
            elif kind == "rename":
                for name in item[4]:
                    base = name.rsplit("/", 1)[-1]
                    assert base in renamed_at, f"{name} listed before its copy was in place"
                    at, ino = renamed_at[base]
                    assert any(at < j < i and d == ino for j, d in dir_flushes), \
                        f"{name} listed before its folder was flushed"
                    checked += 1
        return checked


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
@pytest.mark.parametrize("count", [3, 40])
def test_a_batch_lists_no_entry_before_its_copy_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, unnamed: bool) -> None:
    """3 files (an fsync each) and 40 (one syncfs), unnamed copies or named temporaries, new
    and replaced: flushed, linked or renamed, folder flushed, listed."""
    store = make_store(tmp_path)
    names = [f"f{i:03d}.bin" if i % 2 else f"sub/f{i:03d}.bin" for i in range(count)]
    for version in (1, 2):  # the second replaces every copy (a link cannot: link + rename)
        for name in names:
            write_session_file(tmp_path, "r1", name, name.encode() * 100 * version)
        if not unnamed:
            monkeypatch.setattr(placing, "unnamed_supported", lambda: False)
        trace = IoTrace(monkeypatch)
        results = store.promote_files("r1", names)
        monkeypatch.undo()
        assert {r.outcome for r in results} == {Outcome.PROMOTED}
        assert trace.check_durable_before_listed() == count
        assert ("syncfs",) in trace.log if count >= batchcopy.SYNCFS_MIN_FILES else \
            ("syncfs",) not in trace.log
        assert any(item[0] == "link" for item in trace.log) is unnamed
        meta = store.get_run("r1")
        assert sorted(a.filename for a in meta.artifacts) == sorted(names)
        assert {a.size_bytes for a in meta.artifacts} == {len(names[1]) * 100 * version,
                                                          len(names[0]) * 100 * version}
    run = tmp_path / "artifacts" / "r1"
    assert not [p for p in run.rglob(f"{TEMP_PREFIX}*")]


def test_a_failed_flush_leaves_no_copy_and_no_entry(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error while flushing the batch: nothing renamed, nothing listed, no temp left;
    the run's mark stays for the next start's repair (runmark.py: a failed session)."""
    store = make_store(tmp_path)
    names = [f"f{i:02d}.txt" for i in range(20)]
    for name in names:
        write_session_file(tmp_path, "r1", name, b"x" * 100)

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(batchcopy, "flush_all", broken)
    results = store.promote_files("r1", names)
    assert {r.outcome for r in results} == {Outcome.FAILED}
    run = tmp_path / "artifacts" / "r1"
    left = [p.name for p in run.rglob("*") if p.is_file()] if run.exists() else []
    assert left == [MARK], left
    monkeypatch.undo()
    assert {r.outcome for r in store.promote_files("r1", names)} == {Outcome.PROMOTED}


def test_batch_size_grows_with_the_run_and_keeps_metadata_writes_linear() -> None:
    """batch_limit: MIN_BATCH for small runs, half the run, capped; entries written stay O(n)."""
    assert batch_limit(0) == MIN_BATCH
    assert batch_limit(10_000) == 5_000
    assert batch_limit(10**7) == MAX_BATCH
    per_file = []
    for total in (1_000, 10_000, 100_000):
        entries = written = 0
        while entries < total:  # every batch rewrites the whole metadata.json
            entries += min(batch_limit(entries), total - entries)
            written += entries
        per_file.append(written / total)
    assert max(per_file) <= 6, per_file  # fixed batches of 256: 196 entries a file at 100,000


def test_the_settler_hands_out_batches_of_the_limit_it_was_given() -> None:
    """After a batch reports a big run, the next batch takes up to its new limit."""
    s = Settler(settle_ns=0)
    for i in range(1200):
        s.touch("r", f"f{i}", 0, strong=True)
    first = s.due(1, lambda r, n: None)
    assert [len(b.filenames) for b in first] == [256]
    for i in range(1200, 2000):
        s.touch("r", f"f{i}", 1, strong=True)
    s.done(first[0], (), 2, limit=batch_limit(3000))
    second = s.due(3, lambda r, n: None)
    assert [len(b.filenames) for b in second] == [1500]


def test_a_run_is_not_parsed_again_for_each_batch(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The model written by a batch is the next batch's start: metadata.json is parsed once."""
    store = make_store(tmp_path)
    for i in range(6):
        write_session_file(tmp_path, "r1", f"f{i}.txt", b"%d" % i)
    store.promote_files("r1", ["f0.txt", "f1.txt"])
    parsed: list[int] = []
    real = RunMetadata.model_validate_json

    def counting(data: Any, **kw: Any) -> RunMetadata:
        parsed.append(1)
        return real(data, **kw)

    monkeypatch.setattr(RunMetadata, "model_validate_json", counting)
    store.promote_files("r1", ["f2.txt", "f3.txt"])
    store.promote_files("r1", ["f4.txt", "f5.txt"])
    assert parsed == []
    monkeypatch.undo()
    on_disk = RunMetadata.model_validate_json((tmp_path / "artifacts/r1/metadata.json")
                                              .read_bytes())
    assert sorted(a.filename for a in on_disk.artifacts) == [f"f{i}.txt" for i in range(6)]


def _tree(base: Path) -> set[str]:
    files = {"a.txt", "d1/b.txt", "d1/d2/c.txt", "d3/e.txt"}
    for name in files:
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(name)
    (base / "d1" / "link").symlink_to(base / "d3")
    (base / "d4").mkdir()
    return files


def test_catch_up_and_recovery_walk_the_same_tree_alike(tmp_path: Path) -> None:
    """scan_run (output/) and walk_files (files/) share walk_tree: same files, no link followed."""
    out = tmp_path / "sessions" / "r1" / "output"
    stored = tmp_path / "artifacts" / "r1" / "files"
    expected = _tree(out)
    _tree(stored)
    (stored / f"{TEMP_PREFIX}left").write_text("x")
    with folder(tmp_path / "sessions") as sessions:
        scanned = {f.filename for f in scan_run(sessions, "r1", (), Rejections()) if f.regular}
    with folder(tmp_path / "artifacts") as art:
        walked = {name for name, _, _ in walk_files(art, "r1")}
    assert scanned == walked == expected
    assert not (stored / f"{TEMP_PREFIX}left").exists()  # recovery removes temps on its way


def test_the_walk_holds_one_descriptor_whatever_the_breadth(tmp_path: Path) -> None:
    """2,000 sub-folders walked with the descriptor count flat; folders entered only on ask."""
    top_path = tmp_path / "top"
    for i in range(2000):
        (top_path / f"d{i}").mkdir(parents=True)
        (top_path / f"d{i}" / "f").write_text("x")
    before = len(os.listdir("/proc/self/fd"))
    peak = 0
    seen = 0
    with folder(top_path) as top:
        for fold in walk_tree(top):
            peak = max(peak, len(os.listdir("/proc/self/fd")))
            seen += 1
            fold.enter.extend(e.name for e in fold.entries
                              if e.is_dir(follow_symlinks=False) and e.name != "d7")
    assert seen == 2000  # top and every folder but d7
    assert peak <= before + 3


@pytest.mark.parametrize("patterns", [(), (".*", "*.tmp", "*.part", "*.swp", "*~"),
                                      ("[ab]*", "x?y", "*.[ch]", "a*b*c")])
def test_the_compiled_exclusion_agrees_with_is_excluded(patterns: tuple[str, ...]) -> None:
    """The catch-up's one-regex exclusion says what names.is_excluded says, name by name."""
    from promoter.names import is_excluded
    from promoter.reconcile import exclusion

    names = [".hidden", "a.tmp", "b.part", "c.swp", "d~", "plain.txt", f"{TEMP_PREFIX}x",
             "xzy", "xy", "abc", "file.c", "file.cc", "axbxc", "b", "tmp", "\nx.tmp", "é.tmp",
             "x.tmp\n", "[a]"]
    excluded = exclusion(patterns)
    assert [excluded(n) for n in names] == [is_excluded([n], patterns) for n in names]


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.integers(min_value=-(10**22), max_value=10**22),
                 st.integers(min_value=-(10**12), max_value=10**12)))
def test_file_time_is_fromtimestamp_to_the_microsecond(ns: int) -> None:
    """The faster file_time (epoch + days, seconds, µs) says what fromtimestamp said, or None."""
    from datetime import UTC, datetime

    from promoter.clock import file_time

    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        expected: datetime | None = datetime.fromtimestamp(seconds, UTC).replace(
            microsecond=rest // 1000)
    except (ValueError, OverflowError, OSError):
        expected = None
    assert file_time(ns) == expected


def test_a_rename_that_fails_costs_only_its_own_file(tmp_path: Path) -> None:
    """A folder that took a staged copy's name fails that copy alone: the others land, no temp."""
    from promoter.safeio import open_regular

    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / "a").write_text("file a")
    (src_dir / "b").write_text("file b")
    (tmp_path / "art" / "r" / "files").mkdir(parents=True)
    with folder(src_dir) as sd, folder(tmp_path / "art") as art, \
            batchcopy.CopyBatch(art, ["r", "files"], True, 1 << 20) as batch:
        for name, as_name in (("a", "a"), ("b", "a/b")):  # a/b makes the folder a first
            fd, st = open_regular(sd, name, allow_hardlinks=False)
            try:
                batch.put(as_name, fd, st)
            finally:
                os.close(fd)
        failed = batch.commit()
    assert list(failed) == ["a"] and isinstance(failed["a"], IsADirectoryError)
    files = tmp_path / "art" / "r" / "files"
    assert (files / "a" / "b").read_text() == "file b"
    assert sorted(p.name for p in files.rglob("*")) == ["a", "b"]  # no temp left


def test_a_small_batch_is_flushed_in_as_many_tasks_as_flushers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer small copies than a syncfs is worth: each copy and the mark's folder are
    flushed once, spread over at most FLUSHERS tasks (not a future a file); an fsync's
    error still fails the batch, once every other was tried."""
    from promoter.safeio import FLUSHERS, CopyPools

    folder_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(10)]
    pools = CopyPools()
    submitted: list[int] = []
    real_submit, real_fsync = pools.flusher.submit, os.fsync
    flushed: list[int] = []

    def counted(fn: Callable[..., Any], *args: Any) -> Any:
        submitted.append(1)
        return real_submit(fn, *args)

    def traced(fd: int) -> None:
        flushed.append(fd)
        if fd == fds[7] and failing:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    try:
        monkeypatch.setattr(pools.flusher, "submit", counted)
        monkeypatch.setattr(os, "fsync", traced)
        failing = False
        batchcopy.flush_all([(folder_fd, None, 100, fd) for fd in fds], pools, folder_fd)
        assert sorted(flushed) == sorted([*fds, folder_fd]) and len(submitted) == FLUSHERS
        failing, flushed[:] = True, []
        with pytest.raises(OSError, match="Input/output"):
            batchcopy.flush_all([(folder_fd, None, 100, fd) for fd in fds], pools, None)
        assert sorted(flushed) == sorted(fds)  # the failed one's group-mates flushed too
    finally:
        monkeypatch.undo()
        pools.shutdown()
        for fd in [*fds, folder_fd]:
            os.close(fd)
