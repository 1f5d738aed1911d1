"""File access that never follows a symbolic link and never leaves half a file.

Every path below a trusted base folder is walked one component at a time with
`dir_fd` and `O_NOFOLLOW` (DESIGN §6): a link anywhere on the way is refused,
not resolved. Copies are written to an unnamed file in the destination folder
(`O_TMPFILE`) and linked to their name once flushed; where the file system has no
unnamed files, to a `.promoter-` temporary name renamed into place. Readers see whole
files only, and a crash before the link leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from promoter import stopcopy
from promoter.placing import open_staged, place, temp_name, unnamed_supported
from promoter.writeback import EARLY_WRITEBACK_BYTES, start_writeback

__all__ = [
    "FLUSHERS",
    "CopyPools",
    "CopyResult",
    "Refused",
    "SourceChanged",
    "atomic_write_bytes",
    "copy_and_hash",
    "describe_os_error",
    "folder",
    "fsync_dir",
    "open_dir",
    "open_dir_chain",
    "open_regular",
    "out_of_descriptors",
    "place",
    "remove_tree",
    "stage_copy",
    "temp_name",
    "unnamed_supported",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 128 << 10  # read, hashed and written while it is still in the core's cache
WRITEBACK_STEP = 1 << 20  # a long copy starts the writeback of each MiB it has written
FLUSHERS = 4  # a batch's fsyncs in flight at once (CopyPools.flusher's threads)


class Refused(Exception):
    """The entry must never be read: a link, not a regular file, or a hard link."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceChanged(Exception):
    """The source changed while it was copied; it is tried again once quiet."""


def open_dir(path: str | os.PathLike[str]) -> int:
    """Open a trusted base folder (from the configuration)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@contextlib.contextmanager
def folder(path: str | os.PathLike[str]) -> Iterator[int]:
    """A trusted base folder's descriptor for the length of a block."""
    fd = open_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_child_dir(parent_fd: int, name: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # O_NOFOLLOW|O_DIRECTORY on a link gives ELOOP or ENOTDIR: tell which.
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                raise exc from None
            if stat.S_ISLNK(st.st_mode):
                raise Refused("symlink on the path") from None
            raise Refused("not a folder on the path") from None
        raise


def open_dir_chain(base_fd: int, parts: Sequence[str], create: bool = False) -> int:
    """Open `base/parts...` as a folder without following any link; the caller closes it."""
    if len(parts) == 1:  # the common case (a run's folder): no `dup` and `close` around it
        return _open_child_dir(base_fd, parts[0], create)
    fd = os.dup(base_fd)
    try:
        for part in parts:
            child = _open_child_dir(fd, part, create)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove `name` in `parent_fd` with everything below it: shutil.rmtree for trees of any
    depth (it recurses on Python 3.11, and agents nest thousands of folders, DESIGN §6).

    One descriptor at a time walks down (never following a link) and back up through `..`,
    with only the names of the way down kept, so neither the interpreter's stack nor the
    descriptor limit bounds the depth. For promoter's own folders (the trash, a run's copy):
    nobody else renames folders there during the walk. Raises OSError on what cannot go."""
    try:
        os.unlink(name, dir_fd=parent_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError as exc:  # some systems answer EPERM for unlink on a folder
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise exc from None
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    way: list[str] = []
    try:
        while True:
            with os.scandir(fd) as it:
                entries = list(it)
            child = None
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    child = child or entry.name
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                down = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                way.append(child)
                continue
            if not way:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(way.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def open_regular(dir_fd: int, name: str, allow_hardlinks: bool,
                 blocking: bool = True) -> tuple[int, os.stat_result]:
    """Open a regular file for reading, refusing links, FIFOs, sockets, devices, hard links.

    The entry is checked with lstat before opening (a device is never opened)
    and again with fstat after (the entry may have been swapped in between). It is opened
    O_NONBLOCK (a FIFO swapped in must not hang the open); `blocking=False` leaves it so,
    for a caller that only reads it: reads of a regular file ignore the flag, and the two
    fcntl calls were a tenth of a small file's syscalls in a burst (issue 15).
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    _check_kind(st, allow_hardlinks)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("symlink") from None
        raise
    try:
        fst = os.fstat(fd)
        _check_kind(fst, allow_hardlinks)
        if blocking:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, fst


def _check_kind(st: os.stat_result, allow_hardlinks: bool) -> None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        raise Refused("symlink")
    if stat.S_ISFIFO(mode):
        raise Refused("fifo")
    if stat.S_ISSOCK(mode):
        raise Refused("socket")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise Refused("device")
    if stat.S_ISDIR(mode):
        raise Refused("folder")
    if not stat.S_ISREG(mode):
        raise Refused("not a regular file")
    if st.st_nlink > 1 and not allow_hardlinks:
        raise Refused("hard link")


def fsync_dir(dir_fd: int) -> None:
    """Make a rename in this folder durable."""
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


def atomic_write_bytes(dir_fd: int, name: str, data: bytes, durable: bool = True) -> os.stat_result:
    """Replace `name` with `data` (temp, flush, rename, folder flush); the stat as written."""
    tmp = temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            st = os.fstat(fd)  # what we wrote, after the rename (which moves its ctime)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        fsync_dir(dir_fd)
    return st


