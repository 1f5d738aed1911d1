"""watchdog observers that report what watchdog 7 keeps to itself (DESIGN §5).

What watchdog 7.1's source shows, and what this module does about it:

- `InotifyFD.handle_event` meets `IN_Q_OVERFLOW`, logs a warning, rebuilds the
  recursive watches and delivers nothing to the handler. Our `InotifyFD`
  subclass sees the overflow first and reports it (`Report.overflow`).
- `InotifyWatchGroup._add_callback` swallows the `OSError` of a watch that
  cannot be added below the root (ENOSPC at the watch limit, ENOENT, ...),
  and `InotifyFD._raise_error` does not even raise for EACCES (the watch gets
  descriptor -1). Our `add_callback` sees both and reports the path
  (`Report.watch_failed`). The same hook keeps watches off everything but
  `<run>/` and `<run>/output/**`: `input/` trees cost no inotify watch.
- `InotifyWatchGroup._add_all_callbacks` and `_recursive_simulate` walk with
  `os.walk`, which recurses on Python 3.11: one agent's folder 1,200 levels deep
  raised `RecursionError` at start-up (for every run) or in the reader thread.
  Our `BoundedWatchGroup` walks with an explicit stack, enters only watched
  folders, and stops at `watch.max_depth`, reporting a deeper folder
  (`Report.too_deep`) so that its run alone has it refused (DESIGN §6).
  The polling observer's snapshot recurses too: our listdir stops at the bound.
- An exception in a handler, an emitter or the inotify reader ends its thread
  and nothing notices. Each of our threads reports its own end
  (`Report.died`), so the watcher can restart the observer and catch up.

Nothing here misbehaves on purpose: the tests inject their faults from outside
(tests/fault_site/watch_faults.py, by subclassing) to prove each workaround.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingEmitter

from promoter.layout import CONTEXT_FILES, OUTPUT
from promoter.names import is_valid_run_id

__all__ = [
    "EVENT_FILTER",
    "POLL_INTERVAL_S",
    "ObserverLike",
    "Report",
    "bounded_walk",
    "make_observer",
    "output_depth",
    "wanted_folder",
]

POLL_INTERVAL_S = 1.0

# Events the daemon acts on. watchdog turns this into the inotify mask, so reads
# (IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE) never reach user space at all.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent,
    FileDeletedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]


class Report(Protocol):
    """What the observer threads tell the watcher; called from watchdog's threads."""

    def overflow(self) -> None: ...

    def watch_failed(self, path: str, reason: str) -> None: ...

    def died(self, thread: str, reason: str) -> None: ...

    def too_deep(self, path: str) -> None:
        """A folder below `<run>/output/` deeper than `max_depth`: never watched nor walked."""

    @property
    def max_depth(self) -> int: ...


class ObserverLike(Protocol):
    """A started-or-startable observer with its one schedule already made."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def health(self) -> str | None:
        """None while every thread of it runs, else what is wrong."""

    def idle(self) -> bool:
        """True when no event is between the kernel and the handler."""


def wanted_folder(root: str, path: str) -> bool:
    """Folders that get a watch: `sessions/`, `<run>/`, and `<run>/output/` with all below."""
    if path == root:
        return True
    if not path.startswith(root + os.sep):
        return False
    parts = path[len(root) + 1:].split(os.sep)
    if not is_valid_run_id(parts[0]):
        return False
    return len(parts) == 1 or parts[1] == OUTPUT


def output_depth(root: str, path: str) -> int:
    """How many folders below its run's `output/` a watched folder is (0 for output/)."""
    return max(path[len(root) + 1:].count(os.sep) - 1, 0) if path.startswith(root + os.sep) \
        else 0


