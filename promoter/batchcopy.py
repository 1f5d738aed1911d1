"""A batch of copies into one run's `files/`, made durable together (DESIGN §2, issue 15).

Copying a file one at a time costs an `fsync` of the file, a rename and (once a
batch) a folder flush; the `fsync` alone was half of a worker's time in a burst of
4 KiB files. A batch instead writes every copy to an unnamed file held open
(`O_TMPFILE`; a `.promoter-` temporary where the file system has none), then flushes
them all at once (one `syncfs` of the store's file system for a batch of
`SYNCFS_MIN_FILES` small copies or more, an `fsync` each below that, so a lone file
never pays for other people's dirty pages, nor a big copy for the agents' dirty output
beside it; a big copy's writeback started as it was written), then links (or renames)
them all into place, then flushes each folder once. Only after `commit()` may the caller
write metadata naming them: every entry is durable before it appears. Folder descriptors
are opened once per batch.

The run's mark (runmark.py) is made before the first copy and is on disk, by the same
flush, before the first link or rename. Unnamed copies (issue 15, fifth round): ext4's
create of a named temporary was 85 % of a 4 KiB copy's time; an unnamed one has no name
to insert, nor to rename, and a crash before its link leaves nothing to clean up. A batch
holds at most `MAX_UNNAMED` of them open (and a quarter of the descriptor limit): then it
commits what it has.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType

from promoter import writeback
from promoter.names import split_relpath
from promoter.runmark import RunMark
from promoter.safeio import (
    FLUSHERS,
    CopyPools,
    CopyResult,
    fsync_dir,
    open_dir_chain,
    place,
    stage_copy,
)

__all__ = ["MAX_HELD", "MAX_UNNAMED", "SYNCFS_MIN_FILES", "CopyBatch", "flush_all"]

SYNCFS_MIN_FILES = 16  # from this many small staged copies, one syncfs beats an fsync each
MAX_HELD = 256  # folder descriptors a batch holds before it commits what it has
MAX_UNNAMED = 1024  # unnamed copies (open descriptors) a batch holds before it commits


SHARE = 16  # a batch's share of the descriptor limit: a 16th, as several batches run at
# once (each worker's, the catch-up's) beside the watches, the sources and the logs


def _caps() -> tuple[int, int]:
    """(unnamed copies, folders) a batch may hold open: MAX_UNNAMED and MAX_HELD, at most
    a SHARE of the descriptor limit each (probe: 4 workers under `ulimit -n 64` took it all)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_UNNAMED, MAX_HELD
    return max(0, min(MAX_UNNAMED, soft // SHARE)), max(1, min(MAX_HELD, soft // SHARE))


def _syncfs(fd: int) -> int:
    """syncfs(fd): 0 when done; -1 on an error or where there is none (then fsync each)."""
    return writeback.syncfs(fd)


def flush_all(files: Sequence[tuple[int, str | None, int, int | None]],
              pools: CopyPools | None = None, folder: int | None = None) -> None:
    """Make the data of every (folder descriptor, temp name, size, open descriptor) in `files`
    durable: one syncfs when there are many small copies (ext4 writes and commits them
    together), else an fsync each (of the open descriptor of an unnamed copy, else of its
    temp opened read-only, which flushes the file's data as well), several at once on
    `pools`. A syncfs also waits for every other dirty page of the file system: the
    agents' own output beside the store, as big as the copies; big copies (their writeback
    started as they were written) are therefore flushed one by one. One file system.
    `folder`: a folder flushed with them (a new run mark's, on the same file system)."""
    if not files:
        return
    small = sum(1 for _, _, size, _ in files if size < writeback.EARLY_WRITEBACK_BYTES)
    if small >= SYNCFS_MIN_FILES and _syncfs(files[0][0]) == 0:
        return
    # few small copies, big ones, or syncfs reported a writeback error: which file was it
    if pools is None or len(files) < 2:  # a lone copy: its folder's flush then finds
        # the journal committed by the copy's (one commit, not two waits on other threads)
        for dir_fd, name, _, fd in files:
            _fsync_one(dir_fd, name, fd)
        if folder is not None:
            os.fsync(folder)
        return
    jobs = [(dir_fd, name, fd) for dir_fd, name, _, fd in files]
    if folder is not None:
        jobs.insert(0, (folder, None, folder))  # a descriptor's fsync, as a copy's is
    # as many tasks as flushers, each flushing its share in turn: the same fsyncs in flight
    # at once as a task a file, without a future, a queue put and a wake-up a file
    width = min(FLUSHERS, len(jobs))
    flushes = [pools.flusher.submit(_fsync_each, jobs[i::width]) for i in range(width)]
    futures.wait(flushes)  # every one done before the folders may be closed
    for flush in flushes:
        flush.result()  # the first error fails the batch


def _fsync_each(jobs: Sequence[tuple[int, str | None, int | None]]) -> None:
    """Every one flushed (tried), as a task each were; then the first error, if any."""
    first: OSError | None = None
    for dir_fd, name, fd in jobs:
        try:
            _fsync_one(dir_fd, name, fd)
        except OSError as exc:
            first = first or exc
    if first is not None:
        raise first


def _fsync_one(dir_fd: int, name: str | None, fd: int | None) -> None:
    if fd is not None:
        os.fsync(fd)
        return
    assert name is not None  # a named temporary when no descriptor is held
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Staged:
    filename: str
    folder: tuple[str, ...]
    tmp: str | None  # None: unnamed, `fd` held open until placed
    name: str
    size: int
    fd: int | None


class CopyBatch:
    """Copies into `base/<prefix...>/<filename>`, visible only after `commit()`.

    Use as a context manager: whatever was not committed when the block ends (an error,
    SourceChanged of a later file) is removed, so no half-done batch is ever visible.
    """

    def __init__(self, base_fd: int, prefix: Sequence[str], checksum: bool, max_bytes: int,
                 pools: CopyPools | None = None, mark: RunMark | None = None) -> None:
        self._base = base_fd
        self._mark = mark
        self._prefix = list(prefix)
        self._checksum = checksum
        self._max_bytes = max_bytes
        self._pools = pools
        self._folders: dict[tuple[str, ...], int] = {}
        self._staged: list[_Staged] = []
        self._held = 0  # unnamed copies held open (staged, not yet placed)
        self._cap, self._max_folders = _caps()
        self.committed = 0  # copies renamed into place so far
        self.failed: dict[str, OSError] = {}  # filename -> why its rename failed
        self._was_clean = mark is None or mark.clean  # the run listed whole at the start
        self._placed = False  # a rename into files/ was begun

    def __enter__(self) -> CopyBatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()
        if kind is None and not self._placed and self._was_clean and self._mark is not None:
            self._mark.untouched()  # marked for copies that never came: nothing unlisted

    def _folder(self, parts: tuple[str, ...]) -> int:
        fd = self._folders.get(parts)
        if fd is None:
            fd = open_dir_chain(self._base, [*self._prefix, *parts], create=True)
            self._folders[parts] = fd
        return fd

    def put(self, filename: str, src: int, st: os.stat_result,
            agent_id: str = "unknown") -> CopyResult:
        """Copy an open source into a temp beside its final name, hashing it (not flushed,
        not renamed). Raises SourceChanged, Refused or OSError as `copy_and_hash` does.
        `agent_id` is for backends that store it beside the copy; a file here does not."""
        parts = split_relpath(filename)
        folder = tuple(parts[:-1])
        if self._mark is not None:
            self._mark.set()  # before the first temporary (an OSError fails this file)
        if (folder not in self._folders and len(self._folders) >= self._max_folders) \
                or self._held >= self._cap > 0:
            self.commit()  # bounded descriptors whatever the batch's shape
        dir_fd = self._folder(folder)
        out, tmp, result = stage_copy(src, st, dir_fd, parts[-1], checksum=self._checksum,
                                      max_bytes=self._max_bytes, unnamed=self._cap > 0)
        if tmp is not None:
            os.close(out)  # held open, 512 named temps made each creation cost twice as much
        else:
            self._held += 1
        self._staged.append(_Staged(filename, folder, tmp, parts[-1], result.size,
                                    None if tmp is not None else out))
        return result

    def commit(self) -> dict[str, OSError]:
        """Flush every staged copy, place them all (`safeio.place`), flush each folder once. A
        flush error fails the whole batch (raised: which file it was is unknown); a placing
        that fails (a folder took the name meanwhile) fails that file alone: the files it
        names, with their errors, are returned (and kept in `failed`), their temps removed."""
        staged, self._staged = self._staged, []
        mark = self._mark
        try:
            flush_all([(self._folders[s.folder], s.tmp, s.size, s.fd) for s in staged],
                      self._pools, mark.pending_flush() if mark is not None and staged else None)
        except BaseException:
            self._staged = staged  # abort() removes them
            raise
        if mark is not None and staged:
            mark.flushed()  # the mark is on disk: the renames may follow
        self._placed = self._placed or bool(staged)
        for s in staged:
            dir_fd = self._folders[s.folder]
            try:
                place(-1 if s.fd is None else s.fd, s.tmp, dir_fd, s.name)
            except OSError as exc:
                self.failed[s.filename] = exc
                if s.tmp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(s.tmp, dir_fd=dir_fd)
            finally:
                self._release(s)
        for folder in {s.folder for s in staged}:
            fsync_dir(self._folders[folder])
        self.committed += len(staged)
        self._close_folders()
        return self.failed

    def abort(self) -> None:
        """Remove every staged copy not committed, close every descriptor."""
        staged, self._staged = self._staged, []
        for s in staged:
            self._release(s)  # an unnamed copy is gone with its descriptor
            if s.tmp is not None:
                with contextlib.suppress(OSError, KeyError):
                    os.unlink(s.tmp, dir_fd=self._folders[s.folder])
        self._close_folders()

    def _release(self, s: _Staged) -> None:
        fd, s.fd = s.fd, None
        if fd is not None:
            self._held -= 1
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close_folders(self) -> None:
        folders, self._folders = self._folders, {}
        for fd in folders.values():
            with contextlib.suppress(OSError):
                os.close(fd)
