"""The daemon's Prometheus figures, written to a text file (DESIGN §5: node_exporter's
textfile-collector convention; the daemon opens no port).

A registry of its own, never prometheus_client's global one, so that two
daemons in one test process (or the web server's metrics) never mix.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile

from promoter.store import Outcome, PromoteResult

__all__ = ["LATENCY_BUCKETS", "DaemonMetrics"]

# From a file's last change to its metadata entry: settle_ms (300 by default) plus the copy.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_RESULTS = {
    Outcome.PROMOTED: "promoted",
    Outcome.REJECTED: "rejected",
    Outcome.FAILED: "failed",
    Outcome.LOST: "lost",
    Outcome.DEFERRED: "deferred",  # a copy a stop gave up (the budget's are `deferred()`)
}


class DaemonMetrics:
    """Counters the workers, the watcher and the timers update; `write()` renders them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.files = Counter("promoter_files", "Files offered for promotion, by result.",
                             ["result"], registry=r)
        for label in _RESULTS.values():
            self.files.labels(result=label)
        self.bytes = Counter("promoter_promoted_bytes", "Bytes copied into the store.",
                             registry=r)
        self.latency = Histogram("promoter_promotion_latency_seconds",
                                 "From a file's last change to its metadata entry.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("promoter_queue_files", "Files waiting to settle or being copied.",
                           registry=r)
        self.runs_watched = Gauge("promoter_runs_watched", "Run folders under sessions/.",
                                  registry=r)
        self.overflows = Counter("promoter_watch_overflows",
                                 "Event queue overflows (each triggers a catch-up pass).",
                                 registry=r)
        self.watch_errors = Counter("promoter_watch_errors",
                                    "Watch failures: watches not added, dead observer threads, "
                                    "handler errors.", registry=r)
        self.reconcile_time = Gauge("promoter_last_reconcile_timestamp_seconds",
                                    "When the last catch-up pass finished (Unix time).",
                                    registry=r)
        self.reconcile_duration = Gauge("promoter_last_reconcile_duration_seconds",
                                        "How long the last catch-up pass took.", registry=r)
        self.expired = Counter("promoter_runs_expired", "Runs deleted by the sweeper.",
                               registry=r)
        self.store_bytes = Gauge("promoter_store_bytes",
                                 "The store's size: the sum of the artifacts' size_bytes.",
                                 registry=r)
        self.store_max_bytes = Gauge("promoter_store_max_bytes",
                                     "retention.max_store_bytes (0: no ceiling).", registry=r)
        self.store_available = Gauge("promoter_store_available",
                                     "1 while the store answers; 0 during an outage (DESIGN §10).",
                                     registry=r)
        self.waiting_files = Gauge("promoter_store_waiting_files",
                                   "Files waiting on the local disk for the store to answer.",
                                   registry=r)
        self.waiting_bytes = Gauge("promoter_store_waiting_bytes",
                                   "Their bytes (sizes when they were parked).", registry=r)
        self.up = Gauge("promoter_up", "1 while the daemon runs; 0 in the last write at exit.",
                        registry=r)
        self.up.set(1)
        self.store_available.set(1)

    def record(self, results: Iterable[PromoteResult], now_ns: int) -> None:
        """Count one batch's outcomes; the latency runs from the source's mtime to now. The
        counters move once a batch (a labelled child's lookup and lock a file were a burst's
        per-file cost); the histogram takes each file's latency."""
        counts: dict[str, int] = {}
        size = 0
        for r in results:
            label = _RESULTS.get(r.outcome)
            if label is None:
                continue
            counts[label] = counts.get(label, 0) + 1
            if r.outcome is Outcome.PROMOTED and r.entry is not None:
                size += r.entry.size_bytes
                if r.source_mtime_ns:
                    self.latency.observe(max(now_ns - r.source_mtime_ns, 0) / 1e9)
        for label, n in counts.items():
            self.files.labels(result=label).inc(n)
        if size:
            self.bytes.inc(size)

    def deferred(self, files: int) -> None:
        """Settled files a stop left for the next start without trying them (its budget)."""
        if files:
            self.files.labels(result="deferred").inc(files)

    def reconciled(self, finished_at: float, duration_s: float) -> None:
        self.reconcile_time.set(finished_at)
        self.reconcile_duration.set(duration_s)

    def write(self, path: str) -> None:
        """Replace `path` atomically (a temporary file beside it, then a rename)."""
        write_to_textfile(path, self.registry)
