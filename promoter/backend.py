"""The storage seam (STYLE §19, DESIGN §10): what a place to keep artifacts must do.

Every rule (what to promote, upserts, expiry, tombstones' meaning, recovery)
is decided above this line, once, in `rules.py` and the store. A backend only
keeps bytes: a run's metadata with a version tag, stored files, tombstones.

`locked(run_id)` opens a write session on one run and yields its handle `H`,
which every write takes. On the local disk (`localdisk.LocalDisk`) the handle
is the artifacts folder's descriptor and the session holds the run's `flock`:
that lock is the compare-and-set, so a write there never loses a race. On an
object store (`s3backend.S3Backend`) the handle carries the ETag read by
`read_meta`, `write_meta` is a conditional PUT, and a write that lost its race
raises `LostRace`: the store reads again and retries (`Store.change`).

The library (`library.Library`, `s3library.S3Library`) and the audit journal
(`audit.JournalSink`) are seams of their own, made beside it (`storage.py`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from promoter.context import RunContext
from promoter.errors import ConflictError, StoreIOError
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.safeio import CopyPools, CopyResult

__all__ = ["Backend", "ByteBudget", "FileBatch", "ImmediateBatch", "LostRace", "Relisted", "Shrank",
           "StoredRead", "TooManyRaces", "fd_read"]

H = TypeVar("H")
Relisted = tuple[RunMetadata, int, int]
"""A run relisted after a crash, with the numbers of entries relisted and dropped."""


class Shrank(OSError):
    """A stored copy ended before its size (changed under a reader)."""


class LostRace(ConflictError):
    """A conditional metadata write lost to another writer: read again, then retry."""


class TooManyRaces(StoreIOError):
    """A change lost its race again and again (a run rewritten without pause): try later."""


@dataclass
class StoredRead:
    """A stored copy opened for reading: its size, its own sha256 when the store keeps one
    beside it (the object's user metadata; None on the local disk, where the entry's is
    authoritative), and its bytes in ranges. Close it (or use it as a context manager)."""

    size: int
    mtime_ns: int
    sha256: str | None
    _chunks: Callable[[int, int | None], Iterator[bytes]]
    _close: Callable[[], None] = field(default=lambda: None)
    fd: int | None = None  # the local disk's descriptor, for sendfile-style paths

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) (end None: to the end), a piece at a time."""
        return self._chunks(start, end)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> StoredRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileBatch(Protocol):
    """A batch of stored files for one run (`Backend.batch`, issue 15): `put` each, then
    `commit()` before any metadata names them; leaving the block removes what was not
    committed. `commit` returns the files that could not be put in place, with why."""

    def put(self, filename: str, src: int, st: os.stat_result,
            agent_id: str = "unknown") -> CopyResult: ...

    def commit(self) -> dict[str, OSError]: ...

    def __enter__(self) -> FileBatch: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Backend(Protocol[H]):
    """Bytes and metadata of runs, with version tags; no rule lives here."""

    marks_deletion: bool
    put_concurrency: int
    """How many files of one batch the store puts at once: 1 on the local disk (its copies
    have their own helper threads), more on an object store, where a PUT waits on the network."""
    """True where deleting a run is not one atomic step (an object store): the store then
    marks the metadata `"status": "deleting"` with a conditional write first (DESIGN §10)."""

    # -- the store ------------------------------------------------------------------------
    def check(self, create: bool) -> None:
        """The store is there and usable (the S3 probe); `create`: make what is missing."""
        ...

    def describe(self) -> str:
        """Where the store is, for messages (a path, or the bucket and prefix)."""
        ...

    # -- runs ------------------------------------------------------------------------------
    def run_ids(self) -> list[str]: ...

    def is_run(self, run_id: str) -> bool: ...

    def reading(self) -> AbstractContextManager[H]: ...

    def locked(self, run_id: str, wait: bool = True) -> AbstractContextManager[H]: ...

    # -- metadata, with a version tag --------------------------------------------------------
    def meta_version(self, run_id: str) -> Hashable | None: ...

    def read_meta(self, handle: H, run_id: str, limit: int) -> bytes | None: ...

    def write_meta(self, handle: H, run_id: str, data: bytes) -> Hashable | None:
        """Replace the run's metadata; LostRace when another writer changed it since it was
        read in this session (never on the local disk, whose lock is held). The version tag
        of what was written when the backend knows it (the local disk does)."""
        ...

    # -- stored files ------------------------------------------------------------------------
    def put_file(self, handle: H, run_id: str, filename: str, src: int, st: os.stat_result,
                 checksum: bool, max_bytes: int, pools: CopyPools | None,
                 agent_id: str = "unknown") -> CopyResult: ...

    def sync_folders(self, handle: H, run_id: str,
                     folders: Iterable[tuple[str, ...]]) -> None: ...

    def batch(self, handle: H, run_id: str, checksum: bool, max_bytes: int,
              pools: CopyPools | None) -> FileBatch:
        """A batch of `put_file`s made durable together (the local disk: one flush for the
        batch; `ImmediateBatch` where a put is durable when it returns)."""
        ...

    def open_file(self, run_id: str, filename: str) -> tuple[int, os.stat_result]:
        """A descriptor on a stored copy (the local disk only; others raise OSError)."""
        ...

    def read_file(self, run_id: str, filename: str) -> StoredRead:
        """A stored copy to read in ranges; FileNotFoundError when it is not there."""
        ...

    def list_files(self, run_id: str) -> list[str]:
        """Every stored copy's filename (path below files/)."""
        ...

    def remove_file(self, handle: H, run_id: str, filename: str,
                    sha256: str | None = None) -> None:
        """Remove a stored copy; one already gone is no error. `sha256`: only if it is
        still that version (an object store: a newer upload of the name stays)."""
        ...

    def mark(self, handle: H, run_id: str) -> None:
        """Before a metadata write that a change to the stored files follows (a removal):
        the local disk marks the run durably (runmark.py); an object store needs nothing."""
        ...

    def trash_run(self, handle: H, run_id: str) -> None: ...

    def empty_trash(self) -> None: ...

    def clean_leftovers(self) -> None:
        """What crashes leave: the trash; stale multipart uploads (start-up, sweeper)."""
        ...

    # -- recovery (the file half of DESIGN §6; rules.py decides) -----------------------------
    def has_files(self, handle: H, run_id: str) -> bool: ...

    def stored_entries(self, handle: H, run_id: str, ctx: RunContext,
                       checksum: bool) -> list[ArtifactEntry]: ...

    def set_aside(self, handle: H, run_id: str, now: datetime) -> str: ...

    def remove_temps(self, handle: H, run_id: str) -> None: ...

    def relist(self, handle: H, meta: RunMetadata, context: Callable[[], RunContext],
               checksum: bool) -> Relisted | None: ...

    def repaired_all(self) -> None:
        """The start-up repair went through every run: the local disk trusts its runs'
        marks from now on (runmark.py); an object store needs nothing."""
        ...

    # -- tombstones --------------------------------------------------------------------------
    def read_tombstone(self, run_id: str) -> bytes | None: ...

    def write_tombstone(self, handle: H, run_id: str, data: bytes) -> None: ...

    def tombstones(self) -> list[str]: ...

    def drop_tombstone(self, run_id: str) -> bool: ...


