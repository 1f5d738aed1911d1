"""Catch-up promotes runs in parallel on `promote.workers` threads (issue 12: on an object
store one run at a time left the store idle between uploads)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import structlog

from promoter import events
from promoter.errors import StoreIOError
from promoter.reconcile import reconcile
from promoter.store import Store
from tests.store_helpers import make_store, write_session_file

BARRIER_S = 20.0  # generous: the machine is shared; a serial pass breaks it at once below


def _runs(root: Path, count: int, files: int = 2) -> None:
    for r in range(count):
        for i in range(files):
            write_session_file(root, f"r{r}", f"f{i}.txt", f"{r}-{i}".encode())


def test_runs_are_promoted_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two workers, two runs' promotions are in flight at once; every file lands."""
    store = make_store(tmp_path, promote={"workers": 2})
    _runs(tmp_path, 2)
    both = threading.Barrier(2, timeout=BARRIER_S)
    original = Store.promote_files

    def meet(self: Store, run_id: str, names: list[str]) -> object:
        both.wait()  # raises BrokenBarrierError unless the other run is in flight too
        return original(self, run_id, names)

    monkeypatch.setattr(Store, "promote_files", meet)
    report = reconcile(store)
    assert report.summary()["promoted"] == 4
    assert not both.broken
    assert {a.filename for a in store.get_run("r0").artifacts} == {"f0.txt", "f1.txt"}
    assert {a.filename for a in store.get_run("r1").artifacts} == {"f0.txt", "f1.txt"}


def test_one_worker_promotes_one_run_at_a_time(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`promote.workers = 1` keeps the catch-up serial, in the calling thread."""
    store = make_store(tmp_path, promote={"workers": 1})
    _runs(tmp_path, 4)
    caller = threading.current_thread()
    seen: list[threading.Thread] = []
    original = Store.promote_files

    def record(self: Store, run_id: str, names: list[str]) -> object:
        seen.append(threading.current_thread())
        return original(self, run_id, names)

    monkeypatch.setattr(Store, "promote_files", record)
    assert reconcile(store).summary()["promoted"] == 8
    assert seen == [caller] * 4


def test_results_keep_the_run_order_and_one_failing_run_spares_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose promotion raises is logged (reconcile.failed) and its files count as
    failed; the rest land, and progress is reported in the order the runs were found."""
    store = make_store(tmp_path, promote={"workers": 3})
    _runs(tmp_path, 5, files=1)
    original = Store.promote_files

    def flaky(self: Store, run_id: str, names: list[str]) -> object:
        if run_id == "r2":
            raise RuntimeError("surprise")
        return original(self, run_id, names)

    monkeypatch.setattr(Store, "promote_files", flaky)
    progress: list[int] = []
    with structlog.testing.capture_logs() as logs:
        report = reconcile(store, max_rounds=1,
                           progress=lambda done, found, _bytes: progress.append(done))
    assert sorted(run for run, _ in report.outcomes) == ["r0", "r1", "r2", "r3", "r4"]
    assert [r.run_id for r in report.left()] == ["r2"]
    assert list(dict.fromkeys(progress)) == [1, 2, 3, 4, 5]  # (the wait repeats the last)
    failed = [e for e in logs if e["event"] == events.RECONCILE_FAILED]
    assert [(e["run_id"], e["reason"]) for e in failed] == [("r2", "RuntimeError: surprise")]


def test_a_store_failure_ends_the_pass_after_the_runs_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """StoreIOError in one run is raised once the run in flight beside it finished; every run
    that started finished, the ones not started left nothing, and no thread is left behind
    (conftest checks)."""
    store = make_store(tmp_path, promote={"workers": 2})
    _runs(tmp_path, 6, files=1)
    started: list[str] = []
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=BARRIER_S)
    original = Store.promote_files

    def broken(self: Store, run_id: str, names: list[str]) -> object:
        with lock:
            started.append(run_id)
            order = len(started)
        if order <= 2:
            both.wait()  # the first two runs in flight together
        if order == 1:
            raise StoreIOError("the store is gone")
        return original(self, run_id, names)

    monkeypatch.setattr(Store, "promote_files", broken)
    with pytest.raises(StoreIOError, match="the store is gone"):
        reconcile(store)
    assert not both.broken
    assert set(store.run_ids()) == set(started[1:])  # finished, or never started
    assert started[1] in store.run_ids()
