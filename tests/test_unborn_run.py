"""A first write session that never completed (a copy given up at a stop, a crash before the
run's first listing) leaves a run folder with no metadata.json and no stored copy. No
command shows it, so the start-up repair removes it (probe r10-stop F5); anything that is
more than those leftovers keeps it."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import structlog

from promoter.layout import MARK, MARK_AT_REST
from promoter.store import Store
from tests.daemon_helpers import Daemon, base_config, copy_under_way, wait_until
from tests.store_helpers import make_store


def _leftovers(store_root: Path, run_id: str = "r1") -> Path:
    run = store_root / "artifacts" / run_id
    (run / "files/plots/deep").mkdir(parents=True)
    (run / MARK).touch()
    (run / ".promoter-tmp-1").write_bytes(b"half a metadata write")
    return run


def _repair(store: Store, run_id: str = "r1") -> list[dict[str, object]]:
    with structlog.testing.capture_logs() as logs:
        store.repair(run_id)
    return logs


def test_a_first_writes_leftovers_go(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    run = _leftovers(tmp_path)
    logs = _repair(store)
    assert not run.exists()
    assert [e["run_id"] for e in logs if e["event"] == "run.unborn_removed"] == ["r1"]
    assert store.run_ids() == []


def test_a_resting_mark_alone_goes_too(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    run = tmp_path / "artifacts/r1"
    run.mkdir(parents=True)
    (run / MARK_AT_REST).touch()
    _repair(store)
    assert not run.exists()


@pytest.mark.parametrize("extra", ["metadata.json.corrupt-20261201T000000000000Z", "notes.txt"])
def test_anything_else_keeps_the_folder(tmp_path: Path, extra: str) -> None:
    store = make_store(tmp_path)
    run = _leftovers(tmp_path)
    (run / extra).write_text("kept")
    logs = _repair(store)
    assert (run / extra).read_text() == "kept"
    assert (run / MARK).exists() and (run / "files/plots/deep").is_dir()
    assert not [e for e in logs if e["event"] == "run.unborn_removed"]


def test_a_stored_copy_is_listed_not_removed(tmp_path: Path) -> None:
    """A copy in files/ without metadata is a run to rebuild (DESIGN §6), never leftovers."""
    store = make_store(tmp_path)
    run = _leftovers(tmp_path)
    (run / "files/plots/deep/p.png").write_bytes(b"png")
    _repair(store)
    meta = store.read_run("r1")
    assert meta is not None and [a.filename for a in meta.artifacts] == ["plots/deep/p.png"]


def test_a_folder_planted_as_files_goes_with_the_rest(tmp_path: Path) -> None:
    """A link in files/ is no stored copy: promoter never makes one; it goes, its target
    stays."""
    store = make_store(tmp_path)
    run = _leftovers(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (run / "files/plots/link").symlink_to(outside)
    _repair(store)
    assert not run.exists()
    assert outside.read_text() == "not ours"


def test_a_daemon_stopped_during_a_new_runs_only_copy_leaves_nothing_after_restart(
        tmp_path: Path) -> None:
    """The real daemon: SIGTERM while the only file of a new run is copied (given up at once:
    GIVE_UP_S is 0 in its process); the session is then cleaned up, as sessions are once a
    run ends; the next start removes the run folder the given-up copy left."""
    root = tmp_path / "root"
    big = root / "sessions/r1/output/plots/deep/big.bin"
    big.parent.mkdir(parents=True)
    config = base_config(promote={"max_file_bytes": 2 << 30})
    daemon = Daemon(root, config, before="import promoter.stopcopy as s; s.GIVE_UP_S = 0.0")
    try:
        daemon.wait_ready()
        with big.open("wb") as f:
            f.truncate(1 << 30)
        wait_until(lambda: copy_under_way(daemon.proc.pid, root / "artifacts/r1/files"),
                   timeout=10)
    finally:
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        daemon.close()
    assert (root / "artifacts/r1").is_dir() and not (root / "artifacts/r1/metadata.json").exists()
    shutil.rmtree(root / "sessions/r1")
    again = Daemon(root, config)
    try:
        again.wait_ready(timeout=30)
        assert again.events("run.unborn_removed", run_id="r1")
        assert not (root / "artifacts/r1").exists()
    finally:
        assert again.stop() == 0