class ImmediateBatch(Generic[H]):
    """`FileBatch` for a backend whose `put_file` stores durably at once (an object's PUT):
    each put goes through, `commit` has nothing left to do but `sync_folders`."""

    def __init__(self, backend: Backend[H], handle: H, run_id: str, checksum: bool,
                 max_bytes: int, pools: CopyPools | None) -> None:
        self._backend, self._handle, self._run_id = backend, handle, run_id
        self._checksum, self._max_bytes, self._pools = checksum, max_bytes, pools
        self._folders: set[tuple[str, ...]] = set()

    def put(self, filename: str, src: int, st: os.stat_result,
            agent_id: str = "unknown") -> CopyResult:
        copied = self._backend.put_file(self._handle, self._run_id, filename, src, st,
                                        self._checksum, self._max_bytes, self._pools,
                                        agent_id=agent_id)
        self._folders.add(tuple(filename.split("/")[:-1]))
        return copied

    def commit(self) -> dict[str, OSError]:
        self._backend.sync_folders(self._handle, self._run_id, self._folders)
        self._folders = set()
        return {}

    def __enter__(self) -> ImmediateBatch[H]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


def fd_read(fd: int, st: os.stat_result) -> StoredRead:
    """A StoredRead over an open descriptor (owned: closed with it)."""

    def chunks(start: int, end: int | None) -> Iterator[bytes]:
        stop = st.st_size if end is None else min(end, st.st_size)
        offset = start
        while offset < stop:
            piece = os.pread(fd, min(1 << 20, stop - offset), offset)
            if not piece:
                raise Shrank(f"stored copy shrank while read ({offset} of {stop} bytes)")
            offset += len(piece)
            yield piece

    closed = False

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            os.close(fd)

    return StoredRead(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=None, _chunks=chunks,
                      _close=close, fd=fd)


class ByteBudget:
    """At most `limit` bytes of uploads buffered at once, over every thread: a file up to
    the multipart threshold is read whole before its PUT, a larger one holds its parts in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, size: int) -> Iterator[None]:
        want = min(max(size, 1), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= want)
            self.free -= want
        try:
            yield
        finally:
            with self._cond:
                self.free += want
                self._cond.notify_all()
