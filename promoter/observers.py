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

The inotify subclasses live in `promoter.inotify` (imported late), the watched
folders and the bounded walk in `promoter.watchtree`. Nothing here misbehaves on
purpose: the tests inject their faults from outside (tests/fault_site/
watch_faults.py, by subclassing) to prove each workaround.
"""

from __future__ import annotations

import os
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
from promoter.watchtree import (
    Report,
    bounded_walk,
    output_depth,
    overflow_being_reported,
    run_reporting,
    wanted_folder,
)

__all__ = [
    "EVENT_FILTER",
    "POLL_INTERVAL_S",
    "ObserverLike",
    "Report",
    "bounded_walk",
    "make_observer",
    "output_depth",
    "overflow_being_reported",
    "wanted_folder",
]

POLL_INTERVAL_S = 1.0

# Events the daemon acts on. watchdog turns this into the inotify mask, so reads
# (IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE) never reach user space at all.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent,
    FileDeletedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]


class ObserverLike(Protocol):
    """A started-or-startable observer with its one schedule already made."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def health(self) -> str | None:
        """None while every thread of it runs, else what is wrong."""

    def idle(self) -> bool:
        """True when no event is between the kernel and the handler."""


def _inotify_classes() -> tuple[Any, Any]:
    """Imported late: on a libc without inotify the import itself fails (polling is used)."""
    from promoter.inotify import SupervisedInotifyEmitter, SupervisedInotifyFD

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
        run_reporting(self.name, self._report, super().run, lambda: self._stopping)

    def health(self) -> str | None:
        if not self.is_alive():
            return f"{self.name} is not running"
        for emitter in list(self.emitters):
            if not emitter.is_alive():
                return f"{emitter.name} is not running"
        if self._fd is not None and not self._fd.is_alive():
            return f"{self._fd.name} is not running"
        return None

    def rewatch(self, paths: list[str]) -> None:
        """Add the watches of these folders (and of any folder below made meanwhile)."""
        for emitter in list(self.emitters):
            getattr(emitter, "rewatch", lambda _: None)(paths)

    def idle(self) -> bool:
        if self._fd is not None and not self._fd.idle():
            return False
        if any(getattr(e, "in_hand", 0) for e in list(self.emitters)):
            return False  # taken from the group's queue, not yet handed to the handler
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
        run_reporting(self.name, self._report, super().run, lambda: self.asked_to_stop)


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
    for emitter in observer.emitters:
        if hasattr(emitter, "handler"):  # inotify: the emitter calls the handler itself
            emitter.handler = handler
    return observer
