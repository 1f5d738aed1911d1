"""`promoter run`: the long-running daemon (DESIGN §5).

Start: start the watcher, prepare the store while a second process lists `sessions/`
(`promoter.prescan`), start the pipeline, run the start-up catch-up (telling systemd
`EXTEND_TIMEOUT_USEC=` while it runs), `READY=1`; a file found twice is promoted once.

Threads: the main thread handles signals, supervision of the watcher, systemd
pings and metrics; `promoter-settle` and `promoter-worker-N` promote
(`promoter.pipeline`); `promoter-catchup` runs catch-up passes on request and
every `rescan_interval_s`; `promoter-sweeper` expires runs every
`retention.sweep_interval_s` (both `promoter.loops`). Every loop waits on an
event or a timer; `promoter-signals` (`promoter.sigrelay`) acts on signals: it sets events.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from promoter import auditgap, earlyreload, events, stopguard
from promoter.audit import DAEMON
from promoter.backlog import Backlog
from promoter.config import Config, merge_reload
from promoter.errors import PromoterError
from promoter.logs import StdlibBridge, configure_logging, get_logger
from promoter.loops import CatchUp, Sink, Sweeper
from promoter.metrics import DaemonMetrics
from promoter.names import is_valid_run_id
from promoter.notify import Notifier, NullNotifier, make_notifier, monotonic_usec, watchdog_interval
from promoter.observers import make_observer
from promoter.parsedruns import give_back_memory
from promoter.pipeline import STALL_S, Pipeline
from promoter.prescan import Prescan, start_watching
from promoter.reconcile import Rejections
from promoter.runlock import hold_daemon_lock
from promoter.s3errors import StoreUnavailable
from promoter.sigrelay import SignalRelay
from promoter.startup import prepare
from promoter.store import Store
from promoter.watch import ObserverFactory, Watcher

__all__ = ["Daemon", "run_daemon"]

log = get_logger()
EXTEND_EVERY_S = 5.0  # during the start-up catch-up: ask systemd for this much more, often
EXTEND_USEC = 30_000_000
STOP_LOOK_S = 0.1  # how soon a SIGTERM during the start-up catch-up starts the stop
SIGNAL_LOOK_S = 1.0  # longest main-loop wait: a signal another thread took waits for it
STATUS_EVERY_S = 30.0
OUTAGE_STATUS_S = 5.0  # while the store is down, STATUS= follows the files waiting closer
SHUTDOWN_S = 20.0  # the drain's bound: the unit's TimeoutStopSec is 30 s


def run_daemon(config: Config, reload: Callable[[], Config], prescan: Prescan | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status (0 on a clean stop). A stop that
    has not ended the process within its bound ends it (`promoter.stopguard`)."""
    daemon = Daemon(config, reload, prescan=prescan)
    stopguard.arm(daemon.stop)
    with stopguard.last_stop(daemon.request_stop):
        return daemon.run()