def bounded_walk(top: str, root: str, report: Report,
                 ) -> Iterator[tuple[str, list[os.DirEntry[str]], list[os.DirEntry[str]]]]:
    """os.walk of `top` without recursion: (folder, folder entries, other entries), entering
    only watched folders (`wanted_folder`) no deeper than `report.max_depth`; a deeper one is
    reported, not entered. Links are listed, never entered."""
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError:
            continue
        dirs: list[os.DirEntry[str]] = []
        others: list[os.DirEntry[str]] = []
        for entry in entries:
            try:
                (dirs if entry.is_dir() else others).append(entry)
            except OSError:
                others.append(entry)
        yield here, dirs, others
        for entry in reversed(dirs):
            if entry.is_symlink() or not wanted_folder(root, entry.path):
                continue
            if output_depth(root, entry.path) > report.max_depth:
                report.too_deep(entry.path)
                continue
            stack.append(entry.path)


def _run_reporting(name: str, report: Report, body: Callable[[], None],
                   asked_to_stop: Callable[[], bool]) -> None:
    """Run a thread's body; report its end, by exception or not, unless it was asked for."""
    try:
        body()
    except BaseException as exc:  # every end is reported, whatever ended it
        report.died(name, f"{type(exc).__name__}: {exc}")
        return
    if not asked_to_stop():
        report.died(name, "ended")


# -- inotify -----------------------------------------------------------------------------

_local = threading.local()


def overflow_being_reported() -> bool:
    """True inside watchdog's own overflow handling, after we have reported it."""
    return bool(getattr(_local, "overflow", False))


