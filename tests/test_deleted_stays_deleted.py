"""Deleted stays deleted (DESIGN §1): over HTTP, by `promoter rm` and by the sweeper.

A deleted run (or a removed artifact) does not come back from a session folder
that still exists, through `promoter reconcile` or a daemon restart; a file
written after the deletion does, as a fresh run.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promoter.cli import main
from promoter.clock import parse_time
from promoter.config import load_config
from promoter.store import Store
from tests.daemon_helpers import base_config, start_daemon, wait_until, write
from tests.web_helpers import CSRF, FakeClock, client_for, populate, write_session_file

WAYS = ["http", "rm", "sweeper"]


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nroot = "{tmp_path / "root"}"\n[watch]\nsettle_ms = 0\n')
    return path


def _old_run(cfg: Path, run_id: str) -> None:
    """A run created a month ago (so the sweeper finds it expired) whose session still exists."""
    root = cfg.parent / "root"
    config = load_config(cfg, env={})
    store = Store(config, clock=FakeClock(datetime.now(UTC) - timedelta(days=30)))
    store.ensure_folders()
    populate(store, root, run_id, {"a.txt": b"first", "plots/b.png": b"png"}, age_s=60)


def _delete(cfg: Path, run_id: str, way: str) -> None:
    if way == "http":
        store = Store(load_config(cfg, env={}))
        r = client_for(store).delete(f"/runtime/artifacts/{run_id}", headers=CSRF)
        assert r.status_code == 204
    elif way == "rm":
        assert main(["rm", run_id, "--config", str(cfg)]) == 0
    else:
        assert main(["sweep", "--config", str(cfg)]) == 0


def _tombstone(cfg: Path, run_id: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(
        (cfg.parent / "root" / "artifacts" / ".tombstones" / run_id).read_text())
    return data


def _write_after(root: Path, run_id: str, name: str, deleted_at: datetime) -> None:
    """A file written after the deletion. File times come from the kernel's coarse clock
    (they can trail a fine-grained reading by a few ms), so the test states 'after'
    explicitly: 1 ms past deleted_at when the kernel stamped it earlier."""
    path = write_session_file(root, run_id, name, b"late", age_s=0)
    floor = int(deleted_at.timestamp() * 1e9) + 1_000_000
    if path.stat().st_mtime_ns <= floor:
        os.utime(path, ns=(floor, floor))


@pytest.mark.parametrize("way", WAYS)
def test_a_deleted_run_does_not_come_back_on_reconcile(tmp_path: Path, way: str) -> None:
    """After deletion (HTTP, rm, sweeper), `promoter reconcile` leaves the run deleted while its
    session exists; a file written after the deletion starts the run afresh, alone."""
    cfg = _config_file(tmp_path)
    root = tmp_path / "root"
    _old_run(cfg, "gone-1")
    _delete(cfg, "gone-1", way)
    tomb = _tombstone(cfg, "gone-1")
    assert tomb["reason"] == ("expired" if way == "sweeper" else "rm")
    assert (root / "sessions" / "gone-1" / "output" / "a.txt").exists()

    assert main(["reconcile", "--config", str(cfg)]) == 0
    assert not (root / "artifacts" / "gone-1").exists()
    assert main(["reconcile", "--config", str(cfg)]) == 0  # and again: a rescan changes nothing
    assert not (root / "artifacts" / "gone-1").exists()

    deleted_at = parse_time(tomb["deleted_at"])
    _write_after(root, "gone-1", "late.txt", deleted_at)
    assert main(["reconcile", "--config", str(cfg)]) == 0
    meta = json.loads((root / "artifacts" / "gone-1" / "metadata.json").read_text())
    assert [a["filename"] for a in meta["artifacts"]] == ["late.txt"]
    assert parse_time(meta["created_at"]) > deleted_at


def test_a_removed_artifact_does_not_come_back_until_rewritten(tmp_path: Path) -> None:
    """DELETE of one file over HTTP keeps it out of reconcile; a rewrite after brings it back."""
    cfg = _config_file(tmp_path)
    root = tmp_path / "root"
    _old_run(cfg, "run-1")
    store = Store(load_config(cfg, env={}))
    client = client_for(store)
    assert client.delete("/runtime/artifacts/run-1/files/a.txt", headers=CSRF).status_code == 204
    assert main(["reconcile", "--config", str(cfg)]) == 0
    files = {a["filename"] for a in client.get("/runtime/artifacts/run-1").json()["artifacts"]}
    assert files == {"plots/b.png"}
    removed_at = parse_time(client.get("/runtime/artifacts/run-1").json()["removed"][0]
                            ["removed_at"])
    _write_after(root, "run-1", "a.txt", removed_at)
    assert main(["reconcile", "--config", str(cfg)]) == 0
    meta = client.get("/runtime/artifacts/run-1").json()
    assert {a["filename"] for a in meta["artifacts"]} == {"a.txt", "plots/b.png"}
    assert meta["removed"] == []


@pytest.mark.slow
def test_deleted_runs_stay_deleted_across_a_daemon_start(tmp_path: Path) -> None:
    """A `promoter run` started over sessions of runs deleted three ways brings none back in its
    start-up catch-up; a file written after the deletion is promoted as a fresh run."""
    cfg = _config_file(tmp_path)
    root = tmp_path / "root"
    for way in WAYS:
        _old_run(cfg, f"gone-{way}")
    _delete(cfg, "gone-http", "http")
    _delete(cfg, "gone-rm", "rm")
    _delete(cfg, "gone-sweeper", "sweeper")  # the other two are gone already; this one expired
    assert {p.name for p in (root / "artifacts").iterdir() if not p.name.startswith(".")} == set()

    daemon = start_daemon(root, base_config(watch={"rescan_interval_s": 0.2}))
    try:
        daemon.wait_ready()
        wait_until(lambda: len(daemon.events("reconcile.finished")) >= 3,
                   what="the start-up catch-up and two rescans")
        for way in WAYS:
            assert daemon.meta(f"gone-{way}") is None, way
        deleted_at = parse_time(_tombstone(cfg, "gone-rm")["deleted_at"])
        # Written beside output/, stamped after the deletion, then renamed in (a rename
        # into output/ counts as written; it keeps the time).
        late = write(root / "sessions" / "gone-rm" / "late.txt", "late")
        floor = int(deleted_at.timestamp() * 1e9) + 1_000_000
        os.utime(late, ns=(max(floor, late.stat().st_mtime_ns),) * 2)
        late.rename(root / "sessions" / "gone-rm" / "output" / "late.txt")
        daemon.wait_entry("gone-rm", "late.txt")
        meta = daemon.meta("gone-rm")
        assert meta is not None
        assert [a["filename"] for a in meta["artifacts"]] == ["late.txt"]
        assert daemon.meta("gone-http") is None
        assert daemon.meta("gone-sweeper") is None
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_the_web_sweep_keeps_tombstones_whatever_it_sees_of_sessions(tmp_path: Path) -> None:
    """promoter-web does not look at sessions/ (its unit makes them inaccessible; the compose
    example mounts an empty tmpfs over them): its sweep keeps every tombstone, or the next
    reconcile would resurrect the runs. The daemon's side (`promoter sweep`) drops a tombstone
    once the session is really gone."""
    cfg = _config_file(tmp_path)
    root = tmp_path / "root"
    _old_run(cfg, "gone-1")
    _delete(cfg, "gone-1", "rm")
    tombstone = root / "artifacts" / ".tombstones" / "gone-1"
    empty = tmp_path / "empty-tmpfs"
    empty.mkdir()
    for sessions in ("/nonexistent", str(empty), str(root / "sessions")):
        web = Store(load_config(cfg, env={"PROMOTER_STORAGE__SESSIONS": f'"{sessions}"'}))
        r = client_for(web).post("/runtime/sweep", headers=CSRF)
        assert r.json() == {"expired": [], "dry_run": False}
        assert tombstone.exists(), sessions
    assert main(["reconcile", "--config", str(cfg)]) == 0
    assert not (root / "artifacts" / "gone-1").exists()
    shutil.rmtree(root / "sessions" / "gone-1")  # now the session is really gone
    assert client_for(Store(load_config(cfg, env={}))).post(
        "/runtime/sweep", headers=CSRF).status_code == 200
    assert tombstone.exists()  # still: the web never decides that
    assert main(["sweep", "--config", str(cfg)]) == 0
    assert not tombstone.exists()


def test_a_session_that_cannot_be_seen_is_not_gone(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Store.session_exists says False only when sessions/ is visible and lacks the run, so a
    sweep without access to sessions/ keeps tombstones."""
    cfg = _config_file(tmp_path)
    root = tmp_path / "root"
    store = Store(load_config(cfg, env={}))
    store.ensure_folders()
    (root / "sessions" / "here").mkdir()
    assert store.session_exists("here")
    assert not store.session_exists("gone")
    real_lstat = os.lstat

    def no_access(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).startswith(str(root / "sessions")):
            raise PermissionError(13, "Permission denied")
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", no_access)
    assert store.session_exists("gone")
    hidden = Store(load_config(cfg, env={"PROMOTER_STORAGE__SESSIONS": '"/nonexistent"'}))
    assert hidden.session_exists("gone")
