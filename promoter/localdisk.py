"""The local backend: `artifacts/` on a POSIX file system (DESIGN §1, §6; STYLE §19).

Bytes and folders only, through descriptors (`dir_fd`, `O_NOFOLLOW`): which
file is read, written, renamed or removed, never what it means. The run's
`flock` is the compare-and-set: under `locked()` nobody else writes the run,
so a metadata write cannot lose a race. The rules live in `rules.py`, the
composition in `store.py`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from promoter import events, recovery
from promoter.audit import AUDIT_DIR
from promoter.backend import Relisted, StoredRead, fd_read
from promoter.batchcopy import CopyBatch
from promoter.context import RunContext
from promoter.errors import NotFoundError, StoreIOError
from promoter.layout import FILES, LOCKS, METADATA, REPAIRED, TOMBSTONES, TRASH
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.names import is_valid_run_id, split_relpath
from promoter.runlock import run_lock
from promoter.runmark import RunMark, is_marked
from promoter.safeio import (
    CopyPools,
    CopyResult,
    Refused,
    atomic_write_bytes,
    copy_and_hash,
    folder,
    fsync_dir,
    open_dir,
    open_dir_chain,
    open_regular,
    remove_tree,
)

__all__ = ["LocalDisk", "LockFileError", "Oversized", "Version"]

log = get_logger()
Version = tuple[int, int, int, int]  # metadata.json's inode, mtime, ctime (ns), size: its tag


class LockFileError(OSError):
    """A run's lock file cannot be opened: `.locks/` is unusable (a read-only or full disk,
    a file planted in its place), so the whole store is, not one run."""


class Oversized(Exception):
    """metadata.json is over promote.max_metadata_bytes: corrupt, and not read."""


class LocalDisk:
    """How bytes and metadata are kept on the local disk; the Store decides what they say."""

    marks_deletion = False  # a run leaves in one rename into the trash
    put_concurrency = 1  # copies use the pipeline's helper threads (safeio.CopyPools)

    def __init__(self, artifacts: Path) -> None:
        self.path = artifacts
        self._marks: dict[str, RunMark] = {}  # the write sessions open in this process, by run
        self._trusted = False  # the marks alone say which runs to walk (`repaired_all`)

    def check(self, create: bool) -> None:
        """`create` (`promoter run`): make the folder and promoter's dot-folders; else a missing
        folder is an error: commands other than `run` never create the store (DESIGN §3)."""
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                for name in (LOCKS, TRASH, TOMBSTONES, AUDIT_DIR):
                    (self.path / name).mkdir(exist_ok=True)
            except OSError as exc:
                raise StoreIOError(f"cannot create storage folder {exc.filename or self.path}: "
                                   f"{exc.strerror}") from None
        elif not os.path.isdir(self.path):
            raise NotFoundError(f"no store at {self.path}: the folder does not exist "
                                "(check --root / storage.artifacts; only `promoter run` "
                                "creates the store)")

    def describe(self) -> str:
        return str(self.path)

    # -- the store and its runs ------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self) -> Iterator[int]:
        """A read handle: the artifacts folder's descriptor (opening it is where an OSError
        arises); no lock."""
        try:
            fd = open_dir(self.path)
        except OSError as exc:
            raise StoreIOError(f"artifacts folder unusable: {exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def is_run(self, run_id: str) -> bool:
        """A run folder (a link planted in its place is none, DESIGN §6)."""
        return os.path.isdir(self.path / run_id) and not os.path.islink(self.path / run_id)

    def run_ids(self) -> list[str]:
        """Every run folder (dot-names are promoter's own, never runs)."""
        try:
            with os.scandir(self.path) as it:
                return [e.name for e in it if is_valid_run_id(e.name)
                        and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreIOError(f"artifacts folder unreadable: {exc.strerror}") from None

    @contextlib.contextmanager
    def locked(self, run_id: str, wait: bool = True) -> Iterator[int]:
        """Hold the run's lock; yields the artifacts folder's descriptor, the handle the
        writes below take. `wait=False`: BlockingIOError at once when it is held."""
        with self.reading() as art:
            try:  # made when missing (ENOENT), not tried by a `mkdir` every session
                locks = open_dir_chain(art, [LOCKS], create=True)
            except Refused as exc:  # a file or a link planted as `.locks`: the store's
                raise LockFileError(errno.ENOTDIR, exc.reason, str(self.path / LOCKS)) from None
            try:
                with contextlib.ExitStack() as stack:
                    try:
                        stack.enter_context(run_lock(locks, run_id, wait))
                    except BlockingIOError:  # wait=False and the lock is taken
                        raise
                    except OSError as exc:  # a read-only store: the path and operation named
                        # (describe_os_error); the server gives the reason (web/errors.py)
                        named = LockFileError(exc.errno, exc.strerror,
                                              str(self.path / LOCKS / run_id))
                        named.add_note(f"open the lock file of run {run_id}")
                        raise named from None
                    yield from self._session(art, run_id)
            finally:
                os.close(locks)

    def _session(self, art: int, run_id: str) -> Iterator[int]:
        """The write session's mark (runmark.py): removed at its end if the session made it
        and its metadata lists every change it made to files/."""
        mark = self._marks[run_id] = RunMark(art, run_id)
        ok = False
        try:
            yield art
            ok = True
        finally:
            del self._marks[run_id]
            mark.end(ok)

    def _mark(self, art: int, run_id: str) -> RunMark:
        """The session's mark; outside a session (never in promoter), one that stays."""
        return self._marks.get(run_id) or RunMark(art, run_id, detached=True)

    def mark(self, art: int, run_id: str) -> None:
        """A change to files/ that the next metadata write comes before (a removal): the
        run is marked durably first, and the mark stays for the next start's repair."""
        mark = self._mark(art, run_id)
        mark.set()
        mark.flush()

    # -- metadata ----------------------------------------------------------------------------

    def meta_version(self, run_id: str) -> Version | None:
        """metadata.json's version tag (one `stat`), or None when there is none. A string
        path: listing 1,000 runs stats each, and pathlib joins cost three times the stat."""
        try:
            st = os.stat(f"{self.path}/{run_id}/{METADATA}", follow_symlinks=False)
        except (OSError, ValueError):
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def read_meta(self, art: int, run_id: str, limit: int) -> bytes | None:
        """metadata.json's bytes; None when absent, b"" for a link (corrupt).

        Raises Oversized, before reading any of it, for a file over `limit`
        (`promote.max_metadata_bytes`): a planted 1 GB metadata.json took 7 GB to parse.
        """
        run_fd: int | None = None
        try:
            run_fd = open_dir_chain(art, [run_id])
            fd, st = open_regular(run_fd, METADATA, allow_hardlinks=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except Refused:
            return b""  # a link where metadata.json should be: corrupt
        finally:
            if run_fd is not None:
                os.close(run_fd)
        try:
            if st.st_size > limit:
                raise Oversized(f"larger than promote.max_metadata_bytes ({limit})")
            return os.pread(fd, st.st_size, 0)
        finally:
            os.close(fd)

    def write_meta(self, art: int, run_id: str, data: bytes) -> Version:
        """Replace metadata.json atomically and durably (the run's lock is held); the version
        tag of what was written (as `meta_version`), not of what a `stat` finds after it."""
        mark = self._mark(art, run_id)
        held = mark.run_folder()  # the session's mark opened the run folder: no second open
        run_fd = held if held is not None else open_dir_chain(art, [run_id], create=True)
        try:
            st = atomic_write_bytes(run_fd, METADATA, data)
        finally:
            if held is None:
                os.close(run_fd)
        mark.written()  # it lists every change the session made so far
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    # -- stored files ------------------------------------------------------------------------

    def put_file(self, art: int, run_id: str, filename: str, src: int, st: os.stat_result,
                 checksum: bool, max_bytes: int, pools: CopyPools | None,
                 agent_id: str = "unknown") -> CopyResult:
        """Copy an open source into files/<filename>: atomic (temp, fsync, rename), hashed
        as it is copied; the folder's fsync is `sync_folders`, once a batch. One file has
        one flush: `pools` (for a batch's flushes) is not needed here."""
        parts = split_relpath(filename)
        mark = self._mark(art, run_id)
        mark.set()
        mark.flush()  # on disk before the copy's rename can be
        dst_dir = open_dir_chain(art, [run_id, FILES, *parts[:-1]], create=True)
        try:
            return copy_and_hash(src, st, dst_dir, parts[-1], checksum=checksum,
                                 max_bytes=max_bytes)
        finally:
            os.close(dst_dir)

    def batch(self, art: int, run_id: str, checksum: bool, max_bytes: int,
              pools: CopyPools | None) -> CopyBatch:
        """Copies into files/ made durable together by `commit()` (batchcopy.py, issue 15)."""
        return CopyBatch(art, [run_id, FILES], checksum, max_bytes, pools,
                         mark=self._mark(art, run_id))

    def sync_folders(self, art: int, run_id: str, folders: Iterable[tuple[str, ...]]) -> None:
        """Make renames into these folders of files/ durable, one fsync each."""
        for parts in folders:
            fd = open_dir_chain(art, [run_id, FILES, *parts])
            try:
                fsync_dir(fd)
            finally:
                os.close(fd)

    def open_file(self, run_id: str, filename: str) -> tuple[int, os.stat_result]:
        """An open descriptor on a stored copy; links are never followed."""
        parts = split_relpath(filename)
        with self.reading() as art:
            dir_fd = open_dir_chain(art, [run_id, FILES, *parts[:-1]])
            try:
                return open_regular(dir_fd, parts[-1], allow_hardlinks=True)
            finally:
                os.close(dir_fd)

    def read_file(self, run_id: str, filename: str) -> StoredRead:
        """The stored copy through its descriptor (closed with the StoredRead)."""
        fd, st = self.open_file(run_id, filename)
        return fd_read(fd, st)

    def list_files(self, run_id: str) -> list[str]:
        with self.reading() as art:
            return [name for name, _, _ in recovery.walk_files(art, run_id)]

    def remove_file(self, art: int, run_id: str, filename: str,
                    sha256: str | None = None) -> None:
        """Remove a stored copy; one already gone is no error. The run's lock is held, so
        the copy is the entry's version (`sha256` needs no check). The run is marked until
        the removal is on disk (its entry went first: `mark`)."""
        parts = split_relpath(filename)
        mark = self._mark(art, run_id)
        mark.set()
        with contextlib.suppress(OSError, Refused):
            mark.flush()
            dir_fd = open_dir_chain(art, [run_id, FILES, *parts[:-1]])
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(parts[-1], dir_fd=dir_fd)
                os.fsync(dir_fd)
                mark.written()  # gone for good: nothing left unlisted
            finally:
                os.close(dir_fd)

    def trash_run(self, art: int, run_id: str) -> None:
        """Move the run folder out of the store in one rename (then `empty_trash`)."""
        trash_fd = open_dir_chain(art, [TRASH], create=True)
        try:
            os.rename(run_id, f"{run_id}.{uuid.uuid4().hex}", src_dir_fd=art,
                      dst_dir_fd=trash_fd)
            fsync_dir(art)
        finally:
            os.close(trash_fd)

    def empty_trash(self) -> None:
        """Remove what deletions left in the trash; one entry that cannot go stops no other."""
        try:
            with folder(self.path / TRASH) as trash:
                for name in os.listdir(trash):
                    try:
                        remove_tree(trash, name)  # any depth: never shutil.rmtree (DESIGN §6)
                    except OSError as exc:
                        log.warning(events.TRASH_FAILED, name=name,
                                    reason=exc.strerror or str(exc))
        except OSError:
            pass

    # -- recovery: recovery.py walks the folders -------------------------------------------

    def has_files(self, art: int, run_id: str) -> bool:
        return recovery.has_files(art, run_id)

    def stored_entries(self, art: int, run_id: str, ctx: RunContext,
                       checksum: bool) -> list[ArtifactEntry]:
        return recovery.stored_entries(art, run_id, ctx, checksum)

    def set_aside(self, art: int, run_id: str, now: datetime) -> str:
        return recovery.set_aside(art, run_id, now)

    def remove_temps(self, art: int, run_id: str) -> None:
        recovery.remove_temps(art, run_id)

    def relist(self, art: int, meta: RunMetadata, context: Callable[[], RunContext],
               checksum: bool) -> Relisted | None:
        """Walk files/ only where a write may have been cut short: a marked run, or every
        run until the store has been repaired whole once (runmark.py, issue 15)."""
        if self.marks_trusted() and not is_marked(art, meta.run_id):
            return None
        mark = self._mark(art, meta.run_id)
        mark.adopt()  # removed at the session's end once the run is listed again
        fixed = recovery.relist(art, meta, context, checksum)
        if fixed is None:
            mark.written()  # listed as it is
        return fixed

    def marks_trusted(self) -> bool:
        """Whether a run's mark alone says if its files/ must be walked (`repaired_all`)."""
        if not self._trusted:
            self._trusted = os.path.lexists(self.path / REPAIRED)
        return self._trusted

    def repaired_all(self) -> None:
        """Every run was repaired (each walked, unmarked or not): from now on a run's mark
        alone says whether its files/ must be walked. Its loss costs one whole walk more.
        Whatever is there already is left alone, and nothing is opened that could block (a
        FIFO planted there has no reader: O_NONBLOCK fails at once instead)."""
        if self.marks_trusted():
            return
        with contextlib.suppress(OSError):
            os.close(os.open(self.path / REPAIRED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                             | os.O_NONBLOCK | os.O_CLOEXEC, 0o644))
            self._trusted = True

    def clean_leftovers(self) -> None:
        self.empty_trash()

    # -- tombstones --------------------------------------------------------------------------

    def read_tombstone(self, run_id: str) -> bytes | None:
        """The tombstone's bytes, None when there is none (read every batch: a string path
        and a plain descriptor, not pathlib's and io's layers, issue 15)."""
        try:
            fd = os.open(f"{self.path}/{TOMBSTONES}/{run_id}", os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            parts = []
            while piece := os.read(fd, 1 << 16):
                parts.append(piece)
            return b"".join(parts)
        except OSError:  # a folder in its place (EISDIR), as pathlib's read said
            return None
        finally:
            os.close(fd)

    def write_tombstone(self, art: int, run_id: str, data: bytes) -> None:
        tomb_fd = open_dir_chain(art, [TOMBSTONES], create=True)
        try:
            atomic_write_bytes(tomb_fd, run_id, data)
        finally:
            os.close(tomb_fd)

    def tombstones(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.path / TOMBSTONES) if is_valid_run_id(n)]
        except OSError:
            return []

    def drop_tombstone(self, run_id: str) -> bool:
        """True when there was one to drop."""
        try:
            (self.path / TOMBSTONES / run_id).unlink()
        except FileNotFoundError:
            return False
        return True