def _inotify_classes() -> tuple[Any, Any]:
    """Imported late: on a libc without inotify the import itself fails (polling is used)."""
    from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
    from watchdog.observers.inotify_c import (
        InotifyConstants,
        InotifyEvent,
        InotifyFD,
        Mask,
    )

    class BoundedWatchGroup(InotifyWatchGroup):
        """watchdog's recursive watch group, walking with an explicit stack and a depth bound."""

        def __init__(self, report: Report, root: str, *args: Any, **kwargs: Any) -> None:
            self._report, self._root = report, root  # set first: __post_init__ walks
            super().__init__(*args, **kwargs)

        def _add_all_callbacks(self, path: bytes) -> None:
            text = os.fsdecode(path)
            if output_depth(self._root, text) > self._report.max_depth:
                self._report.too_deep(text)  # a folder made one level past the bound
                return
            self._add_callback(path)
            if self.is_recursive and os.path.isdir(path):
                for here, _, _ in bounded_walk(text, self._root, self._report):
                    if here != text:
                        self._add_callback(os.fsencode(here))

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

        def read_events(self, *args: Any, **kwargs: Any) -> list[Any]:
            found: list[Any] = super().read_events(*args, **kwargs)
            self._read += len(found)
            return found

        def handle_event(self, event: Any) -> None:
            try:
                if event.is_queue_overflow:
                    self._report.overflow()
                    _local.overflow = True
                    try:
                        super().handle_event(event)
                    finally:
                        _local.overflow = False
                    return
                super().handle_event(event)
            finally:
                self._handled += 1

        def idle(self) -> bool:
            if self._read != self._handled:
                return False
            with contextlib.suppress(OSError):
                buf = fcntl.ioctl(self._inotify_fd, termios.FIONREAD, b"\0\0\0\0")
                return bool(struct.unpack("i", buf)[0] == 0)
            return True

        def stop(self) -> None:
            self._stopping = True
            super().stop()

        def run(self) -> None:
            _run_reporting(self.name, self._report, super().run, lambda: self._stopping)

    class SupervisedInotifyEmitter(InotifyFullEmitter):
        """Full events: a rename from an unwatched folder arrives as a move, not a creation.
        watchdog stops this emitter itself when the watched folder is deleted: reported."""

        asked_to_stop = False

        def __init__(self, *args: Any, report: Report, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.name = "promoter-watch-emitter"
            self._report = report

        def on_thread_start(self) -> None:
            # watchdog's own, with the bounded group (watchdog 7.1 InotifyEmitter)
            self._inotify = BoundedWatchGroup(
                self._report, os.fsdecode(self.watch.path), self._inotify_fd,
                os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink)

        def run(self) -> None:
            _run_reporting(self.name, self._report, super().run, lambda: self.asked_to_stop)

    return SupervisedInotifyFD, SupervisedInotifyEmitter


class _Observer(BaseObserver):
    """One schedule's worth of watchdog observer whose threads report their own end."""

    def __init__(self, emitter_class: Any, report: Report, timeout: float,
                 inotify_fd: Any = None) -> None:
        kwargs: dict[str, Any] = {"report": report}
        if inotify_fd is not None:
            kwargs["inotify_fd"] = inotify_fd
        super().__init__(emitter_class, timeout=timeout, **kwargs)
        self.name = "promoter-watch-dispatch"
        self._report = report
        self._fd = inotify_fd
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        for emitter in list(self.emitters):
            setattr(emitter, "asked_to_stop", True)  # noqa: B010 - our emitter subclasses' flag
        super().stop()

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        if self._fd is not None:
            self._fd.stop()
            if self._fd.is_alive():
                self._fd.join(timeout=5)

    def run(self) -> None:
        _run_reporting(self.name, self._report, super().run, lambda: self._stopping)

    def health(self) -> str | None:
        if not self.is_alive():
            return f"{self.name} is not running"
        for emitter in list(self.emitters):
            if not emitter.is_alive():
                return f"{emitter.name} is not running"
        if self._fd is not None and not self._fd.is_alive():
            return f"{self._fd.name} is not running"
        return None

    def idle(self) -> bool:
        if self._fd is not None and not self._fd.idle():
            return False
        return bool(self.event_queue.unfinished_tasks == 0)


def _inotify_observer(root: str, report: Report) -> _Observer:
    fd_class, emitter_class = _inotify_classes()
    fd = fd_class(root, report)
    fd.start()
    try:
        return _Observer(emitter_class, report, timeout=1.0, inotify_fd=fd)
    except BaseException:
        fd.stop()
        fd.join(timeout=5)
        raise


# -- polling -----------------------------------------------------------------------------

class _PollingEmitter(PollingEmitter):
    def __init__(self, *args: Any, report: Report, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = "promoter-watch-poller"
        self._report = report

    asked_to_stop = False

    def run(self) -> None:
        _run_reporting(self.name, self._report, super().run, lambda: self.asked_to_stop)


def _polling_listdir(root: str, report: Report,
                     ) -> Callable[[str | None], Iterator[os.DirEntry[str]]]:
    """Only what is watched: run folders, their output/ and context files, all of output/
    down to `max_depth` (watchdog's snapshot recurses once per level)."""

    def listdir(path: str | None) -> Iterator[os.DirEntry[str]]:
        assert path is not None
        with os.scandir(path) as it:
            entries = list(it)
        if path == root:
            return iter([e for e in entries if is_valid_run_id(e.name)
                         and e.is_dir(follow_symlinks=False)])
        if os.path.dirname(path) == root:
            return iter([e for e in entries if e.name == OUTPUT or e.name in CONTEXT_FILES])
        if output_depth(root, path) >= report.max_depth:
            deep = [e for e in entries if e.is_dir(follow_symlinks=False)]
            for entry in deep:
                report.too_deep(entry.path)
            return iter([e for e in entries if e not in deep])
        return iter(entries)

    return listdir


def _polling_observer(root: str, report: Report) -> _Observer:
    from functools import partial

    emitter = partial(_PollingEmitter, stat=os.lstat, listdir=_polling_listdir(root, report))
    return _Observer(emitter, report, timeout=POLL_INTERVAL_S)


# -- the factory -------------------------------------------------------------------------

def make_observer(kind: str, root: str, handler: FileSystemEventHandler,
                  report: Report) -> ObserverLike:
    """An observer of `kind` ("inotify" or "polling") with its one recursive schedule on
    `root`, not started. Raises OSError (or ImportError) when inotify is unusable."""
    observer = (_inotify_observer(root, report) if kind == "inotify"
                else _polling_observer(root, report))
    try:
        observer.schedule(handler, root, recursive=True, event_filter=EVENT_FILTER)
    except BaseException:
        observer.stop()
        raise
    return observer
