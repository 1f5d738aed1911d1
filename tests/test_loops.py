"""The catch-up and sweeper loops on their own (no daemon process): what wakes them, what
they hand on, and that stop ends them at once whatever they wait for."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from promoter import events, loops
from promoter.config import Config
from promoter.loops import CatchUp, Sweeper
from promoter.metrics import DaemonMetrics
from promoter.reconcile import Rejections
from promoter.sweep import SweepReport
from tests.daemon_helpers import no_thread_leak, wait_until
from tests.store_helpers import make_store, write_session_file

__all__ = ["no_thread_leak"]


@pytest.fixture(autouse=True)
def _threads(no_thread_leak: None) -> None:
    """Every loop here is stopped and joined: no thread may outlive its test."""


class FakePipeline:
    """Records what the catch-up hands on."""

    def __init__(self) -> None:
        self.offered: list[tuple[str, str, bool]] = []
        self.promoted = 0

    def offer(self, run_id: str, filename: str, quiet: bool) -> None:
        self.offered.append((run_id, filename, quiet))

    def add_promoted(self, count: int) -> None:
        self.promoted += count


def _catchup(tmp_path: Path, rescan_s: float = 0) -> tuple[CatchUp, FakePipeline,
                                                             threading.Event]:
    store = make_store(tmp_path, watch={"rescan_interval_s": rescan_s, "settle_ms": 50})
    pipeline = FakePipeline()
    stop = threading.Event()
    catchup = CatchUp(store, pipeline, DaemonMetrics(), Rejections(), stop,  # type: ignore[arg-type]
                      lambda: store.config)
    return catchup, pipeline, stop


def test_catchup_promotes_at_start_then_offers_what_a_request_finds(tmp_path: Path) -> None:
    """The start-up pass promotes what is there; a request offers a new file to the pipeline."""
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    catchup, pipeline, _ = _catchup(tmp_path)
    catchup.start(lambda: frozenset())
    try:
        assert catchup.started.wait(20)
        assert pipeline.promoted == 1
        write_session_file(tmp_path, "r1", "b.txt", b"beta")
        catchup.request(frozenset({"r1"}), "test")
        wait_until(lambda: pipeline.offered, timeout=20, what="b.txt offered")
        assert [o[:2] for o in pipeline.offered] == [("r1", "b.txt")]
    finally:
        catchup.stop()
        assert catchup.join(10)
    assert not catchup.is_alive()


def test_catchup_scans_unwatched_runs_on_its_own(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the watcher names degraded are caught up every DEGRADED_RESCAN_S unasked."""
    monkeypatch.setattr(loops, "DEGRADED_RESCAN_S", 0.05)
    catchup, pipeline, _ = _catchup(tmp_path)
    catchup.start(lambda: frozenset({"r1"}))
    try:
        assert catchup.started.wait(20)
        write_session_file(tmp_path, "r1", "late.txt", b"late")
        catchup.kick()  # the first wait has no timer yet: one pass arms it
        wait_until(lambda: pipeline.offered, timeout=20, what="late.txt offered")
        assert pipeline.offered[0][:2] == ("r1", "late.txt")
    finally:
        catchup.stop()
        assert catchup.join(10)


def _sweeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             sweep: Any) -> tuple[Sweeper, threading.Event, Config]:
    store = make_store(tmp_path, retention={"sweep_interval_s": 3600})
    monkeypatch.setattr(loops, "sweep", sweep)
    stop = threading.Event()
    return Sweeper(store, lambda run_id: False, DaemonMetrics(), stop,
                   lambda: store.config), stop, store.config


def test_over_budget_sweeps_at_once_and_stop_cuts_the_gap(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A write over the ceiling sweeps now, not at the hourly interval; stop ends the
    one-second gap after a budget pass at once."""
    passes: list[float] = []
    swept = threading.Event()

    def recording(store: Any, busy: Any) -> SweepReport:
        passes.append(time.monotonic())
        swept.set()
        return SweepReport()

    sweeper, _, _ = _sweeper(tmp_path, monkeypatch, recording)
    sweeper.start()
    try:
        sweeper.over_budget()
        assert swept.wait(10)
    finally:
        stopped_at = time.monotonic()
        sweeper.stop()
        assert sweeper.join(10)
    assert time.monotonic() - stopped_at < loops.BUDGET_GAP_S  # not after the gap
    assert len(passes) == 1


def test_a_failing_sweep_is_logged_and_the_sweeper_goes_on(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in a pass is one sweep.error line; the next kick sweeps again."""
    calls: list[int] = []

    def failing(store: Any, busy: Any) -> SweepReport:
        calls.append(1)
        raise OSError("disk gone")

    sweeper, _, _ = _sweeper(tmp_path, monkeypatch, failing)
    sweeper.start()
    try:
        with structlog.testing.capture_logs() as logs:
            sweeper.over_budget()
            wait_until(lambda: calls, timeout=10, what="first pass")
            wait_until(lambda: any(e["event"] == events.SWEEP_ERROR for e in logs),
                       timeout=10, what="sweep.error")
        assert sweeper.is_alive()
        sweeper.over_budget()
        wait_until(lambda: len(calls) == 2, timeout=10, what="second pass")
    finally:
        sweeper.stop()
        assert sweeper.join(10)


def test_a_failed_start_up_pass_is_made_again_soon(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors at start: one plain line (no traceback), and the files the pass
    missed are offered by a pass made DEGRADED_RESCAN_S later, though rescans are off."""
    import errno

    monkeypatch.setattr(loops, "DEGRADED_RESCAN_S", 0.05)

    def out_of_descriptors(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(loops, "reconcile", out_of_descriptors)
    write_session_file(tmp_path, "r1", "waiting.txt", b"w")
    catchup, pipeline, _ = _catchup(tmp_path)
    with structlog.testing.capture_logs() as logs:
        catchup.start(lambda: frozenset())
        try:
            assert catchup.started.wait(20)
            wait_until(lambda: pipeline.offered, timeout=20, what="waiting.txt offered")
        finally:
            catchup.stop()
            assert catchup.join(10)
    assert pipeline.offered[0][:2] == ("r1", "waiting.txt")
    [failed] = [e for e in logs if e["event"] == events.RECONCILE_FAILED]
    assert failed["reason"] == ("out of file descriptors (Too many open files): raise the "
                                "daemon's limit (LimitNOFILE=)")
    assert failed["exc_info"] is False
