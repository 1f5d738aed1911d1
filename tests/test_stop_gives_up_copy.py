"""A long copy gives way to a stop (stopcopy.py): a SIGTERM during a big copy no longer
waits for its end; nothing of it is kept or listed, and the next start copies the file."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from promoter import stopcopy
from promoter.layout import MARK, MARK_AT_REST
from promoter.reconcile import reconcile
from promoter.safeio import stage_copy
from promoter.store import Outcome
from tests.daemon_helpers import Daemon, base_config, copy_under_way, wait_until
from tests.store_helpers import make_store, write_session_file

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _unwatched() -> Iterator[None]:
    """Each test's thread starts, and is left, as a thread that never gives up (the CLI's
    way): the watch is the thread's, and pytest runs every test on the same thread."""
    stopcopy.watch(None)
    yield
    stopcopy.watch(None)


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _copy(src: Path, folder: Path) -> None:
    fd = os.open(src, os.O_RDONLY)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out, _, _ = stage_copy(fd, os.fstat(fd), dir_fd, "copy", checksum=True,
                               max_bytes=1 << 40, unnamed=False)
        os.close(out)
    finally:
        os.close(fd)
        os.close(dir_fd)


def _impatient(root: Path, config: dict[str, Any]) -> Daemon:
    """The real daemon with GIVE_UP_S at 0 in its process: a big copy on a fast disk takes
    a second or two, not the 5 s a copy gets before it gives up."""
    return Daemon(root, config, before="import promoter.stopcopy as s; s.GIVE_UP_S = 0.0")


def _sigterm(daemon: Daemon) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the stop took (the process ended either way)."""
    t0 = time.monotonic()
    try:
        return daemon.stop(signal.SIGTERM, timeout=30), time.monotonic() - t0
    finally:
        daemon.close()


def test_a_copy_gives_up_only_once_the_stop_is_old_enough(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _sparse(tmp_path / "big", 4 * stopcopy.CHECK_BYTES)
    out = tmp_path / "out"
    out.mkdir()
    _copy(src, out)  # never watched: copied whatever happens
    stopcopy.watch(time.monotonic)  # the stop begins now
    _copy(src, out)  # stopping, but not for GIVE_UP_S yet: this copy ends
    monkeypatch.setattr(stopcopy, "GIVE_UP_S", 0.0)
    before = sorted(p.name for p in out.iterdir())  # the two staged copies above
    assert len(before) == 2
    with pytest.raises(stopcopy.GivenUp):
        _copy(src, out)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing of it left


def test_a_small_copy_never_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below CHECK_BYTES a copy costs no look at all, stopping or not."""
    src = tmp_path / "small"
    src.write_bytes(b"x" * 4096)
    out = tmp_path / "out"
    out.mkdir()
    looks: list[int] = []
    monkeypatch.setattr(stopcopy, "check", lambda: looks.append(1))
    _copy(src, out)
    assert looks == []


def test_a_given_up_file_is_neither_stored_nor_listed_and_comes_next_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "small.txt", b"small")
    write_session_file(tmp_path, "r1", "big.bin", b"\0" * (3 * stopcopy.CHECK_BYTES))
    monkeypatch.setattr(stopcopy, "GIVE_UP_S", 0.0)
    stopcopy.watch(time.monotonic)
    results = {r.filename: r for r in store.promote_files("r1", ["small.txt", "big.bin"])}
    assert results["small.txt"].outcome is Outcome.PROMOTED
    assert results["big.bin"].outcome is Outcome.DEFERRED
    assert "given up, the next start catches up" in results["big.bin"].reason
    files = tmp_path / "artifacts/r1/files"
    assert sorted(p.name for p in files.iterdir()) == ["small.txt"]
    assert [a.filename for a in store.read_run("r1").artifacts] == ["small.txt"]
    stopcopy.watch(None)  # the next start
    assert {r.outcome for r in store.promote_files("r1", ["big.bin"])} == {Outcome.PROMOTED}


def test_a_batch_whose_every_copy_gave_up_leaves_the_mark_at_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe r10-stop F4: nothing was renamed into files/, so the run's mark rests as after
    any clean session; it stayed `.unlisted`, and the next start walked the run."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "small.txt", b"small")
    store.promote_files("r1", ["small.txt"])
    run = tmp_path / "artifacts/r1"
    assert (run / MARK_AT_REST).exists()
    write_session_file(tmp_path, "r1", "big.bin", b"\0" * (3 * stopcopy.CHECK_BYTES))
    monkeypatch.setattr(stopcopy, "GIVE_UP_S", 0.0)
    stopcopy.watch(time.monotonic)
    [result] = store.promote_files("r1", ["big.bin"])
    assert result.outcome is Outcome.DEFERRED
    assert (run / MARK_AT_REST).exists() and not (run / MARK).exists()
    stopcopy.watch(None)
    store.promote_files("r1", ["big.bin", "small.txt"])  # a copy, and one already there
    assert (run / MARK_AT_REST).exists() and not (run / MARK).exists()


