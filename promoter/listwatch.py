"""The start-up child's own watches (promoter.prescan): what changed in a folder between
its listing and the moment the daemon's own watches took over (DESIGN §5, issue 15).

The child lists `sessions/` while the daemon is still importing, before the daemon's
watches exist. Each folder it lists gets a watch of the child's own inotify instance
first (through `/proc/self/fd/N`: the very folder the walk opened, never a name looked
up again), so a change made after that folder's listing is an event here, read once the
daemon says its watches are set. The runs with any event are left out of the listing
and scanned by the daemon itself.

libc's functions are looked up in the daemon before the fork (a `dlopen` in the child
could wait for a loader lock another thread held at the fork).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct
from typing import Any, NamedTuple

__all__ = ["Libc", "ListWatch", "NoWatch", "libc"]

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW = 0x400, 0x800, 0x4000
# anything that changes what a listing says: names, sizes, times, folders
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
IN_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # IN_NONBLOCK | IN_CLOEXEC (the same bits)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows
SHARE = 4  # the child takes at most this part of the user's watch limit (the daemon's
DEFAULT_LIMIT = 8192  # own watches must not fail for the child's: they stay, these end)
TOP = ""  # the run id the watch of `sessions/` itself stands for


class Libc(NamedTuple):
    prctl: Any
    inotify_init1: Any
    inotify_add_watch: Any


@functools.cache
def libc() -> Libc | None:
    """libc's functions the child needs; None where there is no such libc."""
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        add = lib.inotify_add_watch
        add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return Libc(lib.prctl, lib.inotify_init1, add)
    except (OSError, AttributeError):
        return None


class ListWatch:
    """The child's inotify instance and which run each of its watches stands for."""

    def __init__(self, lib: Libc | None) -> None:
        if lib is None:
            raise OSError(errno.ENOSYS, "no libc inotify")
        self._add = lib.inotify_add_watch
        self.fd = lib.inotify_init1(IN_FLAGS)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._runs: dict[int, set[str]] = {}
        self.top = (0, 0)  # device and inode of the `sessions/` watched (TOP)
        self._left = _limit() // SHARE

    def add(self, fd: int, run_id: str) -> None:
        """Watch the folder open at `fd`, for `run_id` (TOP: `sessions/`). Raises OSError
        when it cannot: the caller leaves that run out of its listing."""
        if self._left <= 0:
            raise OSError(errno.ENOSPC, "the child's share of the inotify watch limit")
        wd = self._add(self.fd, b"/proc/self/fd/%d" % fd, WATCH_MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self._left -= 1
        self._runs.setdefault(wd, set()).add(run_id)
        if run_id == TOP:
            st = os.fstat(fd)
            self.top = (st.st_dev, st.st_ino)

    def changed(self) -> set[str] | None:
        """The runs whose folders saw any change since their watch was added; None when
        that cannot be told of any run (the queue overflowed, `sessions/` itself moved)."""
        found: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return found
            at = 0
            while at < len(data):
                wd, mask, _, length = EVENT.unpack_from(data, at)
                name = data[at + EVENT.size:at + EVENT.size + length].rstrip(b"\0")
                at += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    return None
                for run_id in self._runs.get(wd, ()):
                    if run_id != TOP:
                        found.add(run_id)
                    elif name:
                        found.add(os.fsdecode(name))  # a run folder made, moved or removed
                    else:
                        return None


class NoWatch:
    """A child made once the daemon's watches are set needs none of its own: no inotify
    instance and no watch taken from the daemon's limits (r8 probe F1, F4)."""

    def __init__(self) -> None:
        self.top = (0, 0)

    def add(self, fd: int, run_id: str) -> None:
        if run_id == TOP:
            st = os.fstat(fd)
            self.top = (st.st_dev, st.st_ino)

    def changed(self) -> set[str] | None:
        return set()


def _limit() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return DEFAULT_LIMIT
