"""The daemon's Prometheus figures: counted by result, rendered atomically to a text file."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from promoter.metadata import ArtifactEntry
from promoter.metrics import DaemonMetrics
from promoter.store import Outcome, PromoteResult


def result(outcome: Outcome, size: int = 10, mtime_ns: int = 0) -> PromoteResult:
    entry = None
    if outcome is Outcome.PROMOTED:
        entry = ArtifactEntry.model_validate({
            "filename": "a", "path": "files/a", "agent_id": "x",
            "generated_at": "2026-01-01T00:00:00Z", "size_bytes": size,
            "content_type": "text/plain", "sha256": None})
    return PromoteResult("r", "a", outcome, entry=entry, source_mtime_ns=mtime_ns)


def samples(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_outcomes_are_counted_by_result(tmp_path: Path) -> None:
    """promoted, rejected, failed and lost each have their label; other outcomes are not
    files_total events; promoted bytes add up."""
    m = DaemonMetrics()
    m.record([result(Outcome.PROMOTED, 100), result(Outcome.PROMOTED, 23),
              result(Outcome.REJECTED), result(Outcome.FAILED), result(Outcome.LOST),
              result(Outcome.UNCHANGED), result(Outcome.CHANGED), result(Outcome.SKIPPED)],
             now_ns=0)
    path = tmp_path / "p.prom"
    m.write(str(path))
    got = samples(path)
    assert got['promoter_files_total{result="promoted"}'] == 2
    for label in ("rejected", "failed", "lost"):
        assert got[f'promoter_files_total{{result="{label}"}}'] == 1
    assert got["promoter_promoted_bytes_total"] == 123
    assert got['promoter_files_total{result="deferred"}'] == 0


def test_files_a_stop_left_are_counted_deferred(tmp_path: Path) -> None:
    """Copies a stop gave up (their outcome) and settled files its budget never reached
    (`deferred()`) share one label."""
    m = DaemonMetrics()
    m.record([result(Outcome.DEFERRED), result(Outcome.PROMOTED, 1)], now_ns=0)
    m.deferred(40)
    m.deferred(0)
    path = tmp_path / "p.prom"
    m.write(str(path))
    assert samples(path)['promoter_files_total{result="deferred"}'] == 41


def test_latency_runs_from_the_files_last_change(tmp_path: Path) -> None:
    """The histogram observes now minus the source's mtime."""
    m = DaemonMetrics()
    m.record([result(Outcome.PROMOTED, mtime_ns=1_000_000_000)], now_ns=1_300_000_000)
    path = tmp_path / "p.prom"
    m.write(str(path))
    got = samples(path)
    assert got["promoter_promotion_latency_seconds_count"] == 1
    assert got["promoter_promotion_latency_seconds_sum"] == pytest.approx(0.3)
    assert got['promoter_promotion_latency_seconds_bucket{le="0.2"}'] == 0
    assert got['promoter_promotion_latency_seconds_bucket{le="0.35"}'] == 1


def test_every_figure_is_in_the_file(tmp_path: Path) -> None:
    """Queue, runs watched, overflows, reconcile time and duration and runs expired appear."""
    m = DaemonMetrics()
    m.queue.set(7)
    m.runs_watched.set(3)
    m.overflows.inc()
    m.expired.inc(2)
    m.reconciled(1_700_000_000.0, 0.25)
    path = tmp_path / "p.prom"
    m.write(str(path))
    got = samples(path)
    assert got["promoter_queue_files"] == 7
    assert got["promoter_runs_watched"] == 3
    assert got["promoter_watch_overflows_total"] == 1
    assert got["promoter_runs_expired_total"] == 2
    assert got["promoter_last_reconcile_timestamp_seconds"] == 1_700_000_000.0
    assert got["promoter_last_reconcile_duration_seconds"] == 0.25
    assert got["promoter_up"] == 1


def test_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    """Each write replaces the file by a rename and leaves no temporary behind."""
    m = DaemonMetrics()
    path = tmp_path / "p.prom"
    m.write(str(path))
    first = path.stat().st_ino
    m.queue.set(1)
    m.write(str(path))
    assert path.stat().st_ino != first
    assert [p.name for p in tmp_path.iterdir()] == ["p.prom"]


def test_a_registry_of_its_own(tmp_path: Path) -> None:
    """Two daemons' metrics never mix, and the global registry stays untouched."""
    a, b = DaemonMetrics(), DaemonMetrics()
    a.record([result(Outcome.PROMOTED)], now_ns=0)
    b.write(str(tmp_path / "b.prom"))
    assert samples(tmp_path / "b.prom")['promoter_files_total{result="promoted"}'] == 0
    assert REGISTRY.get_sample_value("promoter_files_total", {"result": "promoted"}) is None


def test_an_unwritable_path_raises_oserror(tmp_path: Path) -> None:
    """A missing folder is an OSError for the caller to log (the daemon goes on)."""
    with pytest.raises(OSError):
        DaemonMetrics().write(str(tmp_path / "missing" / "p.prom"))
