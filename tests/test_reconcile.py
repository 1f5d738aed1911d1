"""Catch-up: every finished file the store lacks is found from size and times alone."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from promoter.promotion import PromoteResult
from promoter.reconcile import RETRY_ROUNDS, Rejections, find_pending, reconcile
from promoter.store import Outcome, Store
from tests.store_helpers import make_store, write_session_file


def test_pending_is_decided_by_size_and_time(tmp_path: Path) -> None:
    """Promoted files are not pending; new, rewritten and resized files are."""
    store = make_store(tmp_path)
    for name in ("same", "touched", "grown"):
        write_session_file(tmp_path, "r1", name, b"abc", age_s=60)
    reconcile(store)
    assert find_pending(store, Rejections()) == {}
    write_session_file(tmp_path, "r1", "new", b"n")
    os.utime(tmp_path / "sessions/r1/output/touched", (time.time() - 5, time.time() - 5))
    (tmp_path / "sessions/r1/output/grown").write_bytes(b"abcdef")
    pending = find_pending(store, Rejections())
    assert sorted(f.filename for f in pending["r1"]) == ["grown", "new", "touched"]


def test_promoted_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second pass over promoted files opens none of them."""
    store = make_store(tmp_path)
    for i in range(20):
        write_session_file(tmp_path, f"r{i % 4}", f"f{i}", b"x")
    reconcile(store)
    calls: list[str] = []
    original = Store.promote_files
    monkeypatch.setattr(Store, "promote_files",
                        lambda self, run, names: calls.append(run) or original(self, run, names))
    assert reconcile(store).summary()["promoted"] == 0
    assert calls == []


def test_excluded_and_input_files_are_ignored(tmp_path: Path) -> None:
    """Excluded names, input/ and files outside output/ are never promoted."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "keep.csv", b"k")
    write_session_file(tmp_path, "r1", "x.tmp", b"t")
    write_session_file(tmp_path, "r1", ".hidden/a.txt", b"h")
    write_session_file(tmp_path, "r1", "a.part", b"p")
    (tmp_path / "sessions/r1/input").mkdir()
    (tmp_path / "sessions/r1/input/in.csv").write_text("in")
    reconcile(store)
    assert [a.filename for a in store.get_run("r1").artifacts] == ["keep.csv"]


def test_invalid_run_ids_are_ignored_with_one_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder under sessions/ that is not a valid run id is skipped, warned once."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, ".bad", "a", b"x")
    write_session_file(tmp_path, "bad id", "a", b"x")
    rejections = Rejections()
    reconcile(store, rejections)
    reconcile(store, rejections)
    assert store.run_ids() == []
    err = capsys.readouterr().err
    assert err.count('"run.ignored"') == 2


def test_rejections_are_logged_once_per_version(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A symlink is rejected once; a rescan does not log it again."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "ok", b"x")
    (tmp_path / "sessions/r1/output/link").symlink_to("/etc/passwd")
    rejections = Rejections()
    reconcile(store, rejections)
    reconcile(store, rejections)
    assert capsys.readouterr().err.count('"artifact.rejected"') == 1


def test_recent_file_is_waited_for(tmp_path: Path) -> None:
    """A file modified within settle_ms is promoted once it has been quiet that long."""
    store = make_store(tmp_path, watch={"settle_ms": 200})
    write_session_file(tmp_path, "r1", "fresh", b"x", age_s=0)
    started = time.monotonic()
    report = reconcile(store)
    assert report.count(Outcome.PROMOTED) == 1
    assert time.monotonic() - started >= 0.15


def test_session_gone_completes_run(tmp_path: Path) -> None:
    """A run whose session folder is gone is marked completed by the catch-up."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a", b"x")
    reconcile(store)
    assert store.get_run("r1").status == "active"
    shutil.rmtree(tmp_path / "sessions/r1")
    reconcile(store)
    assert store.get_run("r1").status == "completed"


