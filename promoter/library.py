"""The curated library: one flat folder of plain files (DESIGN §1).

promoter only adds to it on request. A name is never overwritten unless asked:
without `overwrite`, the finished temporary file is hard-linked to its name,
which fails atomically if the name was taken meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from promoter.backend import StoredRead, fd_read
from promoter.clock import Clock, from_timestamp_ns
from promoter.errors import ConflictError, NotFoundError, StoreIOError, TooLargeError
from promoter.metadata import guess_content_type
from promoter.names import TEMP_PREFIX, check_library_name
from promoter.safeio import (
    Refused,
    fsync_dir,
    open_dir,
    open_regular,
    out_of_descriptors,
    temp_name,
)

__all__ = ["Library", "LibraryFile", "capped_copy"]

STALE_TEMP_SECONDS = 600


def capped_copy(stream: BinaryIO, max_bytes: int) -> Callable[[int], None]:
    """The writer an upload hands to `add` (here or on a bucket): it copies the stream into
    the descriptor and raises TooLargeError once more than `max_bytes` came."""

    def write(fd: int) -> None:
        total = 0
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise TooLargeError(f"upload over max_upload_bytes ({max_bytes})")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]

    return write


@dataclass(frozen=True)
class LibraryFile:
    name: str
    size_bytes: int
    content_type: str
    modified_at: datetime


class Library:
    """Adds, lists and opens files of `library/`."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock

    def _fd(self) -> int:
        try:
            return open_dir(self.path)
        except OSError as exc:
            raise StoreIOError(f"library folder unusable: {exc.strerror}") from None

    def list(self) -> list[LibraryFile]:
        """Every regular file, sorted by name; dot-files and links are not library files."""
        try:
            with os.scandir(self.path) as it:
                found = [(e.name, e.stat(follow_symlinks=False)) for e in it
                         if not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreIOError(f"library folder unreadable: {exc.strerror}") from None
        files = [self._describe(name, st) for name, st in found if stat.S_ISREG(st.st_mode)]
        return sorted(files, key=lambda f: f.name)

    @staticmethod
    def _describe(name: str, st: os.stat_result) -> LibraryFile:
        return LibraryFile(name=name, size_bytes=st.st_size, content_type=guess_content_type(name),
                           modified_at=from_timestamp_ns(st.st_mtime_ns))

    def open(self, name: str) -> tuple[int, os.stat_result, LibraryFile]:
        """An open descriptor on a library file; links are never followed."""
        check_library_name(name)
        dir_fd = self._fd()
        try:
            fd, st = open_regular(dir_fd, name, allow_hardlinks=True)
        except (OSError, Refused) as exc:
            if out_of_descriptors(exc):
                raise StoreIOError("the server cannot open files now: too many open "
                                   "descriptors") from None
            raise NotFoundError(f"no library file {name}") from None
        finally:
            os.close(dir_fd)
        return fd, st, self._describe(name, st)

    def read(self, name: str) -> tuple[StoredRead, LibraryFile]:
        """The file to read in ranges (as `S3Library.read`), through its descriptor."""
        fd, st, item = self.open(name)
        return fd_read(fd, st), item

    def add(self, name: str, write: Callable[[int], None], overwrite: bool,
            mtime_ns: int | None = None) -> LibraryFile:
        """Write a new library file through `write(fd)`, then publish it atomically."""
        check_library_name(name)
        dir_fd = self._fd()
        tmp = temp_name(name)
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o644, dir_fd=dir_fd)
            try:
                write(out)
                os.fsync(out)
                if mtime_ns is not None:
                    os.utime(out, ns=(mtime_ns, mtime_ns))
                st = os.fstat(out)
            finally:
                os.close(out)
            if overwrite:
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                try:
                    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                            follow_symlinks=False)
                except FileExistsError:
                    raise ConflictError(f"library file {name} exists") from None
                os.unlink(tmp, dir_fd=dir_fd)
            fsync_dir(dir_fd)
            return self._describe(name, st)
        except OSError as exc:
            raise StoreIOError(f"cannot write library file {name}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            os.close(dir_fd)

    def remove(self, name: str) -> LibraryFile:
        """Delete one library file; a link or a folder under that name is no library file."""
        check_library_name(name)
        dir_fd = self._fd()
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise NotFoundError(f"no library file {name}")
            os.unlink(name, dir_fd=dir_fd)
            fsync_dir(dir_fd)
        except FileNotFoundError:
            raise NotFoundError(f"no library file {name}") from None
        except OSError as exc:
            raise StoreIOError(f"cannot delete library file {name}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)
        return self._describe(name, st)

    def exists(self, name: str) -> bool:
        check_library_name(name)
        return os.path.lexists(self.path / name)

    def add_stream(
        self, name: str, stream: BinaryIO, overwrite: bool, max_bytes: int
    ) -> LibraryFile:
        """An upload: refused whole (nothing left behind) once it passes `max_bytes`."""
        if not overwrite and self.exists(name):
            raise ConflictError(f"library file {name} exists")
        return self.add(name, capped_copy(stream, max_bytes), overwrite)

    def remove_stale_temps(self) -> int:
        """Temporary files left by a crash; recent ones may belong to a live upload."""
        removed = 0
        now = self.clock.now().timestamp()
        try:
            with os.scandir(self.path) as it:
                for entry in it:
                    if entry.name.startswith(TEMP_PREFIX):
                        st = entry.stat(follow_symlinks=False)
                        if now - st.st_mtime > STALE_TEMP_SECONDS:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                                removed += 1
        except OSError:
            pass
        return removed