def test_other_threads_do_not_give_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state is the thread's: a watching worker never makes the server's copy give up."""
    monkeypatch.setattr(stopcopy, "GIVE_UP_S", 0.0)
    stopcopy.watch(time.monotonic)
    src = _sparse(tmp_path / "big", 3 * stopcopy.CHECK_BYTES)
    out = tmp_path / "out"
    out.mkdir()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            _copy(src, out)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(30)
    assert errors == []


def test_sigterm_during_a_big_copy_stops_at_once_and_the_next_start_copies_it(
        tmp_path: Path) -> None:
    """The real daemon (GIVE_UP_S set to 0 in its process: a real big copy takes seconds):
    SIGTERM while a 1 GiB file is copied; the daemon exits 0 without finishing the copy,
    says so, lists nothing; started again, it copies the file."""
    root = tmp_path / "root"
    (root / "sessions").mkdir(parents=True)
    config = base_config(promote={"max_file_bytes": 2 << 30})
    daemon = _impatient(root, config)
    try:
        daemon.wait_ready()
        _sparse(root / "sessions/r1/output/big.bin", 1 << 30)
        daemon.wait_log("artifact.copying", filename="big.bin")
        wait_until(lambda: copy_under_way(daemon.proc.pid, root / "artifacts/r1/files"),
                   timeout=10)
    finally:
        code, took = _sigterm(daemon)
    assert code == 0
    deferred = [e for e in daemon.logs() if e.get("event") == "artifact.deferred"
                and e.get("filename") == "big.bin"]
    assert deferred and "given up" in deferred[0]["reason"], daemon.logs()[-10:]
    assert not daemon.events("artifact.promoted", filename="big.bin")
    assert daemon.entry("r1", "big.bin") is None
    assert not (root / "artifacts/r1/files/big.bin").exists()
    assert took < 5.0, took
    again = Daemon(root, config)
    try:
        again.wait_ready(timeout=60)
        entry = again.wait_entry("r1", "big.bin", timeout=60)
        assert entry["size_bytes"] == 1 << 30
    finally:
        assert again.stop() == 0


def test_sigterm_during_the_start_up_catch_up_gives_up_its_parallel_copies(
        tmp_path: Path) -> None:
    """Two runs' big files waiting at the start: the catch-up copies them on its pool's
    threads (promote.workers = 2), which take the catch-up's watch along (probe r10 F1:
    they never gave up, and the stop guard killed the daemon after 26 s)."""
    root = tmp_path / "root"
    for run in ("r1", "r2"):
        _sparse(root / f"sessions/{run}/output/big.bin", 1 << 30)
    config = base_config(promote={"max_file_bytes": 2 << 30, "workers": 2})
    daemon = _impatient(root, config)
    try:
        daemon.wait_log("artifact.copying", timeout=30, filename="big.bin")
    finally:
        code, took = _sigterm(daemon)
    assert code == 0
    assert not daemon.events("daemon.thread_stuck") and not daemon.events("daemon.stop_stuck")
    given_up = [e["run_id"] for e in daemon.events("artifact.deferred", filename="big.bin")
                if "given up" in e.get("reason", "")]
    promoted = [e["run_id"] for e in daemon.events("artifact.promoted", filename="big.bin")]
    assert given_up and sorted(given_up + promoted) == ["r1", "r2"], daemon.logs()[-12:]
    assert not daemon.events("artifact.copying", filename="big.bin")[2:]  # never tried again
    assert took < 5.0, took
    for run in given_up:
        assert daemon.entry(run, "big.bin") is None


def test_the_give_up_counts_from_the_stop_not_from_the_copys_first_look() -> None:
    """A slow copy's first look after the stop may come seconds later: the stop's age is
    what counts (probe r10 F2: a 2 MiB/s copy gave up 13 s into the stop)."""
    now = time.monotonic()
    stopcopy.watch(lambda: now - stopcopy.GIVE_UP_S + 60)  # began in the future: no
    stopcopy.check()
    stopcopy.watch(lambda: now - stopcopy.GIVE_UP_S)
    with pytest.raises(stopcopy.GivenUp, match=r"still copying 5\.\d s into the stop"):
        stopcopy.check()
    ran: list[bool] = []

    def on_a_pool() -> None:  # `carried` takes the watch along; the thread's own is kept
        with pytest.raises(stopcopy.GivenUp):
            stopcopy.check()
        ran.append(True)

    thread = threading.Thread(target=stopcopy.carried(on_a_pool))
    thread.start()
    thread.join(10)
    assert ran == [True]


@pytest.mark.parametrize("workers", [1, 2])
def test_runs_a_stopped_catch_up_never_reached_are_said(tmp_path: Path, workers: int) -> None:
    """A catch-up stopped before it reached some runs says so, one line a run, as the
    workers' deferrals do (probe r10-stop2 N3: the third of three runs went unmentioned)."""
    store = make_store(tmp_path, promote={"workers": workers})
    for run in ("r1", "r2", "r3"):
        for name in ("a.txt", "b.txt"):
            write_session_file(tmp_path, run, name, f"{run}/{name}".encode())
    stop = threading.Event()
    real = store.promote_files

    def then_stop(run_id: str, names: list[str]) -> list[Any]:
        stop.set()  # the SIGTERM comes while the first run is promoted
        return real(run_id, names)

    store.promote_files = then_stop  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        report = reconcile(store, stop=stop)
    promoted = {run for run, _ in report.outcomes}
    said = {(e["run_id"], e["files"]) for e in logs if e["event"] == "artifact.deferred"}
    assert said and {run for run, _ in said} | promoted == {"r1", "r2", "r3"}, logs
    assert not {run for run, _ in said} & promoted
    assert {files for _, files in said} == {2}


