"""The daemon's two background loops beside the pipeline (DESIGN §5): catch-up and sweeper.

Each is a `LoopThread` (promoter.loopthread) on the daemon's one stop event.
Configuration is read through a getter at each pass, so a reload (SIGHUP) applies to
the next wait.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

from promoter import events, stopcopy
from promoter.backlog import Backlog
from promoter.config import Config
from promoter.errors import PromoterError, host_limit, plain_reason
from promoter.logs import get_logger
from promoter.loopthread import LoopThread
from promoter.metadata import RunMetadata
from promoter.metrics import DaemonMetrics
from promoter.names import is_valid_run_id
from promoter.parsedruns import RunView, give_back_memory
from promoter.pipeline import Pipeline
from promoter.prescan import Prescan
from promoter.progress import terminal_progress
from promoter.reconcile import (
    Rejections,
    complete_finished_runs,
    find_pending,
    note_walk_refusals,
    quiet,
    reconcile,
)
from promoter.s3errors import StoreUnavailable
from promoter.store import Outcome, Store
from promoter.sweep import SweepReport, sweep
from promoter.walk import forget_known_copies, prepare_known_copies

__all__ = ["BUDGET_GAP_S", "DEGRADED_RESCAN_S", "CatchUp", "Sink", "Sweeper"]

log = get_logger()
DEGRADED_RESCAN_S = 5.0  # runs with a folder that has no watch are caught up this often
BUDGET_GAP_S = 1.0  # the least time between two sweeps kicked by the store's ceiling

Settings = Callable[[], Config]  # the configuration in force (a reload replaces it)
DegradedRuns = Callable[[], frozenset[str] | None]  # runs without a watch (None: all)


class CatchUp(LoopThread):
    """`promoter-catchup`: the start-up catch-up, then a pass on request, every
    `watch.rescan_interval_s`, and every DEGRADED_RESCAN_S for runs the watch misses."""

    name = "promoter-catchup"

    def __init__(self, store: Store, pipeline: Pipeline, metrics: DaemonMetrics,
                 rejections: Rejections, stop: threading.Event, settings: Settings,
                 backlog: Backlog | None = None) -> None:
        super().__init__(stop)
        self._store = store
        self._pipeline = pipeline
        self._backlog = backlog  # the store's outages: passes wait while it is down
        self._metrics = metrics
        self._rejections = rejections
        self._settings = settings
        self._lock = threading.Lock()
        self._requests: dict[str, set[str]] = {}  # run id ("" = all) -> reasons
        self._degraded: DegradedRuns = lambda: frozenset()
        self._prescan: Prescan | None = None
        self.started = threading.Event()  # set once the start-up catch-up has ended
        self._failed = False  # the last full pass failed: the next comes soon

    def start(self, degraded_runs: DegradedRuns, prescan: Prescan | None = None) -> None:
        """Start the thread; `degraded_runs` is the watcher's list of unwatched runs,
        `prescan` the start-up pass's scan, under way in a second process."""
        self._degraded = degraded_runs
        self._prescan = prescan
        self._start_thread()

    def request(self, runs: frozenset[str] | None, reason: str) -> None:
        """Ask for a scan of `runs` (None: all). Any thread may call it."""
        with self._lock:
            for run_id in runs if runs is not None else {""}:
                self._requests.setdefault(run_id, set()).add(reason)
        self._kick.set()

    def _run(self) -> None:
        stopcopy.watch(lambda: self.stopped_at)  # a long copy gives way to a stop
        try:
            while not self._startup() and not self._stop.is_set():
                # the store is unreachable (DESIGN §10): the daemon is ready without this
                # pass, which runs once the store answers (the backlog kicks this loop)
                self.started.set()
                self._kick.wait()
                self._kick.clear()
        finally:
            if self._prescan is not None:
                self._prescan.discard()
            self.started.set()
        give_back_memory()  # what the start freed (its listing, its parse): DESIGN §9
        self._kick.set()  # requests that came meanwhile
        next_rescan = self._next_rescan()
        next_degraded: float | None = None
        while not self._stop.is_set():
            if self._failed:  # a failed pass is made again soon, whatever the rescan interval
                self._failed = False
                soon = time.monotonic() + DEGRADED_RESCAN_S
                next_rescan = soon if next_rescan is None else min(next_rescan, soon)
            timers = [t for t in (next_rescan, next_degraded) if t is not None]
            self._kick.wait(max(min(timers) - time.monotonic(), 0) if timers else None)
            self._kick.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            with self._lock:
                requests, self._requests = self._requests, {}
            if next_rescan is not None and now >= next_rescan:
                requests.setdefault("", set()).add("rescan")
            degraded = self._degraded()
            if next_degraded is not None and now >= next_degraded:
                for run_id in degraded if degraded is not None else {""}:
                    requests.setdefault(run_id, set()).add("degraded")
            if "" in requests:
                next_rescan = self._next_rescan()
            next_degraded = now + DEGRADED_RESCAN_S if degraded is None or degraded else None
            if requests and not self._store_up():
                self._requeue(requests)  # the backlog kicks this loop when the store is back
            elif requests:
                self._scan(requests)

    def _next_rescan(self) -> float | None:
        interval = self._settings().watch.rescan_interval_s
        return time.monotonic() + interval if interval > 0 else None

    def _store_up(self) -> bool:
        return self._backlog is None or self._backlog.available()

    def _outage(self, exc: StoreUnavailable) -> None:
        if self._backlog is not None:
            self._backlog.went_down(exc)

    def _requeue(self, requests: dict[str, set[str]]) -> None:
        with self._lock:
            for run_id, reasons in requests.items():
                self._requests.setdefault(run_id, set()).update(reasons)

    def _startup(self) -> bool:
        """The start-up pass; False when the store is down (to be run once it is back)."""
        prescan, self._prescan = self._prescan, None  # for the first try only: fresh later
        if not self._store_up():
            if prescan is not None:
                prescan.discard()
            return False
        started = time.monotonic()
        log.info(events.RECONCILE_STARTED, trigger="startup")
        shown = terminal_progress("start-up catch-up: files")  # a person at a terminal
        views: list[RunView] = []
        try:
            if prescan is not None:  # while it lists: the runs' known copies, made ahead
                prepare_known_copies(self._session_models(views), self._stop)
                for view in views:
                    if self._stop.is_set():
                        break
                    view.prepare()
            listing = prescan.collect(self._stop) if prescan is not None else None
            if self._stop.is_set():
                return True  # stopped while the child listed: no pass to make (r6 probe)
            report = reconcile(self._store, self._rejections, self._stop,
                               progress=shown.update if shown else None, listing=listing)
        except StoreUnavailable as exc:  # waits for the store when a backlog watches it
            self._outage(exc)
            return self._backlog is None
        except Exception as exc:
            self._failed = True
            log.error(events.RECONCILE_FAILED, trigger="startup", reason=plain_reason(exc),
                      action=f"tried again in {DEGRADED_RESCAN_S:.0f} s",
                      exc_info=not isinstance(exc, OSError | PromoterError))  # a bug's only
            return True
        finally:
            forget_known_copies()
            for view in views:
                view.forget()
            if shown:
                shown.close()
        self._metrics.record(report.outcomes.values(), time.time_ns())
        self._pipeline.add_promoted(report.count(Outcome.PROMOTED))
        left = report.left()
        for r in left:  # the live path's backoff, which never gives up (DESIGN §5)
            self._pipeline.offer(r.run_id, r.filename, quiet=False)
        duration = time.monotonic() - started
        self._metrics.reconciled(time.time(), duration)
        failed = [r for r in left if r.outcome is Outcome.FAILED]
        (log.warning if failed else log.info)(
            events.RECONCILE_FINISHED, trigger="startup", **report.summary(),
            prescan=listing is not None, duration_ms=round(duration * 1000, 1),
            **({"reason": failed[0].reason or "copy failed",
                "action": "tried again with a backoff"} if failed else {}))
        return True

    def _session_models(self, views: list[RunView]) -> Iterator[RunMetadata]:
        """The store's parsed model of each run that has a session folder (the runs the
        catch-up compares), as `read_run` will give it: on the local disk only (an object
        store's version tag may cost a request). The runs the bounded cache let go: their
        views, in `views` (parsedruns.py)."""
        if self._store.config.storage.backend != "local":
            return
        try:
            with os.scandir(self._store.sessions_path) as it:
                run_ids = [e.name for e in it if is_valid_run_id(e.name)]
        except OSError:
            return
        for run_id in run_ids:
            meta, view = self._store.current(run_id)
            if meta is not None:
                yield meta
            elif view is not None:
                views.append(view)

    def _scan(self, requests: dict[str, set[str]]) -> None:
        """Offer every file the store lacks to the pipeline, which settles and promotes it."""
        started = time.monotonic()
        runs = None if "" in requests else sorted(requests)
        reasons = sorted(set().union(*requests.values()))
        try:
            pending = find_pending(self._store, self._rejections, runs)
            now_ns = time.time_ns()
            settle_ns = self._settings().watch.settle_ms * 1_000_000
            for run_id, files in pending.items():
                for f in files:
                    self._pipeline.offer(run_id, f.filename, quiet=quiet(f, now_ns, settle_ns))
            note_walk_refusals(self._store, self._rejections)  # the pipeline's time is its own
            if runs is None:
                complete_finished_runs(self._store)
        except StoreUnavailable as exc:  # the pass waits for the store (see _run)
            self._outage(exc)
            self._requeue(requests)
            return
        except Exception as exc:  # a failed pass is logged, and made again soon
            self._failed = runs is None or host_limit(exc) is not None
            log.error(events.RECONCILE_FAILED, trigger=reasons, reason=plain_reason(exc))
            return
        duration = time.monotonic() - started
        self._metrics.reconciled(time.time(), duration)
        log.info(events.RECONCILE_FINISHED, trigger=reasons, runs=runs if runs else "all",
                 offered=sum(len(f) for f in pending.values()),
                 duration_ms=round(duration * 1000, 1))


