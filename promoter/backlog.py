"""The store unreachable (DESIGN §10): files wait as paths, one probe retries, the outage is
said once when it starts and once when it ends.

A batch that meets an outage (`StoreUnavailable`, or failed copies that a probe of the
store then explains) marks the store *down*. From then on every batch that comes due is
parked here instead of sent: its paths and sizes, never bytes, so memory stays bounded
however long the outage lasts. One thread probes the store with the backoff of §5
(settle_ms, doubling, at most 30 s). When a probe passes, `store.available` says what
waited, every parked file still in its session is offered to the pipeline at once, and one
removed meanwhile is logged `artifact.lost`. The daemon runs and pings its watchdog all
along: waiting is healthy. On folders there is no outage: a full disk stays a per-file
retry (§5), since only an object store raises `StoreUnavailable`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from promoter import events
from promoter.layout import session_file
from promoter.logs import get_logger
from promoter.loopthread import LoopThread
from promoter.metrics import DaemonMetrics
from promoter.render import human_size
from promoter.s3errors import S3ConfigError, StoreUnavailable
from promoter.settle import Batch
from promoter.store import Outcome, PromoteResult, Store

__all__ = ["MAX_GAP_MS", "Backlog", "Release", "probe_gap_ms", "store_probe"]

log = get_logger()
MIN_GAP_MS = 100
MAX_GAP_MS = 30_000  # §5: the backoff is capped at 30 s
OUTAGE = (StoreUnavailable, S3ConfigError)  # credentials refused mid-run: wait, never die


def probe_gap_ms(settle_ms: int, attempts: int) -> int:
    """The wait before probe number `attempts` + 1: from settle_ms, doubling, at most 30 s."""
    base = max(settle_ms, MIN_GAP_MS)
    return int(min(base << min(attempts, 20), MAX_GAP_MS))


def store_probe(store: Store) -> Callable[[], None]:
    """How to ask whether the store is back: on a bucket the probe of §10 again (a bucket
    HEAD and conditional writes, so a store that answers reads but not writes is still
    down); on folders the store's own check."""
    disk = getattr(store, "disk", None)  # (a stand-in store in tests may have none)
    probe = getattr(getattr(disk, "objects", None), "probe", None)
    if callable(probe):
        return probe  # type: ignore[no-any-return]
    check = getattr(disk, "check", None)
    return (lambda: check(create=False)) if callable(check) else (lambda: None)


class Release(Protocol):
    """Where parked work goes when the store is back: the pipeline's sink."""

    def offer(self, run_id: str, filename: str, quiet: bool) -> None: ...

    def context_changed(self, run_id: str) -> None: ...

    def session_gone(self, run_id: str) -> None: ...


@dataclass
class _Run:
    files: dict[str, int] = field(default_factory=dict)  # filename -> size when parked
    context: bool = False
    completed: bool = False


