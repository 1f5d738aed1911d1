"""A minimal recursive inotify reader (ctypes, Linux), for watching destinations.

The benchmark uses it to see the moment a file becomes visible at a tool's destination
without polling thousands of pending files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from dataclasses import dataclass

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR
_HEADER = struct.Struct("iIII")


@dataclass(frozen=True)
class Event:
    rel_dir: str  # folder of the event, relative to the watched root ("" for the root)
    name: str
    mask: int

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & IN_ISDIR)


class Inotify:
    """Watches a folder and its subfolders down to max_depth (0 = the root only)."""

    def __init__(self, root: str, max_depth: int = 64) -> None:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        self.root = root.rstrip("/")
        self.max_depth = max_depth
        self.overflowed = False
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._dirs: dict[int, str] = {}
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_tree(self, rel_dir: str) -> list[Event]:
        """Watch rel_dir and its subfolders; synthetic events for the files already there.

        A folder created a moment ago may hold files that arrived before its watch did; the
        synthetic events make sure they are not missed.
        """
        found: list[Event] = []
        stack = [rel_dir]
        for _ in range(1_000_000):  # bounded walk
            if not stack:
                break
            rel = stack.pop()
            depth = rel.count("/") + 1 if rel else 0
            path = os.path.join(self.root, rel) if rel else self.root
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), MASK)
            if wd < 0:
                continue  # gone already, or not a folder
            self._dirs[wd] = rel
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            if depth < self.max_depth:
                                stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                        else:
                            found.append(Event(rel, entry.name, IN_CLOSE_WRITE))
            except OSError:
                continue
        return found

    def read(self, timeout_s: float) -> list[Event]:
        """Events queued now, waiting up to timeout_s for the first; new folders are watched."""
        if not self._poll.poll(max(0, int(timeout_s * 1000))):
            return []
        events: list[Event] = []
        for _ in range(1000):  # bounded: drain what is queued
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                raw = data[offset + _HEADER.size : offset + _HEADER.size + length]
                offset += _HEADER.size + length
                name = os.fsdecode(raw.rstrip(b"\0"))
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    continue
                if mask & IN_IGNORED:
                    self._dirs.pop(wd, None)
                    continue
                rel = self._dirs.get(wd)
                if rel is None:
                    continue
                event = Event(rel, name, mask)
                if event.is_dir:
                    depth = rel.count("/") + 1 if rel else 0
                    if depth < self.max_depth and mask & (IN_CREATE | IN_MOVED_TO):
                        events += self.add_tree(f"{rel}/{name}" if rel else name)
                    continue
                if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                    events.append(event)
        return events