class CopyResult(NamedTuple):
    """A copy's size and digest (a tuple: made once a file, issue 15)."""

    size: int
    sha256: str | None


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_dev) == (b.st_size, b.st_mtime_ns, b.st_ino,
                                                              b.st_dev)


class CopyPools:
    """The helper threads of a batch's flush (`batchcopy.flush_all`: the fsyncs of its big
    copies at once, which the file system commits together: half the wait of one after
    another), owned by the daemon's pipeline: created on first use, shut down by
    `shutdown()`. A command or the server passes none and flushes in its own thread (no
    thread of ours outlives its work)."""

    def __init__(self) -> None:
        self.flusher = ThreadPoolExecutor(max_workers=FLUSHERS,
                                          thread_name_prefix="promoter-copy-flusher")

    def shutdown(self) -> None:
        self.flusher.shutdown(wait=True)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


_buffers = threading.local()


def _buffer() -> bytearray:
    """The thread's copy buffer, made once (a fresh one a file cost more than a 4 KiB copy)."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(CHUNK)
    return buf


def copy_and_hash(
    src_fd: int,
    src_stat: os.stat_result,
    dst_dir_fd: int,
    dst_name: str,
    checksum: bool,
    max_bytes: int,
) -> CopyResult:
    """`stage_copy`, then flush and `place`: one file copied atomically and durably."""
    out, tmp, result = stage_copy(src_fd, src_stat, dst_dir_fd, dst_name, checksum, max_bytes)
    try:
        try:
            os.fsync(out)
            place(out, tmp, dst_dir_fd, dst_name)
        finally:
            os.close(out)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dst_dir_fd)
        raise
    return result


def stage_copy(
    src_fd: int,
    src_stat: os.stat_result,
    dst_dir_fd: int,
    dst_name: str,
    checksum: bool,
    max_bytes: int,
    unnamed: bool = True,
) -> tuple[int, str | None, CopyResult]:
    """Copy an open source into a new file in `dst_dir_fd`, hashing the bytes copied; (its
    open descriptor, its temporary name or None when unnamed, the result). Unnamed
    (`O_TMPFILE`) where the file system allows it and `unnamed`: no name is made nor
    renamed, and a crash leaves nothing (an unnamed file must stay open until `place`d).
    Not flushed, not placed: the caller (`copy_and_hash`, `batchcopy.CopyBatch`) does
    both, in that order.

    Each chunk is read once into a buffer small enough to stay in the core's cache, then
    hashed and written from there (1 MiB chunks, read, hashed and written by two threads,
    cost 1.6 times the CPU: issue 15). A big copy's writeback is started as it goes
    (`writeback.start_writeback`), so the caller's flush waits only for what is left.
    SourceChanged unless the source kept its size and times; GivenUp (stopcopy.py) when the
    daemon stops meanwhile; nothing left on any error.
    """
    out, tmp = open_staged(dst_dir_fd, dst_name, unnamed)
    digest = hashlib.sha256() if checksum else None
    buf = _buffer()
    size = started = looked = 0  # bytes copied, whose writeback was started, at the last look
    try:
        while n := os.readv(src_fd, [buf]):
            size += n
            if size - looked >= stopcopy.CHECK_BYTES:  # a long copy may hold a stop
                stopcopy.check()
                looked = size
            if size > max_bytes:
                raise Refused(f"grew over the max_file_bytes limit ({max_bytes}) while copied")
            if size > src_stat.st_size:  # doomed: stop now, not at the end of the growth
                raise SourceChanged("source grew during the copy")
            chunk = memoryview(buf)[:n]
            if digest is not None:
                digest.update(chunk)
            _write_all(out, chunk)
            if size - started >= WRITEBACK_STEP:
                start_writeback(out, started, size - started)
                started = size
            if size == src_stat.st_size:
                break  # no read for the end: a growth since shows in the fstat below
        if size >= EARLY_WRITEBACK_BYTES and started < size:
            start_writeback(out, started, size - started)
        os.utime(out, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        after = os.fstat(src_fd)
        if size != src_stat.st_size or not _same_version(src_stat, after):
            raise SourceChanged("source changed during the copy")
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(out)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dst_dir_fd)
        raise
    return out, tmp, CopyResult(size=size, sha256=digest.hexdigest() if digest else None)


def out_of_descriptors(exc: BaseException) -> bool:
    """EMFILE or ENFILE: the process (or system) cannot open one more file right now.

    Not "no such file": a reader answers it as the store being unusable (503),
    never as a missing file (404).
    """
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


def describe_os_error(exc: OSError) -> str:
    """One line naming the operation (a note added where it was known) and the path(s)."""
    paths = " -> ".join(os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None)
    notes = getattr(exc, "__notes__", None)
    if notes:
        return f"cannot {notes[0]} ({paths or 'the store'}): {exc.strerror or exc}"
    return f"I/O error on {paths or 'the store'}: {exc.strerror or exc}"
