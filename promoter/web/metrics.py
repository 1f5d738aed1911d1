"""The server's own Prometheus figures (DESIGN §7 `GET /metrics`).

A registry per app (no process-wide globals, so tests build as many apps as
they like): requests by route and status, latency by route, and what the
store holds, computed when scraped from the store's cached metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from promoter.errors import PromoterError
from promoter.store import Store

if TYPE_CHECKING:
    from promoter.web.listing import RunSource

__all__ = ["HttpMetrics"]

_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


class _StoreCollector(Collector):
    """Runs, artifacts and bytes in the store and the library, counted at scrape time."""

    def __init__(self, store: Store, runs: RunSource) -> None:
        self.store = store
        self.runs = runs

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape: nothing to collect at registration

    def collect(self) -> Iterator[Metric]:
        try:
            runs = self.runs.list_runs()
            library = self.store.library.list()
        except PromoterError:
            return  # the store is unusable: /healthz says so; omit the figures
        yield GaugeMetricFamily("promoter_store_runs", "Runs in the artifact store.",
                                value=len(runs))
        yield GaugeMetricFamily("promoter_store_artifacts", "Artifacts in the artifact store.",
                                value=sum(len(m.artifacts) for m in runs))
        yield GaugeMetricFamily("promoter_store_bytes", "Bytes of artifacts in the store.",
                                value=sum(m.total_bytes for m in runs))
        yield GaugeMetricFamily("promoter_store_kept_runs", "Runs pinned with keep.",
                                value=sum(1 for m in runs if m.keep))
        yield GaugeMetricFamily("promoter_library_files", "Files in the library.",
                                value=len(library))
        yield GaugeMetricFamily("promoter_library_bytes", "Bytes of files in the library.",
                                value=sum(f.size_bytes for f in library))


class HttpMetrics:
    """The registry `/metrics` serves and the instruments the request observer feeds."""

    def __init__(self, store: Store, runs: RunSource | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "promoter_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "promoter_http_request_duration_seconds",
            "Time from the request to the end of its answer, by route template.",
            ["method", "route"], buckets=_BUCKETS, registry=self.registry)
        self.registry.register(_StoreCollector(store, runs if runs is not None else store))
        self.event_clients = Gauge("promoter_http_event_clients",
                                   "Clients connected to GET /runtime/events.",
                                   registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
