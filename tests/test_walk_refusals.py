"""What the walk itself refuses (a folder deeper than watch.max_depth, `output/` a link)
reaches the run's `rejected` list as a refused file does (DESIGN §2, §6; r7 probe F4)."""

from __future__ import annotations

import os
from pathlib import Path

from promoter.reconcile import Rejections, find_pending
from tests.daemon_helpers import base_config, start_daemon, wait_until
from tests.store_helpers import make_store, write_session_file

DEEP = "deeper than watch.max_depth (3 folders)"


def _rejected(meta: dict[str, object] | None) -> list[tuple[str, str]]:
    rows = meta.get("rejected", []) if meta else []
    assert isinstance(rows, list)
    return [(r["filename"], r["reason"]) for r in rows]


def test_walk_refusals_are_listed_at_start_and_while_running(tmp_path: Path) -> None:
    """A too-deep folder and a linked `output/` make a run that lists why, at the start-up
    pass and for a too-deep folder made while the daemon runs; a run that has files lists
    its too-deep folder beside them."""
    root = tmp_path / "root"
    sessions = root / "sessions"
    for run_id in ("deep1", "mixed"):
        (sessions / run_id / "output" / "a/b/c/d/e").mkdir(parents=True)
        (sessions / run_id / "output" / "a/b/c/d/e/x.txt").write_text("deep")
    (sessions / "mixed" / "output" / "ok.txt").write_text("fine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("not ours")
    (sessions / "osym").mkdir(parents=True)
    os.symlink(elsewhere, sessions / "osym" / "output")
    d = start_daemon(root, base_config(watch={"max_depth": 3}))
    try:
        d.wait_ready()
        d.wait_log("reconcile.finished", timeout=30)
        assert _rejected(wait_until(lambda: d.meta("deep1"), timeout=10)) == [
            ("a/b/c/d/", DEEP)]
        [(name, reason)] = _rejected(wait_until(lambda: d.meta("osym"), timeout=10))
        assert name == "output/" and "link" in reason
        d.wait_entry("mixed", "ok.txt")
        assert _rejected(d.meta("mixed")) == [("a/b/c/d/", DEEP)]
        (sessions / "live" / "output" / "p/q/r/s").mkdir(parents=True)
        (sessions / "live" / "output" / "p/q/r/s/y.txt").write_text("deep")
        assert _rejected(wait_until(lambda: d.meta("live"), timeout=20)) == [
            ("p/q/r/s/", DEEP)]
        assert not (root / "artifacts" / "osym" / "files").exists()
        assert not [e for e in d.logs() if "exception" in e]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_deleted_run_is_not_made_again_by_a_walk_refusal(tmp_path: Path) -> None:
    """Deleted stays deleted (DESIGN §1): a pass over a deleted run's too-deep folder
    creates nothing; the same refusal lists itself once in a live run (no write after)."""
    store = make_store(tmp_path, watch={"max_depth": 1})
    write_session_file(tmp_path, "gone", "ok.txt", b"x")
    store.promote_files("gone", ["ok.txt"])
    store.delete_run("gone")
    write_session_file(tmp_path, "gone", "a/b/deep.txt", b"x")
    write_session_file(tmp_path, "here", "a/b/deep.txt", b"x")
    find_pending(store, Rejections())
    assert not (tmp_path / "artifacts" / "gone").exists()
    assert [(r.filename, r.reason) for r in store.get_run("here").rejected] == [
        ("a/b/", "deeper than watch.max_depth (1 folders)")]
    stamp = (tmp_path / "artifacts" / "here" / "metadata.json").stat().st_mtime_ns
    find_pending(store, Rejections())  # a restart: the same refusal, nothing new to write
    assert (tmp_path / "artifacts" / "here" / "metadata.json").stat().st_mtime_ns == stamp
