"""The promotion pipeline: one settle thread, a pool of workers (DESIGN §5).

The settle thread alone owns the `Settler` (the watcher, the catch-up thread and the
workers talk to it through one queue: no lock). It sleeps until its next deadline or
message. Finished files go to the workers a batch per run (one metadata write), made when a
worker is free for it, so a run's files gather meanwhile. Nothing a worker meets stops the
daemon: every error is logged, the files retried.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

from promoter import events, stopcopy
from promoter.backlog import Backlog
from promoter.layout import session_file
from promoter.logs import get_logger
from promoter.metrics import DaemonMetrics
from promoter.reconcile import Rejections
from promoter.rules import MAX_BATCH, MIN_BATCH, batch_limit
from promoter.s3errors import StoreUnavailable
from promoter.safeio import CopyPools
from promoter.settle import Batch, FileState, Room, Settler
from promoter.stopping import STOP_BUDGET_S, one_by_one, promote_chunks, steady_files, worker_error
from promoter.store import RETRY, Outcome, PromoteResult, Store

__all__ = ["MAX_BATCH", "STALL_S", "Pipeline", "batch_limit"]

log = get_logger()
MS = 1_000_000
STALL_S = 120.0  # a worker with no chunk done for this long (+ the chunk's allowance) is stuck
SLOW_RATE, SLOW_FILE_S = 1 << 20, 1.0  # a chunk's allowance: its bytes at 1 MiB/s, 1 s a file
SMALL_BATCH = 16  # files: such a batch takes the lane while every worker is busy
GATHER_S = 0.002  # the settle thread, woken by a message, lets the next ones come first


# -- messages to the settle thread (each names what happened; see Pipeline._apply) -------

class _Touch(NamedTuple):  # a file's: made for each event, a tuple is cheapest
    run_id: str
    filename: str
    strong: bool
    open_unknown: bool


class _Nudge(NamedTuple):  # a file's: made for each event, a tuple is cheapest
    run_id: str
    filename: str


class _Forget(NamedTuple):  # a file's: made for each event, a tuple is cheapest
    run_id: str
    filename: str


@dataclass(frozen=True)
class _ForgetTree:
    run_id: str
    folder: str


@dataclass(frozen=True)
class _Context:
    run_id: str


@dataclass(frozen=True)
class _Gone:
    run_id: str


class _Offer(NamedTuple):  # a file's: made for each event, a tuple is cheapest
    run_id: str
    filename: str
    quiet: bool


@dataclass(frozen=True)
class _Settle:
    settle_ms: int


@dataclass(frozen=True)
class _Done:
    batch: Batch
    retry: frozenset[str]
    retry_run: bool
    limit: int


@dataclass(frozen=True)
class _Flush:
    """Shutdown: flush what is finished, then stop."""


_Message = (_Touch | _Nudge | _Forget | _ForgetTree | _Context | _Gone | _Offer | _Settle
            | _Done | _Flush)


class Pipeline:
    """Settle thread + workers around a Store. Its event methods are the watcher's sink."""

    def __init__(self, store: Store, metrics: DaemonMetrics, rejections: Rejections,
                 workers: int, settle_ms: int, stall_s: float = STALL_S,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns,
                 backlog: Backlog | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.rejections = rejections
        self.stall_s = stall_s
        self._now = monotonic_ns
        self._settler = Settler(settle_ms * MS)
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._pause = threading.Event()  # never set: the settle thread's gather (GATHER_S)
        self._threads = [threading.Thread(target=self._settle_loop, name="promoter-settle",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"promoter-worker-{i + 1}",
                                           daemon=True) for i in range(workers)]
        self._lane: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()  # see _hand_out
        self._threads.append(threading.Thread(target=self._worker, args=(self._lane,),
                                              name="promoter-worker-lane", daemon=True))
        self._workers, self._on_work = workers, 0  # batches on the workers' queue, not done
        self._laned: set[int] = set()  # id() of the batches handed to the lane
        self._working: dict[str, tuple[float, float]] = {}  # worker -> (last step, allowance s)
        self._stop_by: float | None = None  # set by drain(): no chunk starts after it
        self._stop_since: float | None = None  # set by drain(): when the stop began
        self.pools = CopyPools()  # the copy helper threads, lent to the store; see close()
        store.pools = self.pools
        # published by the settle thread after every turn; read anywhere without a lock
        self._busy: frozenset[str] = frozenset()
        self.queue_length = 0
        self._outstanding = 0
        self._last_progress = time.monotonic()
        self._promoted = 0
        self._promoted_lock = threading.Lock()  # workers and the catch-up thread both add
        # the store's outages (DESIGN §10): batches wait there as paths while it is down
        self.backlog = backlog or Backlog(store, metrics, settle_ms)
        self.backlog.attach(self)

    # -- the watcher's sink --------------------------------------------------------------

    def file_changed(self, run_id: str, filename: str, strong: bool,
                     open_unknown: bool = False) -> None:
        self._inbox.put(_Touch(run_id, filename, strong, open_unknown))

    def file_nudged(self, run_id: str, filename: str) -> None:
        self._inbox.put(_Nudge(run_id, filename))

    def file_gone(self, run_id: str, filename: str) -> None:
        self._inbox.put(_Forget(run_id, filename))

    def folder_gone(self, run_id: str, folder: str) -> None:
        self._inbox.put(_ForgetTree(run_id, folder))

    def context_changed(self, run_id: str) -> None:
        self._inbox.put(_Context(run_id))

    def session_gone(self, run_id: str) -> None:
        self._inbox.put(_Gone(run_id))

    def offer(self, run_id: str, filename: str, quiet: bool) -> None:
        """A catch-up found a file the store lacks; `quiet` when already settled on disk."""
        self._inbox.put(_Offer(run_id, filename, quiet))

    def set_settle(self, settle_ms: int) -> None:
        self._inbox.put(_Settle(settle_ms))

    # -- state for the daemon ------------------------------------------------------------

    def busy(self, run_id: str) -> bool:
        """True while the run has files pending or in flight: the sweeper leaves it alone."""
        return run_id in self._busy or self.backlog.holds(run_id)

    def health(self) -> str | None:
        """None while all runs well, else what is wrong (e.g. a chunk past stall_s + allowance)."""
        for thread in self._threads:
            if not thread.is_alive():
                return f"{thread.name} is not running"
        now = time.monotonic()
        for name, (since, allowance) in list(self._working.items()):
            if now - since > self.stall_s + allowance:
                return f"{name} has finished no chunk for {now - since:.0f} s"
        if self._outstanding and not self._working and now - self._last_progress > self.stall_s:
            return f"no batch done for {self.stall_s:.0f} s with {self._outstanding} outstanding"
        return None

    @property
    def promoted(self) -> int:
        """Files promoted since start, by the workers and the catch-up alike."""
        return self._promoted

    def add_promoted(self, count: int) -> None:
        with self._promoted_lock:
            self._promoted += count

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def drain(self, timeout: float, since: float | None = None) -> bool:
        """Shutdown (begun at `since`): promote the closed files, finish; False: too late."""
        self._stop_since = time.monotonic() if since is None else since
        self._stop_by = time.monotonic() + min(STOP_BUDGET_S, timeout)
        self._inbox.put(_Flush())
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.error(events.DAEMON_THREAD_STUCK, threads=stuck, waited_s=timeout)
        return not stuck

    def close(self) -> None:
        """After the drain, nothing else promoting: end the copy helpers (unless one is stuck)."""
        if not any(t.is_alive() for t in self._threads):
            self.pools.shutdown()

    # -- the settle thread ---------------------------------------------------------------

    def _settle_loop(self) -> None:
        s = self._settler
        draining = False
        while True:
            deadline = s.next_deadline()
            timeout = None if deadline is None else max(deadline - self._now(), 0) / 1e9
            message: _Message | None
            try:
                message = self._inbox.get(timeout=timeout)
            except queue.Empty:
                message = None
            if message is not None and not draining and not isinstance(message, _Done):
                self._pause.wait(GATHER_S)  # events gather (CPU); a freed worker never waits
            while message is not None:
                if isinstance(message, _Flush):
                    draining = True
                    for batch in s.flush_closed(steady_files(s, self._stat)):
                        self._hand_out(batch, stopping=True)
                else:
                    self._apply(s, message)
                try:
                    message = self._inbox.get_nowait()
                except queue.Empty:
                    message = None
            if not draining:
                for batch in s.due(self._now(), self._stat, self._room()):
                    self._hand_out(batch)
            self._busy = s.busy_runs()
            self.queue_length = len(s)
            if (outstanding := s.in_flight()) and not self._outstanding:
                self._last_progress = time.monotonic()  # work again: no stall since the last
            self._outstanding = outstanding
            self.metrics.queue.set(self.queue_length)
            if draining and s.in_flight() == 0:
                break
        for _ in range(self._workers):
            self._work.put(None)
        self._lane.put(None)

    def _hand_out(self, batch: Batch, stopping: bool = False) -> None:
        """To the workers; while all are busy, to the lane: a small batch, any at the stop."""
        if (stopping or len(batch.filenames) <= SMALL_BATCH) and self._on_work >= self._workers:
            self._laned.add(id(batch))
            self._lane.put(batch)
        else:
            self._on_work += 1
            self._work.put(batch)

    def _room(self) -> Room:
        """The free workers, and the lane if idle: no more batches are made, so a run's files
        gather while every worker is busy. `_hand_out` sends them as the settler ordered
        them (the workers' first, then the small one), so each goes where it was counted."""
        return Room(max(self._workers - self._on_work, 0), 0 if self._laned else 1,
                    SMALL_BATCH)

    def _apply(self, s: Settler, message: _Message) -> None:
        now = self._now()
        match message:
            case _Touch(run_id, filename, strong, open_unknown):
                s.touch(run_id, filename, now, strong=strong, open_unknown=open_unknown)
            case _Nudge(run_id, filename):
                s.nudge(run_id, filename, now)
            case _Forget(run_id, filename):
                s.forget(run_id, filename)
            case _ForgetTree(run_id, folder):
                s.forget_tree(run_id, folder)
            case _Context(run_id):
                s.context(run_id, now)
            case _Gone(run_id):
                s.session_gone(run_id, now)
            case _Offer(run_id, filename, quiet):
                s.offer(run_id, filename, now, quiet=quiet)
            case _Settle(settle_ms):
                s.settle_ns = settle_ms * MS
            case _Done(batch, retry, retry_run, limit):
                s.done(batch, retry, now, retry_run=retry_run, limit=limit)
                self._on_work -= id(batch) not in self._laned
                self._laned.discard(id(batch))
                self._last_progress = time.monotonic()

    def _stat(self, run_id: str, filename: str) -> FileState | None:
        try:
            st = os.stat(session_file(self.store.sessions_path, run_id, filename),
                         follow_symlinks=False)
        except (OSError, ValueError):
            return None
        return FileState(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    # -- the workers ---------------------------------------------------------------------

    def _worker(self, source: queue.SimpleQueue[Batch | None] | None = None) -> None:
        work = self._work if source is None else source
        stopcopy.watch(lambda: self._stop_since)  # a long copy gives way to a stop
        while True:
            batch = self._from_lane() if source is None else None
            batch = work.get() if batch is None else batch
            if batch is None:
                return
            self._working[me := threading.current_thread().name] = (time.monotonic(), 0.0)
            retry, retry_run = self._promote(batch)
            self._last_progress = time.monotonic()  # until the settle thread reads its _Done
            del self._working[me]  # (after: a look between the two saw no worker, old progress)
            self._inbox.put(_Done(batch, retry, retry_run, self._limit(batch.run_id)))

    def _from_lane(self) -> Batch | None:
        """A free worker helps the lane with what queued there meanwhile (probe-cpu F5)."""
        with contextlib.suppress(queue.Empty):
            if (batch := self._lane.get_nowait()) is None:
                self._lane.put(None)
            return batch
        return None

    def _promote(self, batch: Batch) -> tuple[frozenset[str], bool]:
        """One batch; returns the files and whether the run chores are to be retried."""
        if self.backlog.hold(batch):  # the store is down: the batch waits there (backlog.py)
            return frozenset(), False
        started = time.monotonic()
        results: list[PromoteResult] = []
        raised: set[str] = set()
        deferred: list[str] = []
        retry_run = False
        try:
            if batch.filenames:
                results, deferred = promote_chunks(self.store, batch, lambda: self._stop_by,
                                                    self._step)
            elif batch.context:
                self.store.refresh_context(batch.run_id)
            if batch.completed:
                self.store.mark_completed(batch.run_id)
        except StoreUnavailable as exc:  # the run chores met the outage: they wait too
            self.backlog.went_down(exc)
            self.backlog.hold(Batch(batch.run_id, context=batch.context,
                                    completed=batch.completed))
        except Exception as exc:  # nothing a worker meets may stop the daemon (DESIGN §5)
            worker_error(batch.run_id, exc, files=len(batch.filenames))
            if len(batch.filenames) < 2:
                return frozenset(batch.filenames), True
            retry_run = True
            # One file that makes the store raise must not hold back its batch-mates, which
            # would be retried with it, together, for ever: each is tried alone, and only
            # the ones that raise alone are retried (with the run chores).
            results, raised = one_by_one(self.store, batch, self._step, self._stat)
        try:
            self.metrics.deferred(len(deferred))
            self._account(batch, results)
        except Exception as exc:
            log.error(events.WORKER_ERROR, run_id=batch.run_id, reason=repr(exc), exc_info=True)
        log.debug(events.PROMOTE_BATCH, run_id=batch.run_id, files=len(batch.filenames),
                  context=batch.context, completed=batch.completed,
                  duration_ms=round((time.monotonic() - started) * 1000, 1))
        outcome = {r.filename: r.outcome for r in results}
        retry = frozenset(n for n in batch.filenames if n not in deferred
                          and (n in raised or outcome.get(n, Outcome.FAILED) in RETRY))
        return self.backlog.explain(batch.run_id, results, retry), retry_run

    def _step(self, files: int, nbytes: int) -> None:  # a chunk starts, the last is done
        allowance = files * SLOW_FILE_S + nbytes / SLOW_RATE
        self._working[threading.current_thread().name] = (time.monotonic(), allowance)

    def _limit(self, run_id: str) -> int:
        with contextlib.suppress(Exception):  # the run's next batches; a hint never stops one
            meta = self.store.cached_run(run_id)
            return batch_limit(len(meta.artifacts) if meta is not None else 0)
        return MIN_BATCH

    def _account(self, batch: Batch, results: Collection[PromoteResult]) -> None:
        self.metrics.record(results, time.time_ns())
        self.add_promoted(sum(1 for r in results if r.outcome is Outcome.PROMOTED))
        for r in results:
            if r.outcome is Outcome.REJECTED:
                self.rejections.remember(self.store.sessions_path, batch.run_id, r.filename)
