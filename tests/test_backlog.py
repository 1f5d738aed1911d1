"""The outage backlog on its own (DESIGN §10), in-process with a probe the test controls: what
it parks, what it says once, what it releases and to whom, and that stop ends its thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from promoter import events
from promoter.backlog import MAX_GAP_MS, Backlog, probe_gap_ms
from promoter.metrics import DaemonMetrics
from promoter.s3errors import S3ConfigError, StoreUnavailable
from promoter.settle import Batch
from promoter.store import Outcome, PromoteResult
from tests.daemon_helpers import no_thread_leak, wait_until
from tests.store_helpers import make_store, write_session_file

__all__ = ["no_thread_leak"]


@pytest.fixture(autouse=True)
def _threads(no_thread_leak: None) -> None:
    """Every backlog thread here is stopped and joined."""


class Switch:
    """The store the probe asks: down until `up()`; counts the probes."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.error: Exception = StoreUnavailable("store unavailable: bucket 'b' (connection)")

    def probe(self) -> None:
        self.calls += 1
        if self.down:
            raise self.error


class Sink:
    """Records what the backlog releases, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def offer(self, run_id: str, filename: str, quiet: bool) -> None:
        self.calls.append(("offer", run_id, filename, str(quiet)))

    def context_changed(self, run_id: str) -> None:
        self.calls.append(("context", run_id))

    def session_gone(self, run_id: str) -> None:
        self.calls.append(("gone", run_id))


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Backlog, Switch, Sink, DaemonMetrics]]:
    """A backlog on a local store, its probe switched by the test, its release recorded."""
    switch, sink, metrics = Switch(), Sink(), DaemonMetrics()
    backlog = Backlog(make_store(tmp_path), metrics, settle_ms=1, probe=switch.probe)
    backlog.attach(sink)
    yield backlog, switch, sink, metrics
    backlog.stop()
    assert backlog.join(10)


def _gauge(metrics: DaemonMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_probe_gaps_start_at_settle_double_and_stop_at_30_s() -> None:
    """§5's backoff: settle_ms (at least 100 ms), doubling, capped at 30 s."""
    assert [probe_gap_ms(300, n) for n in range(4)] == [300, 600, 1200, 2400]
    assert probe_gap_ms(10, 0) == 100
    assert probe_gap_ms(300, 10) == MAX_GAP_MS == probe_gap_ms(300, 10_000)


def test_an_outage_is_said_once_and_parks_paths_with_their_sizes(
        tmp_path: Path, parts: tuple[Backlog, Switch, Sink, DaemonMetrics]) -> None:
    """went_down twice is one store.unavailable; batches then park as paths and sizes (the
    metrics, STATUS= and the sweeper's busy test see them), chores included."""
    backlog, _, _, metrics = parts
    write_session_file(tmp_path, "r1", "a.txt", b"12345")
    write_session_file(tmp_path, "r1", "b.txt", b"123")
    assert not backlog.hold(Batch("r1", ("a.txt",)))  # up: nothing is held
    with structlog.testing.capture_logs() as logs:
        backlog.went_down(StoreUnavailable("store unavailable: bucket 'b' (HTTP 503)"))
        backlog.went_down(StoreUnavailable("again"))
        assert backlog.hold(Batch("r1", ("a.txt", "b.txt"), context=True))
        assert backlog.hold(Batch("r1", ("a.txt",)))  # the same path twice is one file
    said = [e for e in logs if e["event"] == events.STORE_UNAVAILABLE]
    assert len(said) == 1 and "HTTP 503" in said[0]["reason"]
    assert backlog.waiting() == (2, 8) and backlog.holds("r1") and not backlog.holds("r2")
    assert _gauge(metrics, "promoter_store_waiting_files") == 2
    assert _gauge(metrics, "promoter_store_waiting_bytes") == 8
    assert _gauge(metrics, "promoter_store_available") == 0
    assert "2 files (8 B) waiting" in backlog.status()


def test_failed_copies_are_parked_only_when_a_probe_says_the_store_is_down(
        tmp_path: Path, parts: tuple[Backlog, Switch, Sink, DaemonMetrics]) -> None:
    """A failure while the store answers is the file's: retried as before. One the probe
    explains parks the failed files, not those that changed during their copy."""
    backlog, switch, _, _ = parts
    for name in ("a.txt", "b.txt", "c.txt"):
        write_session_file(tmp_path, "r1", name, b"x")
    results = [PromoteResult("r1", "a.txt", Outcome.FAILED, "disk full"),
               PromoteResult("r1", "b.txt", Outcome.CHANGED),
               PromoteResult("r1", "c.txt", Outcome.PROMOTED)]
    retry = frozenset({"a.txt", "b.txt"})
    switch.down = False
    assert backlog.explain("r1", results, retry) == retry and backlog.available()
    switch.down = True
    assert backlog.explain("r1", results, retry) == {"b.txt"}
    assert not backlog.available() and backlog.waiting() == (1, 1)
    assert backlog.explain("r1", results[1:], frozenset({"b.txt"})) == {"b.txt"}
    assert switch.calls == 2  # once down, no more probes from the workers


