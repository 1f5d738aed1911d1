"""Watching `sessions/`: events in, settle touches and catch-up requests out (DESIGN §5).

Events are hints, never the truth. One recursive schedule covers the whole tree whatever
the number of runs (every `schedule()` is a thread of its own), watches are added only to
`<run>/` and `<run>/output/**` (see `promoter.observers`), and the handler filters paths:
invalid run ids, `input/` and anything else outside `output/` except `run.json` and
`attribution.jsonl`, excluded names and promoter's own `.promoter-` temporaries.

The handler never raises: an error is logged (`watch.error`) and the run concerned is
caught up. The watcher supervises the observer: a thread of it that ends, an overflow, a
watch that could not be added, or a warning that watchdog logs, each is logged and
answered with a catch-up pass of the runs concerned (all of them when that is unknown).
A restart replaces the observer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler, FileSystemMovedEvent

from promoter import events
from promoter.layout import CONTEXT_FILES, OUTPUT
from promoter.logs import get_logger
from promoter.names import is_valid_run_id
from promoter.observers import ObserverLike, Report, make_observer
from promoter.walk import exclusion
from promoter.watchlog import LogBridge
from promoter.watchshare import ChildShare, runs_of

__all__ = ["ObserverFactory", "WatchSink", "Watcher"]

log = get_logger()
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
QUIET_S = 0.1


class WatchSink(Protocol):
    """Where the handler's conclusions go (the daemon's settle loop and catch-up thread)."""

    def file_changed(self, run_id: str, filename: str, strong: bool,
                     open_unknown: bool = False) -> None:
        """strong: closed after writing or renamed in. open_unknown: the event does not say
        whether the file is still open (DESIGN §5, shutdown): a "created" event, which is
        also what the scan of a new folder makes of every file in it, or any event of the
        polling observer, which never reports closes."""

    def file_nudged(self, run_id: str, filename: str) -> None: ...

    def file_gone(self, run_id: str, filename: str) -> None: ...

    def folder_gone(self, run_id: str, folder: str) -> None: ...

    def context_changed(self, run_id: str) -> None: ...

    def session_gone(self, run_id: str) -> None: ...

    def catch_up(self, runs: frozenset[str] | None, reason: str) -> None:
        """Scan these runs (None: every run) for files whose events may have been lost."""


class ObserverFactory(Protocol):
    def __call__(self, kind: str, root: str, handler: FileSystemEventHandler,
                 report: Report) -> ObserverLike: ...


class _Handler(FileSystemEventHandler):
    """Maps watchdog events under `root` to sink calls; never raises (DESIGN §5)."""

    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher
        self.root = watcher.root
        self.sink = watcher.sink
        self.seen = 0

    def dispatch(self, event: FileSystemEvent) -> None:
        self.seen += 1
        try:
            self.route(event)
        except Exception as exc:
            self._failed(str(event.src_path), exc)

    def closed(self, path: str) -> None:
        """`dispatch(FileClosedEvent(path))` without the object: a burst's one event a file
        (the emitter's shortcut, `SupervisedInotifyEmitter.build_and_queue_event`)."""
        self.seen += 1
        try:
            parts = self._parts(path)
            if parts is not None:
                self._apply("closed", parts, False)
        except Exception as exc:
            self._failed(path, exc)

    def _failed(self, path: str, exc: Exception) -> None:
        run_id = self._run_of(path)
        self.w.error("handler", f"{type(exc).__name__}: {exc}",
                     frozenset({run_id}) if run_id else None, path=path)

    def _parts(self, path: str) -> list[str] | None:
        if not path:
            return None
        if path == self.root:
            return []
        if not path.startswith(self.root + os.sep):
            return None
        return path[len(self.root) + 1:].split(os.sep)

    def _run_of(self, path: str) -> str | None:
        parts = self._parts(path)
        return parts[0] if parts and is_valid_run_id(parts[0]) else None

    def route(self, event: FileSystemEvent) -> None:
        src = self._parts(str(event.src_path))
        if isinstance(event, FileSystemMovedEvent):
            dest = self._parts(str(event.dest_path))
            if src is not None:
                self._apply("deleted", src, event.is_directory)
            if dest is not None:
                self._apply("moved_in", dest, event.is_directory)
            return
        if src is not None:
            self._apply(event.event_type, src, event.is_directory)

    def _apply(self, kind: str, parts: list[str], is_dir: bool) -> None:
        if not parts:
            return  # sessions/ itself: a deleted root ends the emitter, which is supervised
        run_id = parts[0]
        if not is_valid_run_id(run_id):
            self.w.ignored(run_id)
            return
        if len(parts) == 1:
            if is_dir and kind == "deleted":
                self.sink.session_gone(run_id)
            return
        if len(parts) == 2 and parts[1] in CONTEXT_FILES and not is_dir:
            self.sink.context_changed(run_id)
            return
        if parts[1] != OUTPUT:
            return  # input/ and anything else the runtime keeps beside output/
        rel = parts[2:]
        if rel and any(map(self.w.excluded, rel)):
            return
        name = "/".join(rel)
        if is_dir:
            if kind == "deleted":
                self.sink.folder_gone(run_id, name)
            return  # a new folder's files come as events of their own (synthetic ones too)
        if not rel:
            return
        if kind == "deleted":
            self.sink.file_gone(run_id, name)
        elif kind == "attrib":
            self.sink.file_nudged(run_id, name)
        elif kind in ("created", "modified", "closed", "moved_in"):
            # a real write ("modified") with no close after it means the file is still
            # open; a "created" may be the new folder's scan, and polling sees no closes
            self.sink.file_changed(run_id, name, strong=kind in ("closed", "moved_in"),
                                   open_unknown=kind == "created" or self.w.in_use == "polling")


class Watcher:
    """Owns the observer: starts it, supervises it, restarts it, and stops it."""

    def __init__(self, root: Path, sink: WatchSink, exclude: Sequence[str], kind: str = "auto",
                 factory: ObserverFactory = make_observer,
                 on_trouble: Callable[[], None] = lambda: None,
                 max_depth: int = 64) -> None:
        self.root = os.path.realpath(root)
        self.sink = sink
        self.exclude: tuple[str, ...] = tuple(exclude)
        self.excluded = exclusion(self.exclude)  # names.is_excluded of one name, compiled
        self.kind = kind
        self.in_use = ""
        self.stopping = False
        self._factory = factory
        self._on_trouble = on_trouble
        self._observer: ObserverLike | None = None
        self._handler = _Handler(self)
        self._bridge = LogBridge(self)
        self._lock = threading.Lock()
        self._trouble: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._degraded: set[str] = set()
        self._warned: set[str] = set()
        self.overflows = self.errors = self.restarts = 0
        self.max_depth = max_depth  # read by the observers' walks (watch.max_depth)
        self._too_deep: set[str] = set()
        self._root_id = (-1, -1)  # sessions/'s device and inode when the observer started
        self.share: ChildShare | None = None  # the start-up child's inotify use (prescan)

    # -- what watchdog's threads call (Report) --------------------------------------------

    def overflow(self) -> None:
        self.overflows += 1
        log.warning(events.WATCH_OVERFLOW, observer=self.in_use,
                    action="catch-up of every run")
        self.sink.catch_up(None, "overflow")

    def watch_failed(self, path: str, reason: str) -> None:
        if self.share is not None and self.share.defer(path, reason):
            return  # added once the start-up child's are gone (`rewatch`)
        parts = self._handler._parts(path) or []
        run_id = parts[0] if parts and is_valid_run_id(parts[0]) else None
        with self._lock:
            if run_id is not None:
                self._degraded.add(run_id)
        self.error("add_watch", reason, frozenset({run_id}) if run_id else None, path=path,
                   hint="raise fs.inotify.max_user_watches" if "limit" in reason else None)

    def too_deep(self, path: str) -> None:
        """A folder past watch.max_depth is neither watched nor walked: its run alone is
        caught up once, and that pass refuses it (`artifact.rejected`, DESIGN §6)."""
        parts = self._handler._parts(path) or []
        run_id = parts[0] if parts and is_valid_run_id(parts[0]) else None
        with self._lock:
            if path in self._too_deep or len(self._too_deep) >= 10_000:
                return
            self._too_deep.add(path)
        if run_id is not None:
            self.sink.catch_up(frozenset({run_id}), "too-deep")

    def died(self, thread: str, reason: str) -> None:
        if self.stopping:
            return
        with self._lock:
            self._trouble = f"{thread}: {reason}"
        self.errors += 1
        log.error(events.WATCH_ERROR, source="observer", thread=thread, reason=reason,
                  action="restart and catch-up")
        self._on_trouble()

    def error(self, source: str, reason: str, runs: frozenset[str] | None, **extra: object) -> None:
        """Log `watch.error` and catch up the runs concerned (None: all)."""
        self.errors += 1
        log.error(events.WATCH_ERROR, source=source, reason=reason,
                  runs=sorted(runs) if runs is not None else "all",
                  **{k: v for k, v in extra.items() if v is not None})
        self.sink.catch_up(runs, f"watch-error:{source}")

    def ignored(self, name: str) -> None:
        if name not in self._warned and len(self._warned) < 10_000:
            self._warned.add(name)
            log.warning(events.RUN_IGNORED, name=name, reason="not a valid run id")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; with `auto`, fall back to polling when inotify is unusable."""
        # watchdog 7.1 warns when a folder's watch is added twice: its walk of a new run
        # folder adds output/'s watch, then output/'s own queued IN_CREATE adds it again
        # (every `mkdir -p run/output`). Harmless, but under -W error (or PYTHONWARNINGS)
        # the warning is raised in its inotify reader thread and kills it.
        warnings.filterwarnings("ignore", message=r"Callback with id .* already exists",
                                category=RuntimeWarning)
        logger = logging.getLogger("watchdog")
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        if self._bridge not in logger.handlers:
            logger.addHandler(self._bridge)
        self.stopping = False
        self._observer = self._start_one()

    def _start_one(self) -> ObserverLike:
        kinds = ["inotify", "polling"] if self.kind == "auto" else [self.kind]
        last: BaseException | None = None
        for kind in kinds:
            observer: ObserverLike | None = None
            try:
                st = os.stat(self.root)  # the folder watched: `_root_replaced` compares it
                self._root_id = (st.st_dev, st.st_ino)
                observer = self._factory(kind, self.root, self._handler, self)
                observer.start()
            except (OSError, ImportError, RuntimeError) as exc:
                last = exc
                if observer is not None:
                    self._stop_observer(observer)
                if self.share is not None and self.share.end_for(exc):
                    kinds.insert(kinds.index(kind) + 1, kind)  # (once: the child is gone)
                    continue
                log.error(events.WATCH_ERROR, source="start", observer=kind, reason=str(exc),
                          action="trying polling" if kind != kinds[-1] else "retrying later")
                continue
            self.in_use = kind
            log.info(events.WATCH_STARTED, observer=kind, root=self.root, schedules=1)
            return observer
        raise last if last is not None else RuntimeError("no observer")

    def rewatch(self) -> frozenset[str] | None:
        """The watches put off for the start-up child's, added; their runs (`watchshare`)."""
        paths = self.share.take() if self.share is not None else []
        if paths and self._observer is not None and not self.stopping:
            getattr(self._observer, "rewatch", lambda _: None)(paths)
        return runs_of(self.root, paths)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping = True
        if self._observer is not None:
            self._stop_observer(self._observer, timeout)
            self._observer = None
        logging.getLogger("watchdog").removeHandler(self._bridge)

    @staticmethod
    def _stop_observer(observer: ObserverLike, timeout: float = 5.0) -> None:
        try:
            observer.stop()
            observer.join(timeout)
        except Exception as exc:  # a broken observer must not stop a restart or a shutdown
            log.warning(events.WATCH_ERROR, source="stop", reason=f"{type(exc).__name__}: {exc}")
            return
        if getattr(observer, "is_alive", lambda: False)():
            log.error(events.DAEMON_THREAD_STUCK, threads=["promoter-watch-dispatch"],
                      waited_s=timeout)

    def set_exclude(self, patterns: Sequence[str]) -> None:
        self.exclude = tuple(patterns)
        self.excluded = exclusion(self.exclude)

    # -- supervision ---------------------------------------------------------------------

    def health(self) -> str | None:
        """None while the observer and all its threads run, else what is wrong."""
        with self._lock:
            trouble = self._trouble
        if trouble is not None:
            return trouble
        if self._observer is None:
            return "not watching"
        return self._root_replaced() or self._observer.health()

    def _root_replaced(self) -> str | None:
        """sessions/ gone or replaced since the watch began: no event says so (r9-watch F1)."""
        try:
            st = os.stat(self.root)
        except OSError:
            return "sessions/ is gone"
        return None if (st.st_dev, st.st_ino) == self._root_id else "sessions/ was replaced"

    def supervise(self, now: float | None = None) -> float | None:
        """Restart a dead or missing observer (with backoff) and catch up every run.
        Returns when to call again if a restart is still owed, else None."""
        if self.stopping:
            return None
        reason = self.health()
        if reason is None:
            return None
        now = time.monotonic() if now is None else now
        if now < self._retry_at:
            return self._retry_at
        if self._observer is not None:
            self._stop_observer(self._observer, timeout=2.0)
            self._observer = None
        with self._lock:
            self._trouble = None
            self._degraded.clear()
        try:
            self._observer = self._start_one()
        except (OSError, ImportError, RuntimeError):
            delay = RESTART_BACKOFF_S[min(self._failures, len(RESTART_BACKOFF_S) - 1)]
            self._failures += 1
            self._retry_at = now + delay
            self.sink.catch_up(None, "watch-down")
            return self._retry_at
        self._failures = 0
        self.restarts += 1
        log.warning(events.WATCH_RESTARTED, reason=reason, observer=self.in_use)
        self.sink.catch_up(None, "watch-restart")
        return None

    def degraded_runs(self) -> frozenset[str] | None:
        """Runs with a folder that has no watch (None: all, nothing is watched): the daemon
        catches them up often until a restart gives them watches again."""
        if self._observer is None and not self.stopping:
            return None
        with self._lock:
            return frozenset(self._degraded)

    def quiesce(self, timeout: float = 1.0) -> bool:
        """Wait until no event is on its way from the kernel to the sink (for shutdown):
        the observer is idle and the handler saw nothing new for QUIET_S. Bounded."""
        observer = self._observer
        if observer is None:
            return True
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        seen, quiet_since = self._handler.seen, time.monotonic()
        while time.monotonic() < deadline:
            if self._handler.seen != seen or not observer.idle():
                seen, quiet_since = self._handler.seen, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_S:
                return True
            pause.wait(0.005)
        return False