def test_unreadable_folder_is_reported_not_fatal(tmp_path: Path) -> None:
    """A mode-000 folder is skipped (as root it is readable), and the rest is promoted."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "locked/a", b"x")
    write_session_file(tmp_path, "r1", "b", b"y")
    (tmp_path / "sessions/r1/output/locked").chmod(0)
    try:
        reconcile(store)
    finally:
        (tmp_path / "sessions/r1/output/locked").chmod(0o755)
    assert "b" in [a.filename for a in store.get_run("r1").artifacts]


@contextlib.contextmanager
def descriptor_limit(soft: int) -> Iterator[None]:
    """Lower this process's open-file limit for a block (as a 1,024 default would be)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_wide_tree_holds_no_descriptor_per_folder(tmp_path: Path) -> None:
    """150 sibling folders under a 64-descriptor limit: catch-up and recovery find every
    file (a stack of open folders ran out of descriptors and skipped the rest, silently)."""
    store = make_store(tmp_path)
    for i in range(150):
        write_session_file(tmp_path, "wide", f"d{i}/f.txt", b"f")
    with descriptor_limit(64):
        assert len(find_pending(store, Rejections())["wide"]) == 150
        reconcile(store)
        (tmp_path / "artifacts" / "wide" / "metadata.json").unlink()
        meta = store.read_run("wide")  # rebuilt from the stored copies
    assert meta is not None and len(meta.artifacts) == 150


def test_rounds_that_promote_some_files_keep_going_until_every_file_is_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that takes 3 files a round (descriptors short, say) and fails the rest: each
    round that promotes something starts the failure back-off again, so all 30 get in (a
    back-off counting those rounds gave up with files left)."""
    store = make_store(tmp_path)
    for i in range(30):
        write_session_file(tmp_path, "r", f"f{i:02d}.txt", b"f")
    real = Store.promote_files
    rounds: list[int] = []

    def three_a_round(self: Store, run_id: str, names: list[str]) -> list[PromoteResult]:
        rounds.append(len(names))
        done = real(self, run_id, names[:3])
        return done + [PromoteResult(run_id, n, Outcome.FAILED, "Too many open files")
                       for n in names[3:]]

    monkeypatch.setattr(Store, "promote_files", three_a_round)
    report = reconcile(store)
    assert len(rounds) == 10 > 1 + RETRY_ROUNDS
    assert {r.outcome for r in report.outcomes.values()} == {Outcome.PROMOTED}
    meta = store.read_run("r")
    assert meta is not None and len(meta.artifacts) == 30


def test_one_run_that_raises_stops_no_other_runs_catch_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error in one run's scan or promotion is logged; the others are promoted;
    the files of a run whose promotion raised count as failed (the daemon tries them again)."""
    store = make_store(tmp_path)
    for run_id in ("a-bad-scan", "b-bad-copy", "c-good"):
        write_session_file(tmp_path, run_id, "f.txt", b"f")
    original_look, original_promote = Store.look, Store.promote_files

    def look(self: Store, run_id: str) -> object:  # the scan's read of the run
        if run_id == "a-bad-scan":
            raise RuntimeError("injected")
        return original_look(self, run_id)

    def promote_files(self: Store, run_id: str, names: list[str]) -> object:
        if run_id == "b-bad-copy":
            raise RuntimeError("injected")
        return original_promote(self, run_id, names)

    monkeypatch.setattr(Store, "look", look)
    monkeypatch.setattr(Store, "promote_files", promote_files)
    report = reconcile(store, max_rounds=1)  # (later rounds: the same again)
    assert {run: r.outcome for (run, _), r in report.outcomes.items()} == {
        "b-bad-copy": Outcome.FAILED, "c-good": Outcome.PROMOTED}
    assert [(r.run_id, r.reason) for r in report.left()] == [("b-bad-copy",
                                                              "RuntimeError: injected")]
    assert (tmp_path / "artifacts" / "c-good" / "files" / "f.txt").exists()