def _thread_died(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "?"
    log.error(events.DAEMON_THREAD_DIED, thread=name,
              reason=f"{args.exc_type.__name__}: {args.exc_value}")


class Daemon:
    """The daemon's state and threads; `run()` is the whole life of the process."""

    def __init__(self, config: Config, reload: Callable[[], Config],
                 notifier: Notifier | None = None, install_signals: bool = True,
                 observer_factory: ObserverFactory = make_observer,
                 stall_s: float = STALL_S, prescan: Prescan | None = None) -> None:
        self.config = config
        self._prescan = prescan  # made early (prescan.early): told once the watches are set
        self._reload_fn = reload
        self.notifier = notifier or make_notifier()
        self._install_signals = install_signals
        self._observer_factory = observer_factory
        self._stall_s = stall_s
        self.stop = threading.Event()  # the one stop event
        self.wake = threading.Event()  # the main loop's: a signal or trouble
        self._reload = threading.Event()
        self._signal = ""
        self.metrics = DaemonMetrics()
        self.rejections = Rejections()
        self.store: Store | None = None
        self._lock_fd: int | None = None
        self.pipeline: Pipeline | None = None
        self.watcher: Watcher | None = None
        self.catchup: CatchUp | None = None
        self.sweeper: Sweeper | None = None
        self.backlog: Backlog | None = None
        self._unhealthy = ""
        self._counted = (0, 0)  # watch overflows and errors already in the metrics

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._signal = signal.Signals(signum).name
            self.stop.set()
        self.wake.set()

    def request_stop(self) -> None:
        """What SIGTERM does, for in-process callers."""
        self.stop.set()
        self.wake.set()

    def request_reload(self) -> None:
        """What SIGHUP does, for in-process callers."""
        self._reload.set()
        self.wake.set()

    # -- the life of the process ---------------------------------------------------------

    def run(self) -> int:
        saved = self._setup_process()
        try:
            self._start()
            if not self.stop.is_set():
                self._ready()
                self._main_loop()
            self._shutdown()
            return 0
        finally:
            if self._prescan is not None:
                self._prescan.discard()  # the start ended before the watches
            self._restore_process(saved)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _setup_process(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"excepthook": threading.excepthook}
        configure_logging(self.config.log.level, self.config.log.format)
        root = logging.getLogger()
        self._bridge = StdlibBridge(events.PYTHON_LOG, level=logging.WARNING)
        root.addHandler(self._bridge)
        logging.captureWarnings(True)
        threading.excepthook = _thread_died
        if self._install_signals:
            relay = saved["relay"] = SignalRelay(self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                saved[signum.name] = signal.signal(signum, relay.handler)
        return saved

    def _restore_process(self, saved: dict[str, Any]) -> None:
        threading.excepthook = saved["excepthook"]
        logging.getLogger().removeHandler(self._bridge)
        logging.captureWarnings(False)
        if self._install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, saved[signum.name])
            saved["relay"].close()
        close = getattr(self.notifier, "close", None)
        if close is not None:
            close()

    def _start(self) -> None:
        cfg = self.config
        log.info(events.DAEMON_STARTING, pid=os.getpid(), root=str(cfg.storage.root),
                 observer=cfg.watch.observer, workers=cfg.promote.workers,
                 settle_ms=cfg.watch.settle_ms)
        self.notifier.notify(f"EXTEND_TIMEOUT_USEC={EXTEND_USEC}")
        self._lock_fd = hold_daemon_lock(cfg.storage.sessions_dir)
        store = self.store = Store(cfg, actor=DAEMON, bounded=True)  # parsedruns.py
        backlog = self.backlog = Backlog(store, self.metrics, cfg.watch.settle_ms, self.stop)
        pipeline = self.pipeline = Pipeline(store, self.metrics, self.rejections,
                                            cfg.promote.workers, cfg.watch.settle_ms,
                                            stall_s=self._stall_s, backlog=backlog)
        settings = self._settings
        sweeper = self.sweeper = Sweeper(store, pipeline.busy, self.metrics, self.stop, settings)
        catchup = self.catchup = CatchUp(store, pipeline, self.metrics, self.rejections,
                                         self.stop, settings, backlog=backlog)
        store.on_over_budget = sweeper.over_budget
        backlog.on_available.append(catchup.kick)
        backlog.on_change = self.wake.set  # STATUS= at once when an outage starts or ends
        self.watcher = Watcher(store.sessions_path, Sink(catchup, pipeline), cfg.watch.exclude,
                               cfg.watch.observer, factory=self._observer_factory,
                               on_trouble=self.wake.set, max_depth=cfg.watch.max_depth)
        # watches before the repair (their events wait for the pipeline), then the start-up
        # catch-up's scan, on the other core (prescan.py); a failure is logged, retried
        prescan, self._prescan = start_watching(self.watcher, self._prescan, store.sessions_path,
                                                cfg), None
        try:
            self._open_store()
        except StoreUnavailable as exc:  # a store down at boot must not leave the host
            backlog.went_down(exc, reopen=self._open_store)  # without its daemon (§10)
        except BaseException:  # the store unusable: the process ends, with nothing left
            if prescan is not None:
                prescan.discard()
            self.watcher.stop()
            raise
        pipeline.start()
        catchup.start(self.watcher.degraded_runs, prescan)
        sweeper.start()
        backlog.start()
        extend_at = time.monotonic() + EXTEND_EVERY_S
        while not catchup.started.wait(STOP_LOOK_S):  # the start-up catch-up (DESIGN §5)
            if self.stop.is_set():
                break  # the stop's own bound starts now, not at the next extension
            if time.monotonic() >= extend_at:
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={EXTEND_USEC}")
                extend_at += EXTEND_EVERY_S

    def _open_store(self) -> None:
        """Prepare the store (probe, leftovers, repairs), take its size; again by the backlog."""
        assert self.store is not None and self.sweeper is not None
        store, ceiling = self.store, self.config.retention.max_store_bytes
        auditgap.opening(store)  # unclean from here: a kill in the repair is looked for
        prepare(store, stop=self.stop)
        if self.stop.is_set():
            return  # a SIGTERM during the repair: the rest is the next start's
        auditgap.began(store)  # a crash's promotions not journaled (DESIGN §11), this life's
        store.total.reset(store.list_looks())  # once; then kept as metadata is written
        if ceiling and store.total.total > ceiling:
            self.sweeper.over_budget()

    def _settings(self) -> Config:
        """The configuration in force, for the loops (a reload replaces it)."""
        return self.config

    def _ready(self) -> None:
        assert self.watcher is not None and self.store is not None
        self.notifier.notify("READY=1\n" + self._status())
        log.info(events.DAEMON_READY, pid=os.getpid(), observer=self.watcher.in_use or "none",
                 runs=self._runs_watched(), workers=self.config.promote.workers,
                 settle_ms=self.config.watch.settle_ms)
        self.store.cache.pack_views()  # the start's views packed after READY, not on its path
        give_back_memory()  # and what they held whole

    def _main_loop(self) -> None:
        ping_every = watchdog_interval()
        now = time.monotonic()
        next_ping = now if ping_every else None
        next_status = None if isinstance(self.notifier, NullNotifier) else now + STATUS_EVERY_S
        next_metrics = now
        retry_at: float | None = None
        last_status = ""
        store_up = True
        while not self.stop.is_set():
            timers = [t for t in (next_ping, next_status, retry_at,
                                  next_metrics if self.config.metrics.textfile else None)
                      if t is not None]
            timeout = min([max(t - time.monotonic(), 0) for t in timers] + [SIGNAL_LOOK_S])
            self.wake.wait(timeout)
            self.wake.clear()
            if self.stop.is_set():
                break
            if self._reload.is_set() or earlyreload.take():  # F7: one during the imports
                self._reload.clear()
                self._do_reload()
            assert self.watcher is not None
            retry_at = self.watcher.supervise()
            now = time.monotonic()
            if next_ping is not None and ping_every and now >= next_ping:
                self._ping()
                next_ping = now + ping_every
            if self.pipeline is not None and self.pipeline.backlog.available() != store_up:
                store_up = not store_up  # an outage started or ended: say so now
                next_status = now if next_status is not None else None
            if next_status is not None and now >= next_status:
                status = self._status()
                if status != last_status:
                    self.notifier.notify(status)
                    last_status = status
                next_status = now + (STATUS_EVERY_S if store_up else OUTAGE_STATUS_S)
            if self.config.metrics.textfile and now >= next_metrics:
                self._write_metrics()
                next_metrics = now + self.config.metrics.interval_s

    def _health(self) -> str | None:
        assert self.watcher is not None and self.pipeline is not None
        for check in (self.watcher.health(), self.pipeline.health()):
            if check is not None:
                return check
        for loop in self._loops():
            if not loop.is_alive():
                return f"{loop.name} is not running"
        return None

    def _loops(self) -> list[CatchUp | Sweeper | Backlog]:
        return [loop for loop in (self.catchup, self.sweeper, self.backlog) if loop is not None]

    def _ping(self) -> None:
        """WATCHDOG=1 only while the pipeline is healthy (DESIGN §5): else systemd restarts."""
        problem = self._health()
        if problem is None:
            self.notifier.notify("WATCHDOG=1")
            if self._unhealthy:
                self._unhealthy = ""
                self.notifier.notify(self._status())
        elif _kind(problem) != _kind(self._unhealthy):  # not again as its seconds count up
            self._unhealthy = problem
            log.error(events.DAEMON_UNHEALTHY, reason=problem, watchdog="not pinged")
            self.notifier.notify(f"STATUS=unhealthy: {problem}")

    def _status(self) -> str:
        assert self.pipeline is not None and self.watcher is not None
        return (f"STATUS=watching {self._runs_watched()} runs ({self.watcher.in_use or 'none'}), "
                f"{self.pipeline.promoted} files promoted, {self.pipeline.queue_length} queued"
                f"{self.pipeline.backlog.status()}")

    def _runs_watched(self) -> int:
        assert self.store is not None
        try:
            with os.scandir(self.store.sessions_path) as it:
                return sum(is_valid_run_id(e.name) and e.is_dir(follow_symlinks=False) for e in it)
        except OSError:
            return 0

    def _write_metrics(self) -> None:
        assert self.watcher is not None and self.store is not None
        self.metrics.runs_watched.set(self._runs_watched())
        self.metrics.store_bytes.set(self.store.total.total)
        self.metrics.store_max_bytes.set(self.config.retention.max_store_bytes)
        overflows, errors = self.watcher.overflows, self.watcher.errors
        self.metrics.overflows.inc(overflows - self._counted[0])
        self.metrics.watch_errors.inc(errors - self._counted[1])
        self._counted = (overflows, errors)
        try:
            self.metrics.write(self.config.metrics.textfile)
        except OSError as exc:
            log.warning(events.METRICS_FAILED, path=self.config.metrics.textfile,
                        reason=exc.strerror or str(exc))

    # -- reload --------------------------------------------------------------------------

    def _do_reload(self) -> None:
        """SIGHUP: apply what can change without a restart, keep the rest (DESIGN §5)."""
        assert self.store is not None and self.pipeline is not None and self.watcher is not None
        self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
        try:
            new = self._reload_fn()
        except PromoterError as exc:
            log.error(events.DAEMON_RELOAD_FAILED, reason=str(exc), kept="previous configuration")
            self.notifier.notify("READY=1\n" + self._status())
            return
        reloaded = merge_reload(self.config, new)
        applied, changed, restart = reloaded.config, reloaded.changed, reloaded.restart
        self.config = applied
        self.store.config = applied
        configure_logging(applied.log.level, applied.log.format)
        self.pipeline.set_settle(applied.watch.settle_ms)
        self.watcher.set_exclude(applied.watch.exclude)
        self.watcher.max_depth = applied.watch.max_depth
        for loop in self._loops():
            loop.kick()
        ceiling = applied.retention.max_store_bytes
        if ceiling and self.store.total.total > ceiling and self.sweeper is not None:
            self.sweeper.over_budget()  # a lowered ceiling applies now, not at the next promotion
        log.info(events.DAEMON_RELOADED, changed=changed, applied=[k for k in changed
                                                                   if k not in restart])
        if restart:
            log.warning(events.DAEMON_RESTART_NEEDED, keys=restart,
                        reason="these take effect at the next start")
        self.notifier.notify("READY=1\n" + self._status())

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        started = time.monotonic()
        log.info(events.DAEMON_STOPPING, signal=self._signal or "request")
        self.notifier.notify("STOPPING=1")
        self.stop.set()
        for loop in self._loops():
            loop.stop()
        if self.watcher is not None:
            self.watcher.quiesce(1.0)  # events of files closed just before the signal
            self.watcher.stop()
        drained = self.pipeline.drain(SHUTDOWN_S, started) if self.pipeline is not None else True
        for loop in self._loops():
            if not loop.join(max(started + SHUTDOWN_S - time.monotonic(), 0.1)):
                log.error(events.DAEMON_THREAD_STUCK, threads=[loop.name])
        if self.pipeline is not None:
            self.pipeline.close()  # nothing promotes any more: the copy helpers end
            self.pipeline.backlog.leave()  # an outage's files: the next start catches up
        auditgap.stopped(self.store, drained)  # every batch journaled: no gap to look for
        self.metrics.up.set(0)
        if self.config.metrics.textfile and self.watcher is not None:
            self._write_metrics()
        log.info(events.DAEMON_STOPPED, drained=drained,
                 promoted=self.pipeline.promoted if self.pipeline else 0,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))


def _kind(problem: str) -> str:
    """A problem without its numbers ("no chunk for 31 s", "32 s"): logged once, not a ping."""
    return re.sub(r"\d+", "#", problem)
