"""Asking the kernel to write a copy's bytes to disk early, and to flush a file system.

Python 3.11's `os` has neither `sync_file_range(2)` nor `syncfs(2)`: both come from the C
library the interpreter already has (`ctypes.CDLL(None)`; never
`ctypes.util.find_library`, which runs ldconfig: seconds at start-up under load), looked up
at first use, not at import. Where a call is missing (another C library, another system)
its function here says so and the caller does without: `start_writeback` is a hint only,
and a failed `syncfs` means an `fsync` of each file.

Why early writeback (issue 15): a batch used to leave every copy dirty in the page cache
until its commit, whose flush then waited for all of it at once while the disk had been
idle during the copying. Started as soon as a copy is written, the disk works while the
next file is read and hashed, and the commit's `fsync` waits only for what is left. It
never replaces that `fsync`: `sync_file_range` makes nothing durable (no metadata, no
disk cache flush), and an error it meets is reported again by the `fsync`.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any, cast

__all__ = ["EARLY_WRITEBACK_BYTES", "libc_function", "start_writeback", "syncfs"]

EARLY_WRITEBACK_BYTES = 256 << 10  # smaller copies are left to the commit's one flush
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages


@functools.cache
def libc_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """The C library's `name`, or None where it has none."""
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    func.restype = ctypes.c_int
    return cast(Callable[..., int], func)


def syncfs(fd: int) -> int:
    """syncfs(fd): 0 when done; -1 on an error or where there is none (then fsync each)."""
    func = libc_function("syncfs", ctypes.c_int)
    return -1 if func is None else func(fd)


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Start writing `fd`'s dirty pages in [offset, offset + length) to disk (length 0: to
    the end) without waiting: True if the kernel took the request. A hint: nothing is
    durable until the caller's fsync, which also reports any error met here."""
    func = libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                          ctypes.c_uint)
    return func is not None and func(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0
