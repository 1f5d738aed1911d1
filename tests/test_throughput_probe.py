"""Issue 15, found by its outside probe (notes/probe-15.md): the catch-up is linear and batched
like the daemon's, and the run's cached model never hides a change made after a write."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from promoter import reconcile as reconcile_mod
from promoter.layout import METADATA
from promoter.pipeline import MIN_BATCH
from promoter.reconcile import SessionFile, reconcile
from promoter.store import Outcome, PromoteResult, Store
from tests.store_helpers import make_store, write_session_file


def test_catch_up_compares_no_session_file_with_another(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's pending files are split into ready and waiting in one pass (a list scan per
    file made 20,000 pending files take 9 minutes): no SessionFile is ever compared."""
    store = make_store(tmp_path)
    files = [SessionFile("r1", f"f{i}", 1, 0, i, True, 0) for i in range(2_000)]
    monkeypatch.setattr(reconcile_mod, "find_pending",
                        lambda *a, **k: {"r1": files})
    monkeypatch.setattr(store, "promote_files", lambda run_id, names: [
        PromoteResult(run_id, n, Outcome.UNCHANGED) for n in names])
    compared = 0

    def counting_eq(self: SessionFile, other: object) -> bool:
        nonlocal compared
        compared += 1
        return self is other

    monkeypatch.setattr(SessionFile, "__eq__", counting_eq)
    report = reconcile(store, max_rounds=1)
    assert report.count(Outcome.UNCHANGED) == len(files)
    assert compared == 0


def _spy_batches(store: Store, monkeypatch: pytest.MonkeyPatch,
                 stop: threading.Event | None = None) -> list[int]:
    """Record the size of every promote_files batch; set `stop` after the first one."""
    sizes: list[int] = []
    real = store.promote_files

    def spy(run_id: str, names: Any) -> list[PromoteResult]:
        names = list(names)
        sizes.append(len(names))
        results = real(run_id, names)
        if stop is not None:
            stop.set()
        return results

    monkeypatch.setattr(store, "promote_files", spy)
    return sizes


def test_catch_up_promotes_a_big_run_in_bounded_batches(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-up hands a run to the store in batches of the daemon's size, not all at
    once (one batch of a whole run could not be stopped and a kill lost all of it)."""
    store = make_store(tmp_path)
    count = 2 * MIN_BATCH + 7
    for i in range(count):
        write_session_file(tmp_path, "r1", f"f{i}", b"x")
    sizes = _spy_batches(store, monkeypatch)
    report = reconcile(store)
    assert report.count(Outcome.PROMOTED) == count
    assert sum(sizes) == count
    assert max(sizes) <= MIN_BATCH
    meta = store.read_run("r1")
    assert meta is not None and len(meta.artifacts) == count


def test_catch_up_stops_between_batches_and_keeps_what_it_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop (the daemon's SIGTERM) during the catch-up of a big run ends it after the batch
    in flight, and that batch's files are in the store."""
    store = make_store(tmp_path)
    for i in range(3 * MIN_BATCH):
        write_session_file(tmp_path, "r1", f"f{i}", b"x")
    stop = threading.Event()
    sizes = _spy_batches(store, monkeypatch, stop)
    reconcile(store, stop=stop)
    assert sizes == [MIN_BATCH]
    meta = store.read_run("r1")
    assert meta is not None and len(meta.artifacts) == MIN_BATCH


def test_a_change_right_after_a_write_is_not_cached_as_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """metadata.json changed by someone else just after the daemon wrote it (before the
    daemon took its version) is read, not overwritten from the cache: set aside, rebuilt."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a", b"A")
    assert store.promote_files("r1", ["a"])[0].outcome is Outcome.PROMOTED
    path = tmp_path / "artifacts" / "r1" / METADATA
    real_write = store.disk.write_meta

    def write_then_corrupt(art: int, run_id: str, data: bytes) -> Any:
        version = real_write(art, run_id, data)
        with open(path, "r+b") as fh:  # in place, same size: only the mtime tells
            fh.write(b"\0" * len(data))
        return version

    write_session_file(tmp_path, "r1", "b", b"B")
    monkeypatch.setattr(store.disk, "write_meta", write_then_corrupt)
    assert store.promote_files("r1", ["b"])[0].outcome is Outcome.PROMOTED
    monkeypatch.setattr(store.disk, "write_meta", real_write)
    write_session_file(tmp_path, "r1", "c", b"C")
    assert store.promote_files("r1", ["c"])[0].outcome is Outcome.PROMOTED
    aside = [n for n in os.listdir(path.parent) if n.startswith(f"{METADATA}.corrupt-")]
    assert len(aside) == 1
    meta = store.read_run("r1")
    assert meta is not None
    assert sorted(a.filename for a in meta.artifacts) == ["a", "b", "c"]
