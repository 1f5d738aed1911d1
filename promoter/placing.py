"""Where a copy is written and how it gets its name (issue 15, fifth round).

A copy is written to an unnamed file in its destination folder (`O_TMPFILE`) and linked
to its name once flushed: ext4's create of a named temporary was 85 % of a 4 KiB copy's
time, and a crash before the link leaves nothing to clean up. Where the file system has
no unnamed files (or there is no /proc to link one by), a `.promoter-` temporary name is
written instead and renamed into place. Either way readers see whole files only.

An unnamed file is linked by its descriptor alone (`linkat(fd, "", AT_EMPTY_PATH)`), which
Linux allows the file's opener since 6.10 (root always): the way through /proc/self/fd
resolves a path through procfs for every copy, a fifth of the link's cost (issue 15,
seventh round). Where the kernel refuses it, /proc is used from then on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import threading

from promoter.names import TEMP_PREFIX
from promoter.writeback import libc_function

__all__ = ["link_unnamed", "open_staged", "open_unnamed", "place", "temp_name",
           "unnamed_supported"]

_counter = 0
_counter_lock = threading.Lock()


def temp_name(hint: str = "tmp") -> str:
    """A unique `.promoter-` name: never promoted, removed at start-up if left behind."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    return f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident() % 100000}-{n}-{hint[:40]}"


_UNNAMED_REFUSED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)  # open(2): no O_TMPFILE here
_FD_LINKS = "/proc/self/fd"


@functools.cache
def unnamed_supported() -> bool:
    """Whether unnamed copies may be made: O_TMPFILE, and /proc/self/fd for the link that
    never fails (`link_unnamed` tries the descriptor's own link first, which kernels
    before 6.10 refuse a caller without CAP_DAC_READ_SEARCH). Without /proc, or on a
    system without O_TMPFILE, every copy takes a named temporary."""
    return hasattr(os, "O_TMPFILE") and os.path.isdir(_FD_LINKS)


def open_unnamed(dir_fd: int) -> int:
    """An unnamed regular file in the folder (`O_TMPFILE`), gone on close unless linked.
    OSError with an errno of `_UNNAMED_REFUSED` where the file system has none."""
    return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)


def open_staged(dir_fd: int, dst_name: str, unnamed: bool) -> tuple[int, str | None]:
    """A new file to copy into: unnamed if it may be and the file system has them, else a
    `.promoter-` temporary beside `dst_name`; (its descriptor, its name or None)."""
    if unnamed and unnamed_supported():
        try:
            return open_unnamed(dir_fd), None
        except OSError as exc:
            if exc.errno not in _UNNAMED_REFUSED:
                raise
    tmp = temp_name(dst_name)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o644, dir_fd=dir_fd), tmp


_AT_EMPTY_PATH = 0x1000  # <fcntl.h>: linkat's source is the descriptor itself
# what an older kernel answers a caller without CAP_DAC_READ_SEARCH (ENOENT), or a system
# without the flag: the link is made by its /proc path instead
_EMPTY_PATH_REFUSED = (errno.ENOENT, errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_by_descriptor = [True]  # until the kernel refuses a link by descriptor


def link_unnamed(out: int, name: str, dir_fd: int) -> None:
    """Link the open unnamed file `out` to `name` in `dir_fd`, as `os.link` would (the same
    errors: FileExistsError where the name is taken). By descriptor where the kernel
    allows it, else through /proc/self/fd; an ENOENT (a refusal, or the folder gone) is
    tried the /proc way, which tells them apart."""
    linkat = libc_function("linkat", ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_int) if _by_descriptor[0] else None
    if linkat is not None:
        if linkat(out, b"", dir_fd, os.fsencode(name), _AT_EMPTY_PATH) == 0:
            return
        err = ctypes.get_errno()
        if err not in _EMPTY_PATH_REFUSED:
            raise OSError(err, os.strerror(err), name)
    os.link(f"{_FD_LINKS}/{out}", name, dst_dir_fd=dir_fd)
    _by_descriptor[0] = False  # the path way worked where the descriptor's was refused


def place(out: int, tmp: str | None, dir_fd: int, name: str) -> None:
    """Give a flushed staged copy its name: rename the named temporary `tmp` over `name`, or
    link the unnamed file `out` (still open) to it. A link never replaces: where `name` is
    taken (a new version of a copy), the unnamed file is linked to a temporary name that is
    renamed over it, so the replacement stays atomic. Raises OSError (e.g. EISDIR: a folder
    holds the name); nothing named is left behind then. The folder's flush is the caller's."""
    if tmp is not None:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        link_unnamed(out, name, dir_fd)
        return
    except FileExistsError:
        pass
    tmp = temp_name(name)
    link_unnamed(out, tmp, dir_fd)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
