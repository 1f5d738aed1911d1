"""watchdog's inotify reader and emitter, reporting what watchdog 7 keeps to itself.

See `promoter.observers` for what watchdog 7.1 does and why each override exists.
Imported late (by `observers._inotify_classes`): on a libc without inotify, the
import of watchdog's inotify module itself fails and the polling observer is used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import termios
import threading
import time
import weakref
from typing import Any

from watchdog.events import DirModifiedEvent, FileClosedEvent, FileSystemEvent
from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    DEFAULT_EVENT_BUFFER_SIZE,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent
from watchdog.utils.delayed_queue import DelayedQueue

from promoter.watchtree import (
    Report,
    bounded_walk,
    output_depth,
    reporting_overflow,
    run_reporting,
    wanted_folder,
)

__all__ = ["READ_PAUSE_S", "BoundedWatchGroup", "SupervisedInotifyEmitter",
           "SupervisedInotifyFD", "superseded"]

READ_PAUSE_S = 0.002  # after a read with events: a lone file waits this long, a burst wakes less
# (no pause after a lone file's read was tried in round 9: its create, write and close then
# come in reads of their own, and the daemon's p99 latency went from ~0.3 s to 1.5-2.3 s)
_CREATE, _MODIFY = InotifyConstants.IN_CREATE, InotifyConstants.IN_MODIFY
_SUPERSEDED = frozenset({_CREATE, _MODIFY})  # a file's own masks, exactly (no IN_ISDIR)
_CLOSE_WRITE = InotifyConstants.IN_CLOSE_WRITE
_SUPERSEDING = frozenset({_MODIFY, _CLOSE_WRITE})
_OVERFLOW = InotifyConstants.IN_Q_OVERFLOW
_HEADER = struct.Struct("iIII")  # struct inotify_event without its name


Raw = tuple[WatchDescriptor, Mask, int, bytes]  # an inotify_event: wd, mask, cookie, name


def superseded(found: list[Raw]) -> list[Raw]:
    """`found` (one read's events, in order) without each file's creation or write that the
    same file's next event in the read, a write or a close, supersedes: the settle state
    (`Settler.touch`) is the last touch's alone, so dropping them changes nothing downstream,
    and a burst's 4 KiB file costs one event instead of three (create, modify, close) in
    watchdog's grouper, the emitter, the handler and the settle thread (issue 15). Folders,
    moves, deletions and attributes are never dropped, nor anything a move or deletion of
    the same name follows."""
    keep: list[Raw] = []
    later: dict[tuple[WatchDescriptor, bytes], int] = {}  # (wd, name) -> the mask of its next event
    for event in reversed(found):
        wd, mask, _, name = event
        key = (wd, name)
        if mask not in _SUPERSEDED or later.get(key) not in _SUPERSEDING:
            keep.append(event)
        later[key] = mask
    keep.reverse()
    return keep


class _HeldQueue(DelayedQueue[Any]):
    """watchdog's queue between the inotify reader and the emitter, waking the emitter once
    for each read of the reader (up to hundreds of events) rather than once an event: that
    wake (a futex call and a hand-over of the GIL) an event was most of the reader's CPU
    in a burst. Order, and the delay of unpaired moves, are watchdog's own."""

    def __init__(self, delay: float, fd: Any) -> None:
        super().__init__(delay)
        self._fd: Any = fd

    def put(self, element: Any, *, delay: bool = False) -> None:
        fd = self._fd
        if not getattr(fd, "holding", False) or threading.current_thread() is not fd:
            super().put(element, delay=delay)
            return
        with self._lock:
            self._queue.append((element, time.monotonic(), delay))
        self._fd.owed.add(self)  # woken by the reader once its read is handled

    def wake(self) -> None:
        with self._lock:
            self._not_empty.notify()

    def take_ready(self) -> list[Any]:
        """The events at the head that wait for nothing, taken at once, in order: what the
        emitter's next `get()` calls would return, one lock for all. An unpaired move out
        (delayed) stops the taking: it and all behind it are left to `get()`, which waits."""
        taken: list[Any] = []
        with self._lock:
            queue = self._queue
            while queue and not queue[0][2]:
                taken.append(queue.popleft()[0])
        return taken

    def waiting(self) -> bool:
        """Events the emitter has not taken yet: an unpaired move out holds every event
        behind it for `delay` (0.5 s), unseen by the fd's counts (probe-cpu F7)."""
        with self._lock:
            return bool(self._queue) and not self._closed


class BoundedWatchGroup(InotifyWatchGroup):
    """watchdog's recursive watch group, walking with an explicit stack and a depth bound."""

    def __init__(self, report: Report, root: str, *args: Any, **kwargs: Any) -> None:
        self._report, self._root = report, root  # set first: __post_init__ walks
        super().__init__(*args, **kwargs)

    def __post_init__(self) -> None:
        # the queue is swapped before the first watch exists: no event reaches the old one
        held = _HeldQueue(self._move_event_grouper.delay, self._inotify_fd)
        self._move_event_grouper._queue = held
        queues = getattr(self._inotify_fd, "queues", None)
        if queues is not None:  # for SupervisedInotifyFD.idle
            queues.add(held)
        super().__post_init__()

    def _add_all_callbacks(self, path: bytes) -> None:
        """Every folder's watch is added BEFORE the folder is listed, as watchdog's own
        os.walk does: a folder made in it meanwhile then has either its IN_CREATE or a
        place in the listing (so a watch of its own). Listed first, a folder made between
        the listing and the watch had neither and was never watched: with no rescan, its
        files were never promoted (`mkdir -p run/output/sub`, issue 15 round 5)."""
        text = os.fsdecode(path)
        if output_depth(self._root, text) > self._report.max_depth:
            self._report.too_deep(text)  # a folder made one level past the bound
            return
        if not (self.is_recursive and os.path.isdir(path)):
            self._add_callback(path)
            return
        for _ in bounded_walk(text, self._root, self._report,
                              enter=lambda here: self._add_callback(os.fsencode(here))):
            pass

    def _recursive_simulate(self, src_path: bytes) -> list[Any]:
        found = []
        for here, dirs, others in bounded_walk(os.fsdecode(src_path), self._root,
                                               self._report):
            wd = self._active_callbacks_by_path.get(os.fsencode(here))
            if wd is None:
                continue  # not watched (see watchdog's own comment on this case)
            for entry in dirs:
                found.append(InotifyEvent(wd, Mask(InotifyConstants.IN_CREATE
                                                   | InotifyConstants.IN_ISDIR), 0,
                                          os.fsencode(entry.name)))
            for entry in others:
                found.append(InotifyEvent(wd, InotifyConstants.IN_CREATE, 0,
                                          os.fsencode(entry.name)))
        return found

class SupervisedInotifyFD(InotifyFD):
    """watchdog's inotify reader, reporting overflows, failed watches and its own end."""

    def __init__(self, root: str, report: Report) -> None:
        super().__init__()
        self.name = "promoter-watch-inotify"
        self._root, self._report = root, report
        self._read = self._handled = 0
        self._stopping = False
        self.holding = False  # while a read's events are handled (see _HeldQueue)
        self.owed: set[_HeldQueue] = set()
        self.queues: weakref.WeakSet[_HeldQueue] = weakref.WeakSet()  # each emitter's group's

    def add_callback(self, path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
        text = os.fsdecode(path)
        if not wanted_folder(self._root, text):
            # watchdog skips a subfolder whose watch fails: no watch, no events, by design
            raise OSError(errno.EPERM, "not watched by design")
        try:
            wd = super().add_callback(path, mask, callback, id_)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # vanished: nothing lost
                self._report.watch_failed(text, exc.strerror or str(exc))
            raise
        if wd == -1:  # EACCES: watchdog keeps a dead watch and says nothing
            self._report.watch_failed(text, "permission denied")
        return wd

    def read_events(self, *, event_buffer_size: int = DEFAULT_EVENT_BUFFER_SIZE) -> list[Any]:
        """watchdog 7.1's own (its `_parse_event_buffer`, without a generator's step an
        event), with the superseded events dropped before they are objects."""
        buf = self._read_event_buffer(event_buffer_size)
        raw: list[Raw] = []
        unpack, i, end = _HEADER.unpack_from, 0, len(buf)
        while i + 16 <= end:
            wd, mask, cookie, length = unpack(buf, i)
            if wd != -1 or mask & _OVERFLOW:  # overflow's wd is -1; other global events: none
                raw.append((wd, mask, cookie, buf[i + 16:i + 16 + length].rstrip(b"\0")))
            i += 16 + length
        found = [InotifyEvent(*e) for e in superseded(raw)]
        self._read += len(found)
        return found

    def handle_event(self, event: Any) -> None:
        try:
            if event.is_queue_overflow:
                self._report.overflow()
                reporting_overflow(True)
                try:
                    super().handle_event(event)
                finally:
                    reporting_overflow(False)
                return
            super().handle_event(event)
        finally:
            self._handled += 1

    def idle(self) -> bool:
        if self._read != self._handled or any(q.waiting() for q in list(self.queues)):
            return False
        with contextlib.suppress(OSError):
            buf = fcntl.ioctl(self._inotify_fd, termios.FIONREAD, b"\0\0\0\0")
            return bool(struct.unpack("i", buf)[0] == 0)
        return True

    def stop(self) -> None:
        self._stopping = True
        super().stop()

    def run(self) -> None:
        run_reporting(self.name, self._report, self._read_loop, lambda: self._stopping)

    def _read_loop(self) -> None:
        """watchdog's `InotifyFD.run`, the emitter woken once a read (see _HeldQueue)."""
        while self.should_keep_running():
            found = self.read_events()
            self.holding = True
            try:
                for event in found:
                    self.handle_event(event)
            finally:
                self.holding = False
                owed, self.owed = self.owed, set()
                for held in owed:
                    held.wake()
            if found:  # let a burst's next events gather: one wake and one read for many
                self.stopped_event.wait(READ_PAUSE_S)

class SupervisedInotifyEmitter(InotifyFullEmitter):
    """Full events: a rename from an unwatched folder arrives as a move, not a creation.
    watchdog stops this emitter itself when the watched folder is deleted: reported."""

    asked_to_stop = False
    handler: Any = None  # set by observers.make_observer before the start
    in_hand = 0  # events taken from the group's queue and not yet handed over

    def __init__(self, *args: Any, report: Report, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = "promoter-watch-emitter"
        self._report = report

    def queue_event(self, event: FileSystemEvent) -> None:
        """Straight to the one handler, in this thread: watchdog's event queue and
        dispatcher thread were a fifth of a burst's watcher CPU (a lock, a wake and a
        repeat check an event) for one schedule with one handler. This thread alone
        hands events over, in the order the group delivers them, as the dispatcher did."""
        wanted = self._event_filter
        if wanted is not None and type(event) not in wanted:
            return  # e.g. the folder's DirModifiedEvent after every file event
        if self.handler is None:
            super().queue_event(event)
        else:
            self.handler.dispatch(event)

    def queue_events(self, timeout: float, *, full_events: bool = False) -> None:
        """watchdog 7.1's own, handing over every event ready in the group's queue at once
        (`_HeldQueue.take_ready`) rather than one a loop: one take and one hold of the
        emitter's lock for all a read brought. The first is waited for as watchdog does
        (an unpaired move out's delay included), and the order is the queue's."""
        with self._lock:
            inotify = self._inotify
        if inotify is None:
            super().queue_events(timeout, full_events=full_events)
            return
        event = inotify.read_event()
        if event is None:
            return
        held = inotify._move_event_grouper._queue
        ready = held.take_ready() if isinstance(held, _HeldQueue) else []
        self.in_hand = 1 + len(ready)  # taken from the queue, not yet handed over (idle)
        try:
            with self._lock:
                if self._inotify is None:
                    return  # stopped meanwhile: dropped, as watchdog's own drops it
                self.build_and_queue_event(event)
                for event in ready:
                    self.build_and_queue_event(event)
        finally:
            self.in_hand = 0

    def build_and_queue_event(self, event: Any, *, full_events: bool = True) -> None:
        """A file closed after a write (a burst's one event a file, `superseded`) is handed
        over as watchdog's own would hand it: its FileClosedEvent, then the folder's
        DirModifiedEvent, which the filter drops (so it is not made). watchdog asks ten
        properties of the event first; its mask alone says it (issue 15, seventh round).
        A handler with `closed(path)` gets the path alone: what it would do with that
        FileClosedEvent, without the object (issue 15, ninth round)."""
        wanted = self._event_filter
        if isinstance(event, PathedInotifyEvent) and event.ev.mask == _CLOSE_WRITE \
                and wanted is not None and DirModifiedEvent not in wanted \
                and FileClosedEvent in wanted:
            closed = getattr(self.handler, "closed", None)
            path = self._decode_path(event.path)
            if closed is not None:  # the handler's own shortcut: no event object at all
                closed(path)
            else:
                self.queue_event(FileClosedEvent(path))
            return
        super().build_and_queue_event(event, full_events=full_events)

    def on_thread_start(self) -> None:
        # watchdog's own, with the bounded group (watchdog 7.1 InotifyEmitter)
        self._inotify = BoundedWatchGroup(
            self._report, os.fsdecode(self.watch.path), self._inotify_fd,
            os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink)

    def rewatch(self, paths: list[str]) -> None:
        """Watches put off at the start (`promoter.watchshare`), under the group's lock as
        watchdog adds those of a new folder; one that fails now is reported as any."""
        group = getattr(self, "_inotify", None)
        if group is None:
            return
        with group._lock:
            for path in paths:
                if os.path.isdir(path):
                    group._add_all_callbacks(os.fsencode(path))

    def run(self) -> None:
        run_reporting(self.name, self._report, super().run, lambda: self.asked_to_stop)
