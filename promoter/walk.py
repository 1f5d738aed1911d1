"""One walk over a folder tree, for the catch-up and for recovery (DESIGN §6, issue 15).

`reconcile.scan_run` (a run's `output/`) and `recovery.walk_files` (a run's
`files/`) walked alike, each with its own code; this is the one walk both use.
It never follows a link (every folder is opened with `O_NOFOLLOW` relative to the
top), its stack is explicit and holds names, not descriptors (a folder of
thousands of sub-folders holds one descriptor open, not thousands), and each
folder is listed once with `os.scandir`, whose entries carry their type (no
system call to tell a folder) and cache the one `lstat` a caller asks for.

The rest makes a warm catch-up cheap (issue 15): the exclusion globs compiled once,
the run's entries as integers to compare a file's `lstat` with, and the garbage
collector held off while a pass builds 100,000 long-lived objects.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gc
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from promoter.clock import EPOCH, ONE_US
from promoter.metadata import RunMetadata
from promoter.names import TEMP_PREFIX
from promoter.safeio import Refused, open_dir_chain

__all__ = ["Folder", "exclusion", "exclusion_match", "forget_known_copies", "gc_paused",
           "known_changes", "known_copies", "prepare_known_copies", "walk_tree"]


@dataclass
class Folder:
    """One folder of the walk: its path below the top ("" or "a/b/"), an open descriptor
    (valid until the walk resumes) and its entries. The caller names in `enter` the
    sub-folders to walk into (the walk enters none by itself)."""

    prefix: str
    fd: int
    entries: list[os.DirEntry[str]]
    enter: list[str] = field(default_factory=list)


def walk_tree(top: int,
              on_error: Callable[[str, OSError | Refused], None] | None = None,
              opened: Callable[[str, int], None] | None = None) -> Iterator[Folder]:
    """Every folder from `top` down that the caller entered, depth first. A folder that
    cannot be opened or listed (gone, swapped for a link, permission denied) is passed to
    `on_error` with its prefix and skipped; the walk goes on. `opened(prefix, fd)` is
    called with each folder opened, before it is listed (the start-up child's watch)."""
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            fd = open_dir_chain(top, prefix.split("/")[:-1])
        except (OSError, Refused) as exc:
            if on_error is not None:
                on_error(prefix, exc)
            continue
        try:
            if opened is not None:
                opened(prefix, fd)
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
            except OSError as exc:
                if on_error is not None:
                    on_error(prefix, exc)
                continue
            folder = Folder(prefix, fd, entries)
            yield folder
            stack.extend(f"{prefix}{name}/" for name in reversed(folder.enter))
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=8)
def exclusion_match(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """`names.is_excluded` for one name, as a pattern's `match` (not None: excluded):
    promoter's temp prefix and the globs compiled into one pattern, once (not once a run:
    fnmatch.translate of the default globs was a tenth of a warm catch-up, issue 15)."""
    one = "|".join([f"(?:{re.escape(TEMP_PREFIX)})", *(f"(?:{fnmatch.translate(p)})"
                                                       for p in patterns)])
    return re.compile(one).match


@functools.lru_cache(maxsize=8)
def exclusion(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """`exclusion_match` as a yes or no."""
    match = exclusion_match(patterns)
    return lambda name: match(name) is not None


def known_copies(meta: RunMetadata | None) -> dict[str, tuple[int, int]]:
    """(size, µs since the epoch) by filename of the run's entries (the first of a repeated
    name, as `rules.by_filename`). A session file of that size and mtime is never offered:
    `rules.verdict` says UNCHANGED for it, or DELETED or REMOVED when a tombstone or the
    removed list is later, and none of those is promoted (a time equal to a stored one is
    in range, so never BAD_TIME)."""
    return {} if meta is None else _take(_prepared, meta, _copies)


def _copies(meta: RunMetadata) -> dict[str, tuple[int, int]]:
    # reversed: the first of a repeated name is the one kept (a comprehension, not a
    # setdefault a name: 100,000 entries at start-up, issue 15); clock.micros, inline
    return {item.filename: (item.size_bytes, (item.generated_at - EPOCH) // ONE_US)
            for item in reversed(meta.artifacts)}


_T = TypeVar("_T")
# made ahead by the start-up catch-up while the second process still lists (issue 15), each
# taken by the first `known_copies` of the same model (an entry is never changed once made)
_prepared: dict[int, tuple[RunMetadata, dict[str, tuple[int, int]]]] = {}


def _take(cache: dict[int, tuple[RunMetadata, _T]], meta: RunMetadata,
          compute: Callable[[RunMetadata], _T]) -> _T:
    """What `prepare_known_copies` made of this very model, taken once; else made now."""
    prepared = cache.pop(id(meta), None)
    return prepared[1] if prepared is not None and prepared[0] is meta else compute(meta)


def prepare_known_copies(metas: Iterable[RunMetadata], stop: threading.Event) -> None:
    """`known_copies` (and `known_changes`) of each model, made now: the start-up catch-up
    waits for the listing of `sessions/` with nothing to do, and this was a third of its
    work after it (100,000 entries). Taken once each; `forget_known_copies` drops what no
    pass took."""
    for meta in metas:
        if stop.is_set():
            return
        _prepared[id(meta)] = (meta, _copies(meta))
        _prepared_changes[id(meta)] = (meta, _changes(meta))


def forget_known_copies() -> None:
    """Drop the copies prepared and not taken (runs the catch-up did not look at)."""
    _prepared.clear()
    _prepared_changes.clear()


def known_changes(meta: RunMetadata | None) -> dict[str, int]:
    """The source's ctime as its copy read it (`source_changed_at`) less its mtime
    (`generated_at`), in µs, by filename of the run's entries that record it (the first of
    a repeated name, as `known_copies`): 0 for a file written plainly, as the listing of
    `promoter.prescan` sends it. A session file of the entry's size and mtime whose ctime
    is later has changed since its copy read it (`rules.verdict`)."""
    return {} if meta is None else _take(_prepared_changes, meta, _changes)


def _changes(meta: RunMetadata) -> dict[str, int]:
    return {item.filename: (item.source_changed_at - item.generated_at) // ONE_US
            for item in reversed(meta.artifacts) if item.source_changed_at is not None}


_prepared_changes: dict[int, tuple[RunMetadata, dict[str, int]]] = {}  # as _prepared


class _GcPause:
    """The cyclic garbage collector held off while a catch-up pass runs (issue 15): parsing
    100,000 entries allocates as many long-lived objects, and the collections they set off
    walked them all again and again (a tenth or more of a warm pass). A pass makes no cycles
    worth collecting; the collector resumes when the last pass in the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


gc_paused = _GcPause()