class Backlog(LoopThread):
    """The outage state, the parked paths, and the `promoter-backlog` probing thread."""

    name = "promoter-backlog"

    def __init__(self, store: Store, metrics: DaemonMetrics, settle_ms: int,
                 stop: threading.Event | None = None,
                 probe: Callable[[], None] | None = None) -> None:
        super().__init__(stop)
        self._store = store
        self._metrics = metrics
        self.settle_ms = settle_ms
        self._probe = probe or store_probe(store)
        self._reopen: Callable[[], None] | None = None  # the start-up's own, when down at start
        self._lock = threading.Lock()  # the state below
        self._probing = threading.Lock()  # one probe at a time (workers, the thread)
        self._runs: dict[str, _Run] = {}
        self._files = 0
        self._bytes = 0
        self._since: float | None = None  # monotonic start of the outage; None: up
        self._reason = ""
        self._attempts = 0
        self._release: Release | None = None
        self.on_available: list[Callable[[], None]] = []  # e.g. the catch-up's kick
        self.on_change: Callable[[], None] = lambda: None  # e.g. wake the main loop (STATUS=)
        metrics.store_available.set(1)

    # -- state -----------------------------------------------------------------------------

    def available(self) -> bool:
        return self._since is None

    def holds(self, run_id: str) -> bool:
        """True while files or chores of the run wait here (the sweeper leaves it alone)."""
        return run_id in self._runs

    def waiting(self) -> tuple[int, int]:
        """Files and bytes parked."""
        with self._lock:
            return self._files, self._bytes

    def status(self) -> str:
        """The outage for `STATUS=`; "" while the store answers."""
        since = self._since
        if since is None:
            return ""
        files, size = self.waiting()
        return (f"; store unavailable for {time.monotonic() - since:.0f} s, "
                f"{files} files ({human_size(size)}) waiting")

    def attach(self, release: Release) -> None:
        self._release = release

    # -- the workers' hooks (pipeline.py) -----------------------------------------------------

    def hold(self, batch: Batch) -> bool:
        """While the store is down: park the batch (its paths and chores) and say so."""
        if self._since is None:
            return False
        return self._park(batch.run_id, batch.filenames, batch.context, batch.completed)

    def went_down(self, exc: BaseException, reopen: Callable[[], None] | None = None) -> None:
        """The store is unreachable: say so once and start probing. `reopen`: what the
        start-up could not do, done by the first probe that passes."""
        with self._lock:
            if reopen is not None:
                self._reopen = reopen
            if self._since is not None:
                return
            self._since = time.monotonic()
            self._reason = str(exc)
            self._attempts = 0
        self._metrics.store_available.set(0)
        log.warning(events.STORE_UNAVAILABLE, reason=str(exc),
                    retry="files wait on the local disk; the store is probed with a backoff")
        self._kick.set()
        self.on_change()

    def explain(self, run_id: str, results: Iterable[PromoteResult],
                retry: frozenset[str]) -> frozenset[str]:
        """After a batch: the files to retry that the store's outage explains are parked
        (those that changed during their copy are the writer's), the others are retried
        as before: a failure while the store answers is the file's (§5)."""
        changed = {r.filename for r in results if r.outcome is Outcome.CHANGED}
        failed = [name for name in retry if name not in changed]
        if not failed or not self._outage():
            return retry
        if not self._park(run_id, failed, False, False):
            return retry  # back up meanwhile: retry them as usual
        return retry.difference(failed)

    def _outage(self) -> bool:
        """Is the store down? A probe decides when nobody knows yet."""
        if self._since is not None:
            return True
        with self._probing:
            if self._since is not None:
                return True
            try:
                self._probe()
            except OUTAGE as exc:
                self.went_down(exc)
                return True
            except Exception:  # the probe's own trouble is no outage
                return False
        return False

    def _park(self, run_id: str, names: Iterable[str], context: bool, completed: bool) -> bool:
        sizes = {name: self._size(run_id, name) for name in names}
        with self._lock:
            if self._since is None:
                return False
            run = self._runs.setdefault(run_id, _Run())
            run.context = run.context or context
            run.completed = run.completed or completed
            for name, size in sizes.items():
                if size is None:
                    continue  # vanished already: released as lost below, or never seen
                self._bytes += size - run.files.get(name, 0)
                self._files += name not in run.files
                run.files[name] = size
            lost = [n for n, s in sizes.items() if s is None and n not in run.files]
            self._gauges()
        for name in lost:
            self._lost(run_id, name)
        return True

    def _size(self, run_id: str, name: str) -> int | None:
        try:
            return os.lstat(session_file(self._store.sessions_path, run_id, name)).st_size
        except (OSError, ValueError):
            return None

    def _gauges(self) -> None:
        self._metrics.waiting_files.set(self._files)
        self._metrics.waiting_bytes.set(self._bytes)

    def _lost(self, run_id: str, name: str) -> None:
        log.warning(events.ARTIFACT_LOST, run_id=run_id, filename=name,
                    reason="removed from its session while the store was unavailable")
        self._metrics.files.labels(result="lost").inc()

    # -- the probing thread ----------------------------------------------------------------

    def start(self) -> None:
        self._start_thread()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._since is None:
                self._kick.wait()
                self._kick.clear()
                continue
            self._kick.wait(probe_gap_ms(self.settle_ms, self._attempts) / 1000)
            self._kick.clear()  # the gap, or a kick (a reload) that asks for a probe now
            if self._stop.is_set():
                return
            if self._try() and not self._stop.is_set():  # stopping: leave() says what waits
                self._back()

    def _try(self) -> bool:
        """One probe (or the start-up's preparation while it is owed); True: the store is back."""
        with self._probing:
            try:
                (self._reopen or self._probe)()
            except OUTAGE as exc:
                self._attempts += 1
                self._reason = str(exc)
                return False
            except Exception as exc:  # never the thread's end: try again later
                self._attempts += 1
                if f"{type(exc).__name__}: {exc}" != self._reason:
                    self._reason = f"{type(exc).__name__}: {exc}"
                    log.error(events.STORE_PROBE_FAILED, reason=self._reason)
                return False
            self._reopen = None
            return True

    def _back(self) -> None:
        """The store answers again: say what waited, release it, tell who asked."""
        with self._lock:
            since, runs = self._since, self._runs
            files, size = self._files, self._bytes
            self._since, self._runs, self._files, self._bytes = None, {}, 0, 0
            self._gauges()
        self._metrics.store_available.set(1)
        down_s = time.monotonic() - since if since is not None else 0.0
        lost = self._release_all(runs)
        log.info(events.STORE_AVAILABLE, files=files, size_bytes=size, runs=len(runs),
                 lost=lost, unavailable_s=round(down_s, 1), probes=self._attempts + 1)
        for callback in self.on_available:
            callback()
        self.on_change()

    def _release_all(self, runs: dict[str, _Run]) -> int:
        lost = 0
        for run_id, run in runs.items():
            if self._release is not None:
                if run.completed:
                    self._release.session_gone(run_id)
                elif run.context:
                    self._release.context_changed(run_id)
            for name in run.files:
                if self._size(run_id, name) is None:
                    self._lost(run_id, name)
                    lost += 1
                elif self._release is not None:
                    self._release.offer(run_id, name, quiet=True)
        return lost

    # -- shutdown ----------------------------------------------------------------------------

    def leave(self) -> None:
        """At shutdown during an outage: files removed meanwhile are lost; the others stay in
        their sessions for the next start's catch-up, said in one line."""
        with self._lock:
            runs, self._runs = self._runs, {}
            self._files = self._bytes = 0
            self._gauges()
        files = size = 0
        for run_id, run in runs.items():
            for name, parked in run.files.items():
                if self._size(run_id, name) is None:
                    self._lost(run_id, name)
                else:
                    files, size = files + 1, size + parked
        if files:
            log.warning(events.STORE_BACKLOG_DEFERRED, files=files, size_bytes=size,
                        reason="the store is unavailable: the next start catches up")