class Sweeper(LoopThread):
    """`promoter-sweeper`: expires runs every `retention.sweep_interval_s`, and at once
    (at most one pass a BUDGET_GAP_S) when a write left the store over its ceiling."""

    name = "promoter-sweeper"

    def __init__(self, store: Store, busy: Callable[[str], bool], metrics: DaemonMetrics,
                 stop: threading.Event, settings: Settings) -> None:
        super().__init__(stop)
        self._store = store
        self._busy = busy
        self._metrics = metrics
        self._settings = settings
        self._budget = threading.Event()  # a promotion pushed the store over its ceiling

    def start(self) -> None:
        self._start_thread()

    def over_budget(self) -> None:
        """A metadata write left the store over `retention.max_store_bytes`: sweep at once."""
        self._budget.set()
        self._kick.set()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            due = last + self._settings().retention.sweep_interval_s
            self._kick.wait(max(due - time.monotonic(), 0))
            self._kick.clear()
            if self._stop.is_set():
                break
            if self._budget.is_set():
                self._budget.clear()
                self._budget_pass()
                continue
            if time.monotonic() < last + self._settings().retention.sweep_interval_s:
                continue  # woken by a reload: the interval may have changed
            last = time.monotonic()
            self._sweep_once()

    def _budget_pass(self) -> None:
        report = self._sweep_once()
        ceiling = self._settings().retention.max_store_bytes
        if (report is not None and report.skipped_busy and ceiling
                and self._store.total.total > ceiling):
            self.over_budget()  # runs being written were passed over: look again
        # while only kept or active runs remain over, each promotion kicks again:
        # at most one pass a second (stop still ends the wait at once)
        self._stop.wait(BUDGET_GAP_S)

    def _sweep_once(self) -> SweepReport | None:
        try:
            report = sweep(self._store, busy=self._busy)
        except Exception as exc:  # the sweeper never stops the daemon either
            log.error(events.SWEEP_ERROR, reason=f"{type(exc).__name__}: {exc}")
            return None
        self._metrics.expired.inc(len(report.expired))
        if report.expired or report.skipped_busy or report.tombstones_dropped:
            log.info(events.SWEEP_FINISHED, expired=report.expired, budget=report.budget,
                     busy=report.skipped_busy,
                     tombstones_dropped=report.tombstones_dropped)
        return report


class Sink:
    """The watcher's sink: file events to the pipeline, catch-up requests to the catch-up."""

    def __init__(self, catchup: CatchUp, pipeline: Pipeline) -> None:
        self.catch_up = catchup.request
        self.file_changed = pipeline.file_changed
        self.file_nudged = pipeline.file_nudged
        self.file_gone = pipeline.file_gone
        self.folder_gone = pipeline.folder_gone
        self.context_changed = pipeline.context_changed
        self.session_gone = pipeline.session_gone
