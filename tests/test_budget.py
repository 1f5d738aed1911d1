"""The store's ceiling, retention.max_store_bytes (DESIGN §4): pure rule, sweep, daemon, CLI."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from promoter.budget import StoreTotal, select_victims
from promoter.cli import main
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.sweep import sweep
from tests.daemon_helpers import base_config, start_daemon, wait_until, write
from tests.store_helpers import FakeClock, make_store, write_session_file

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _meta(run_id: str, minutes: int, size: int, keep: bool = False,
          status: str = "completed") -> RunMetadata:
    at = T0 + timedelta(minutes=minutes)
    entry = ArtifactEntry(filename="a", path="files/a", generated_at=at, size_bytes=size)
    return RunMetadata.model_validate({
        "run_id": run_id, "created_at": at, "updated_at": at, "expires_at": at + timedelta(days=7),
        "keep": keep, "status": status, "artifacts": [entry.model_dump()]})


def test_victims_oldest_first_ties_by_run_id_until_under() -> None:
    """Oldest created_at goes first, a tie is broken by run id, and it stops once under."""
    runs = [_meta("c", 1, 10), _meta("b", 0, 10), _meta("a", 0, 10), _meta("d", 2, 10)]
    assert [m.run_id for m in select_victims(runs, 25)] == ["a", "b"]
    assert [m.run_id for m in select_victims(runs, 40)] == []
    assert [m.run_id for m in select_victims(runs, 0)] == []  # 0: no ceiling


def test_victims_never_kept_active_or_busy() -> None:
    """Kept, active and busy runs are passed over, even when they are the oldest."""
    runs = [_meta("kept", 0, 10, keep=True), _meta("live", 1, 10, status="active"),
            _meta("busy", 2, 10), _meta("old", 3, 10), _meta("new", 4, 10)]
    picked = select_victims(runs, 15, busy=lambda r: r == "busy")
    assert [m.run_id for m in picked] == ["old", "new"]


def test_store_total_is_incremental() -> None:
    """set replaces a run's figure, drop removes it, reset recounts from metadata."""
    total = StoreTotal()
    assert total.set("a", 10) == 10 and total.set("b", 5) == 15 and total.set("a", 3) == 8
    assert total.drop("a") == 5 and total.drop("missing") == 5
    assert total.reset([_meta("x", 0, 7), _meta("y", 0, 2)]) == 9


def _promote(store_root: Path, store: object, run_id: str, size: int, done: bool = True) -> None:
    if done:
        (store_root / "sessions" / run_id).mkdir(parents=True, exist_ok=True)
        (store_root / "sessions" / run_id / "run.json").write_text('{"status": "completed"}')
    write_session_file(store_root, run_id, "f.bin", b"x" * size)
    store.promote_files(run_id, ["f.bin"])  # type: ignore[attr-defined]


def test_sweep_expires_for_budget_and_says_over_once(tmp_path: Path) -> None:
    """Sweep expires the oldest finished unkept runs (tombstone, run.expired reason budget);
    when only kept/active runs remain over, store.over_budget is logged once."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock, retention={"max_store_bytes": 150})
    for run in ["kept", "r1", "r2", "live", "r3"]:
        clock.advance(minutes=1)
        _promote(tmp_path, store, run, 100, done=run != "live")
    store.set_keep("kept", True)
    assert store.total.total == 500
    assert sweep(store, dry_run=True).budget == ["r1", "r2", "r3"]
    assert sorted(store.run_ids()) == ["kept", "live", "r1", "r2", "r3"]
    with structlog.testing.capture_logs() as logs:
        report = sweep(store)
        again = sweep(store)
    assert report.budget == ["r1", "r2", "r3"] and report.expired == ["r1", "r2", "r3"]
    assert again.budget == []
    assert sorted(store.run_ids()) == ["kept", "live"]
    assert json.loads((tmp_path / "artifacts/.tombstones/r1").read_text())["reason"] == "expired"
    expired = [e for e in logs if e["event"] == "run.expired"]
    assert [(e["run_id"], e["reason"]) for e in expired] == [
        ("r1", "budget"), ("r2", "budget"), ("r3", "budget")]
    over = [e for e in logs if e["event"] == "store.over_budget"]
    assert len(over) == 1
    assert over[0]["total_bytes"] == 200 and over[0]["kept_bytes"] == 100
    assert over[0]["active_bytes"] == 100 and over[0]["max_store_bytes"] == 150
    assert store.total.total == 200


def test_budget_stops_once_under(tmp_path: Path) -> None:
    """Only as many runs go as bring the store to or under the ceiling; none without a ceiling."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock, retention={"max_store_bytes": 200})
    for run in ("a", "b", "c"):
        clock.advance(minutes=1)
        _promote(tmp_path, store, run, 100)
    assert sweep(store).budget == ["a"]
    assert sorted(store.run_ids()) == ["b", "c"]
    plain = make_store(tmp_path, clock)
    _promote(tmp_path, plain, "d", 1000)
    assert sweep(plain).expired == []