def test_refused_credentials_mid_run_are_waited_out_too(
        parts: tuple[Backlog, Switch, Sink, DaemonMetrics]) -> None:
    """A probe refused for its credentials (keys rotated under a running daemon) is an
    outage to wait out, never the daemon's end."""
    backlog, switch, _, _ = parts
    switch.error = S3ConfigError("credentials refused by bucket 'b'")
    result = PromoteResult("r1", "a.txt", Outcome.FAILED, "refused")
    assert backlog.explain("r1", [result], frozenset({"a.txt"})) == frozenset()
    assert not backlog.available()


def test_back_up_releases_every_parked_file_and_logs_the_removed_as_lost(
        tmp_path: Path, parts: tuple[Backlog, Switch, Sink, DaemonMetrics]) -> None:
    """The probe passes: one store.available with the backlog, chores first, each file
    still in its session offered as settled, each removed one artifact.lost; callbacks run."""
    backlog, switch, sink, metrics = parts
    kicked = threading.Event()
    backlog.on_available.append(kicked.set)
    write_session_file(tmp_path, "r1", "keep.txt", b"kept")
    gone = write_session_file(tmp_path, "r1", "gone.txt", b"removed")
    backlog.went_down(StoreUnavailable("down"))
    backlog.hold(Batch("r1", ("keep.txt", "gone.txt"), completed=True))
    gone.unlink()
    with structlog.testing.capture_logs() as logs:
        backlog.start()
        wait_until(lambda: switch.calls >= 2, 10, what="probes while down")
        switch.down = False
        assert kicked.wait(10)
    back = [e for e in logs if e["event"] == events.STORE_AVAILABLE]
    assert len(back) == 1
    assert back[0]["files"] == 2 and back[0]["size_bytes"] == 11 and back[0]["lost"] == 1
    assert [(e["run_id"], e["filename"]) for e in logs if e["event"] == events.ARTIFACT_LOST] \
        == [("r1", "gone.txt")]
    assert sink.calls == [("gone", "r1"), ("offer", "r1", "keep.txt", "True")]
    assert backlog.available() and backlog.waiting() == (0, 0)
    assert _gauge(metrics, "promoter_store_available") == 1
    lost = metrics.registry.get_sample_value("promoter_files_total", {"result": "lost"})
    assert lost == 1


def test_the_start_ups_preparation_is_what_the_first_probes_retry(
        parts: tuple[Backlog, Switch, Sink, DaemonMetrics]) -> None:
    """Down at start: the probes run the owed preparation until it passes, then plain probes."""
    backlog, switch, _, _ = parts
    prepared: list[int] = []

    def reopen() -> None:
        switch.probe()
        prepared.append(1)

    backlog.went_down(StoreUnavailable("down at start"), reopen=reopen)
    backlog.start()
    wait_until(lambda: switch.calls >= 1, 10, what="a first try")
    switch.down = False
    wait_until(backlog.available, 10, what="the store back")
    assert prepared == [1]


def test_stopped_during_an_outage_it_says_what_waits_in_one_line(
        tmp_path: Path, parts: tuple[Backlog, Switch, Sink, DaemonMetrics]) -> None:
    """leave(): files still in their sessions are summed up for the next start's catch-up;
    removed ones are artifact.lost. The thread ends at stop whatever it waits for."""
    backlog, _, _, _ = parts
    write_session_file(tmp_path, "r1", "a.txt", b"abc")
    gone = write_session_file(tmp_path, "r1", "b.txt", b"de")
    backlog.went_down(StoreUnavailable("down"))
    backlog.hold(Batch("r1", ("a.txt", "b.txt")))
    backlog.start()
    gone.unlink()
    with structlog.testing.capture_logs() as logs:
        backlog.stop()
        assert backlog.join(10)
        backlog.leave()
    left = [e for e in logs if e["event"] == events.STORE_BACKLOG_DEFERRED]
    assert len(left) == 1 and left[0]["files"] == 1 and left[0]["size_bytes"] == 3
    assert [e["filename"] for e in logs if e["event"] == events.ARTIFACT_LOST] == ["b.txt"]
