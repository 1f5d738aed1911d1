"""Which folders are watched, and how the observer threads report (DESIGN §5, §6).

Shared by the inotify reader (`promoter.inotify`) and the observers
(`promoter.observers`): the folders that get a watch, a walk of them without
recursion bounded by `watch.max_depth`, the `Report` the threads call, and the
flag that tells the watcher's log bridge an overflow is already reported.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from promoter.layout import OUTPUT
from promoter.names import is_valid_run_id

__all__ = [
    "Report",
    "bounded_walk",
    "output_depth",
    "overflow_being_reported",
    "reporting_overflow",
    "run_reporting",
    "wanted_folder",
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
                 enter: Callable[[str], object] | None = None,
                 ) -> Iterator[tuple[str, list[os.DirEntry[str]], list[os.DirEntry[str]]]]:
    """os.walk of `top` without recursion: (folder, folder entries, other entries), entering
    only watched folders (`wanted_folder`) no deeper than `report.max_depth`; a deeper one is
    reported, not entered. Links are listed, never entered. `enter(folder)` is called just
    before each folder is listed (the watch's add: see `BoundedWatchGroup`)."""
    stack = [top]
    while stack:
        here = stack.pop()
        if enter is not None:
            enter(here)
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


def run_reporting(name: str, report: Report, body: Callable[[], None],
                   asked_to_stop: Callable[[], bool]) -> None:
    """Run a thread's body; report its end, by exception or not, unless it was asked for."""
    try:
        body()
    except BaseException as exc:  # every end is reported, whatever ended it
        report.died(name, f"{type(exc).__name__}: {exc}")
        return
    if not asked_to_stop():
        report.died(name, "ended")


_local = threading.local()


def overflow_being_reported() -> bool:
    """True inside watchdog's own overflow handling, after we have reported it."""
    return bool(getattr(_local, "overflow", False))


def reporting_overflow(on: bool) -> None:
    """Set by the inotify reader around watchdog's overflow handling (its thread only)."""
    _local.overflow = on