_SLOW_BIG_COPIES = """
import os, time
import promoter.safeio as safeio, promoter.stopcopy as stopcopy
stopcopy.GIVE_UP_S = 2.5  # past the stop budget (1.5 s): the workers are still copying then
_write_all = safeio._write_all
def _slow_past_a_mib(fd, data):
    if os.fstat(fd).st_size >= 1 << 20:  # a big copy crawls; a small one is as fast as ever
        time.sleep(0.02)
    _write_all(fd, data)
safeio._write_all = _slow_past_a_mib
"""


def test_files_closed_before_the_stop_do_not_wait_behind_copies_that_will_give_up(
        tmp_path: Path) -> None:
    """Probe r10-stop F6: both workers in big copies at the SIGTERM, 40 small files of a
    third run closed before it and still settling. They went to the workers' queue, the
    stop budget was spent before a worker came back from its give-up, and all 40 were
    deferred to the next start. Now the stop hands them to the lane: promoted, and the big
    copies given up, in the same stop."""
    root = tmp_path / "root"
    (root / "sessions").mkdir(parents=True)
    metrics = tmp_path / "metrics.prom"
    config = base_config(watch={"settle_ms": 50},
                         metrics={"textfile": str(metrics), "interval_s": 0.05})
    daemon = Daemon(root, config, before=_SLOW_BIG_COPIES)
    try:
        daemon.wait_ready()
        for run in ("b1", "b2"):
            _sparse(root / f"sessions/{run}/output/big.bin", 32 * MIB)
        pid = daemon.proc.pid  # both workers busy (the lane takes no batch of a big file)
        wait_until(lambda: all(copy_under_way(pid, root / f"artifacts/{run}/files")
                               for run in ("b1", "b2")), timeout=10)
        daemon.write_config({**config, "watch": {"settle_ms": 60_000}})
        daemon.send(signal.SIGHUP)  # the small files are seen, closed, and left settling
        daemon.wait_log("daemon.reloaded")
        for i in range(40):
            (root / "sessions/rs/output").mkdir(parents=True, exist_ok=True)
            (root / f"sessions/rs/output/s{i:02d}.txt").write_text(f"small {i}")

        def queued() -> float:
            text = metrics.read_text() if metrics.exists() else ""
            found = [line.split()[1] for line in text.splitlines()
                     if line.startswith("promoter_queue_files ")]
            return float(found[0]) if found else 0.0

        wait_until(lambda: queued() >= 42, timeout=10)  # 40 settling, 2 in flight
    finally:
        code, took = _sigterm(daemon)
    assert code == 0
    promoted = {e["filename"] for e in daemon.events("artifact.promoted", run_id="rs")}
    assert promoted == {f"s{i:02d}.txt" for i in range(40)}, daemon.logs()[-10:]
    assert not daemon.events("artifact.deferred", run_id="rs")
    assert {e["run_id"] for e in daemon.events("artifact.deferred")
            if "given up" in e.get("reason", "")} == {"b1", "b2"}
    assert took < 10.0, took
    assert 'promoter_files_total{result="deferred"} 2.0' in metrics.read_text()