def test_budget_skips_a_run_kept_after_it_was_chosen(tmp_path: Path) -> None:
    """A keep that lands between listing and deletion wins (checked again under the lock)."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock, retention={"max_store_bytes": 10})
    _promote(tmp_path, store, "a", 100)
    other = make_store(tmp_path, clock, retention={"max_store_bytes": 10})
    other.set_keep("a", True)
    with pytest.raises(Exception, match="kept or active"):
        store.delete_run("a", reason="budget")
    assert store.run_ids() == ["a"]


def test_a_run_that_finishes_during_the_sweep_is_no_reason_to_say_over_budget(
        tmp_path: Path) -> None:
    """A run passed over as busy, finished by the time the sweep is done, is one to sweep
    again (busy), never store.over_budget: the daemon once said it during a burst."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock, retention={"max_store_bytes": 150})
    for run in ["kept", "r1", "r2"]:
        clock.advance(minutes=1)
        _promote(tmp_path, store, run, 100)
    store.set_keep("kept", True)
    asked: list[str] = []

    def busy_once(run_id: str) -> bool:  # each run is being promoted when first asked only
        asked.append(run_id)
        return asked.count(run_id) == 1

    with structlog.testing.capture_logs() as logs:
        report = sweep(store, busy=busy_once)
    assert report.budget == [] and sorted(report.skipped_busy) == ["r1", "r2"]
    assert not [e for e in logs if e["event"] == "store.over_budget"]
    assert sweep(store, busy=lambda r: False).budget == ["r1", "r2"]


def test_ls_shows_total_beside_ceiling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`promoter ls` ends with the store's total and its ceiling (or says there is none)."""
    store = make_store(tmp_path)
    _promote(tmp_path, store, "r1", 2048)
    assert main(["ls", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "store: 2 KiB (no ceiling), 1 run(s)"
    os.environ["PROMOTER_RETENTION__MAX_STORE_BYTES"] = str(1 << 30)
    try:
        assert main(["ls", "--root", str(tmp_path)]) == 0
    finally:
        del os.environ["PROMOTER_RETENTION__MAX_STORE_BYTES"]
    assert capsys.readouterr().out.splitlines()[-1] == "store: 2 KiB of 1 GiB ceiling, 1 run(s)"


def _walk_bytes(artifacts: Path) -> int:
    return sum(p.stat().st_size for p in artifacts.glob("*/files/**/*") if p.is_file())


def _metric(path: Path, name: str) -> float | None:
    try:
        found = re.search(rf"^{name} (\S+)$", path.read_text(), re.M)
    except FileNotFoundError:
        return None
    return float(found.group(1)) if found else None


def test_daemon_burst_crosses_ceiling_kept_and_active_survive(tmp_path: Path) -> None:
    """A burst over the ceiling is swept at once (not at the hourly timer): oldest finished
    runs go, kept and active stay; after a restart the store's figure equals a fresh walk."""
    root = tmp_path / "root"
    metrics = tmp_path / "m.prom"
    cfg = base_config(retention={"max_store_bytes": 5000},
                      metrics={"textfile": str(metrics), "interval_s": 0.2})
    daemon = start_daemon(root, cfg)
    try:
        daemon.wait_ready()
        write(root / "sessions/kept/output/k.bin", b"k" * 2000)
        daemon.wait_entry("kept", "k.bin")
        assert main(["keep", "kept", "--root", str(root)]) == 0
        write(root / "sessions/live/output/l.bin", b"l" * 2000)  # no run.json: stays active
        daemon.wait_entry("live", "l.bin")
        for i in range(6):  # the burst: 6 finished runs of 1000 bytes
            write(root / f"sessions/b{i}/run.json", '{"status": "completed"}')
            write(root / f"sessions/b{i}/output/f.bin", b"b" * 1000)
        wait_until(lambda: len(daemon.events("run.expired", reason="budget")) >= 5, timeout=20,
                   what="budget expiries")
        left = wait_until(lambda: sorted(p.name for p in (root / "artifacts").iterdir()
                                         if not p.name.startswith(".")) or None)
        assert "kept" in left and "live" in left
        wait_until(lambda: _walk_bytes(root / "artifacts") <= 5000, timeout=10,
                   what="store under the ceiling")
        for event in daemon.events("run.expired", reason="budget"):
            assert event["run_id"].startswith("b")
            assert (root / "artifacts/.tombstones" / event["run_id"]).exists()
        assert not daemon.events("store.over_budget")
    finally:
        assert daemon.stop() == 0
    walked = _walk_bytes(root / "artifacts")
    metrics.unlink()
    again = start_daemon(root, cfg)
    try:
        again.wait_ready()
        figure = wait_until(lambda: _metric(metrics, "promoter_store_bytes"), timeout=10,
                            what="the store metric")
        assert figure == walked
        assert _metric(metrics, "promoter_store_max_bytes") == 5000
    finally:
        assert again.stop() == 0
