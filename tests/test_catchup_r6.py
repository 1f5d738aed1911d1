"""The start-up scan of sessions/ in a second process (issue 15, sixth round): it lists what
the in-process scan lists, the catch-up built on it offers what a scan would, a failed or
stopped child costs nothing but the time, and nothing written during the start is missed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from promoter import prescan as prescan_mod
from promoter.prescan import Prescan
from promoter.reconcile import Rejections, find_pending, reconcile
from promoter.safeio import folder
from promoter.scan import run_stats
from tests.daemon_helpers import base_config, start_daemon, wait_until, write
from tests.fault_helpers import hook_env
from tests.store_helpers import make_store, write_session_file

EXCLUDE = ("*.tmp", "~*")


def _tree(sessions: Path) -> None:
    """Runs with nested folders, excluded names, a link, a folder too deep, an `output/` that
    is a link, a run without `output/`, and a name that is no run id."""
    for name in ("a.txt", "sub/b.txt", "sub/deeper/c.txt", "sub/deeper/too/deep/d.txt",
                 "skip.tmp", "~skip", ".promoter-x"):
        write(sessions / "r1" / "output" / name, name)
    os.symlink("/etc/hostname", sessions / "r1" / "output" / "link")
    write(sessions / "r2" / "output" / "only.txt", "x")
    (sessions / "r3").mkdir()
    elsewhere = sessions.parent / "elsewhere"
    write(elsewhere / "output" / "outside.txt", "o")
    os.symlink(elsewhere, sessions / "r4")
    (sessions / "r5").mkdir()
    os.symlink(elsewhere / "output", sessions / "r5" / "output")
    (sessions / "not a run").mkdir()


def _scan_in_process(sessions: Path, run_id: str, max_depth: int
                     ) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, str, str]]]:
    refusals: list[tuple[str, str, str, str]] = []
    with folder(sessions) as fd:
        files = {name: (st.st_size, st.st_mtime_ns // 1000) for name, st in
                 run_stats(fd, run_id, EXCLUDE, lambda *a: refusals.append(a), max_depth)}
    return files, refusals


def test_the_second_process_lists_what_the_in_process_scan_lists(tmp_path: Path) -> None:
    """Every run's files (size and µs of the mtime) and every refusal (too deep, a linked
    `output/`) are those of `scan.run_stats` in the daemon itself; links are never entered."""
    sessions = tmp_path / "sessions"
    _tree(sessions)
    started = Prescan.start(sessions, EXCLUDE, max_depth=2)
    assert started is not None
    listing = started.collect(threading.Event())
    assert listing is not None
    expected_refusals = []
    for run_id in ("r1", "r2", "r3", "r5"):
        files, refusals = _scan_in_process(sessions, run_id, max_depth=2)
        assert listing.runs[run_id] == files
        expected_refusals += refusals
    assert sorted(listing.runs) == ["r1", "r2", "r3", "r5"]  # no link, no invalid name
    assert set(listing.runs["r1"]) == {"a.txt", "sub/b.txt", "sub/deeper/c.txt", "link"}
    assert sorted(listing.refusals) == sorted(expected_refusals)
    assert {r[2] for r in listing.refusals} == {"sub/deeper/too/", "output/"}


def test_a_catch_up_on_the_listing_offers_what_a_scan_offers(tmp_path: Path) -> None:
    """Unchanged copies, a grown file, a new file and a run made after the listing: the
    pending files are a scan's; a run with a change is scanned again, so its file is judged
    as it is now (its size then), not as the listing saw it."""
    store = make_store(tmp_path, watch={"exclude": list(EXCLUDE)})
    for run_id in ("r1", "r2", "r3"):
        for name in ("same.txt", "sub/same.txt"):
            write_session_file(tmp_path, run_id, name, b"abc", age_s=60)
    reconcile(store)
    write_session_file(tmp_path, "r1", "grown.txt", b"a", age_s=60)
    write_session_file(tmp_path, "r2", "new.txt", b"n", age_s=60)
    started = Prescan.start(store.sessions_path, EXCLUDE, store.config.watch.max_depth)
    assert started is not None
    listing = started.collect(threading.Event())
    assert listing is not None
    write_session_file(tmp_path, "r1", "grown.txt", b"abcdef", age_s=60)  # after the listing
    write_session_file(tmp_path, "r9", "late.txt", b"l", age_s=60)  # a run it never saw
    with_listing = find_pending(store, Rejections(), listing=listing)
    scanned = find_pending(store, Rejections())
    names = {run: sorted(f.filename for f in files) for run, files in with_listing.items()}
    assert names == {run: sorted(f.filename for f in files) for run, files in scanned.items()}
    assert names == {"r1": ["grown.txt"], "r2": ["new.txt"], "r9": ["late.txt"]}
    assert with_listing["r1"][0].size == 6


def test_a_refusal_the_second_process_met_is_logged_once_by_the_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder too deep, seen by the child, is `artifact.rejected` from the daemon, once
    however many passes follow."""
    store = make_store(tmp_path, watch={"max_depth": 1})
    write_session_file(tmp_path, "r1", "a/b/c.txt", b"c", age_s=60)
    started = Prescan.start(store.sessions_path, (), max_depth=1)
    assert started is not None
    listing = started.collect(threading.Event())
    assert listing is not None and listing.refusals
    rejections = Rejections()
    capsys.readouterr()
    find_pending(store, rejections, listing=listing)
    find_pending(store, rejections)
    err = capsys.readouterr().err
    assert err.count('"artifact.rejected"') == 1 and '"a/b/"' in err


def test_a_child_that_fails_leaves_the_scan_to_the_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A child that cannot list (here: no sessions folder) ends with a status: no listing,
    one `reconcile.prescan_failed` line, and no child left behind."""
    started = Prescan.start(tmp_path / "missing", (), 64)
    assert started is not None
    assert started.collect(threading.Event()) is None
    assert '"reconcile.prescan_failed"' in capsys.readouterr().err
    with pytest.raises(ChildProcessError):
        os.waitpid(started.pid, os.WNOHANG)  # reaped already


def test_a_stop_ends_the_child_at_once_and_reaps_it(tmp_path: Path) -> None:
    """SIGTERM during the start: the listing is not waited for, the child is killed and
    reaped (no zombie, no orphan)."""
    sessions = tmp_path / "sessions"
    for i in range(200):
        write(sessions / f"r{i}" / "output" / "f.txt", "x")
    started = Prescan.start(sessions, (), 64)
    assert started is not None
    stop = threading.Event()
    stop.set()
    assert started.collect(stop) is None
    with pytest.raises(ChildProcessError):
        os.waitpid(started.pid, os.WNOHANG)
    assert not Path(f"/proc/{started.pid}").exists() or \
        Path(f"/proc/{started.pid}/stat").read_text().split()[3] != str(os.getpid())


def test_on_one_cpu_there_is_no_second_process(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """One CPU: the child could only take turns with the daemon, so none is made."""
    monkeypatch.setattr(prescan_mod.os, "sched_getaffinity", lambda pid: {0})
    assert Prescan.start(tmp_path, (), 64) is None


def _zombie_child_of(pid: int) -> bool:
    """A child of `pid` that has ended and waits to be reaped: the scan has sent its all."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] == "Z":
            return True
    return False


def test_files_written_after_the_listing_during_the_repair_are_promoted_once(
        tmp_path: Path) -> None:
    """With the repair held and the child's listing already made: a promoted file rewritten
    in place, a new file in a promoted run, a new nested folder and a new run are each
    promoted once (the watches came first), and the start-up catch-up used the listing."""
    root = tmp_path / "storage"
    sessions = root / "sessions"
    write(sessions / "old-1" / "output" / "a.txt", "a")
    write(sessions / "old-1" / "output" / "keep.txt", "k")
    first = start_daemon(root, base_config())
    try:
        first.wait_ready(timeout=20)
        first.wait_entry("old-1", "a.txt", timeout=15)
        first.wait_entry("old-1", "keep.txt", timeout=15)
        assert first.stop() == 0
    finally:
        first.close()
    gate = tmp_path / "repair-may-go"
    d = start_daemon(root, base_config(), env=hook_env(repair_wait=str(gate)))
    try:
        d.wait_log("watch.started", timeout=20)
        wait_until(lambda: _zombie_child_of(d.proc.pid), timeout=20, what="the listing sent")
        write(sessions / "old-1" / "output" / "a.txt", "a, longer now")
        names = {("old-1", "new.txt"), ("old-1", "sub/n.txt"), ("new-1", "x.txt")}
        for run_id, name in names:
            write(sessions / run_id / "output" / name, name)
        assert not d.events("reconcile.started")  # the repair is still held
        gate.touch()
        d.wait_ready(timeout=20)
        for run_id, name in names:
            d.wait_entry(run_id, name, timeout=15)
        d.wait_entry("old-1", "a.txt", timeout=15,
                     check=lambda e: e["size_bytes"] == len("a, longer now"))
        assert not _zombie_child_of(d.proc.pid)  # reaped once its listing was read
        assert d.stop() == 0
        startup = d.events("reconcile.finished", trigger="startup")
        assert startup and startup[0]["prescan"] is True
        promoted = sorted((e["run_id"], e["filename"]) for e in d.events("artifact.promoted"))
        assert promoted == sorted(names | {("old-1", "a.txt")})
    finally:
        d.close()


def test_structlog_comes_without_rich_and_rich_stays_importable() -> None:
    """`promoter run`'s imports leave rich out (0.2 s of its start, issue 15); whoever
    imports rich afterwards gets it, and structlog's console output still shows a
    traceback as text."""
    code = ("import sys, promoter.cli, promoter.daemon\n"
            "print('rich' in sys.modules)\n"
            "import importlib.util\n"
            "print(importlib.util.find_spec('rich') is not None)\n"
            "from promoter.logs import configure_logging, get_logger\n"
            "configure_logging('info', 'console')\n"
            "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
            "    get_logger().error('daemon.thread_died', exc_info=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    loaded, installed = out.stdout.split()
    assert loaded == "False"
    if installed == "True":
        again = subprocess.run([sys.executable, "-c", "import promoter.logs, rich; print(1)"],
                               capture_output=True, text=True, timeout=60, check=True)
        assert again.stdout.strip() == "1"
    assert "ZeroDivisionError" in out.stderr and "Traceback" in out.stderr


def test_a_store_that_cannot_be_opened_leaves_no_watch_and_no_child(tmp_path: Path) -> None:
    """The watches and the scanning child come before the store's preparation: when that
    fails (here `artifacts` is a file), the start fails as before and leaves no watcher
    thread (the autouse fixture checks) and no child behind."""
    from promoter.config import Config
    from promoter.daemon import Daemon
    from promoter.errors import StoreIOError

    root = tmp_path / "storage"
    write(root / "sessions" / "r1" / "output" / "a.txt", "a")
    (root / "artifacts").write_text("not a folder")
    config = Config.model_validate({"storage": {"root": str(root)},
                                    "watch": {"rescan_interval_s": 0, "observer": "inotify"}})
    daemon = Daemon(config, lambda: config, install_signals=False)
    with pytest.raises(StoreIOError):
        daemon.run()
    assert daemon.watcher is not None and daemon.watcher.stopping
    assert not _zombie_child_of(os.getpid())


def _stalling_listing(*_: object) -> None:
    """A child that stops itself before listing anything (as a SIGSTOP from outside would)."""
    import signal

    os.kill(os.getpid(), signal.SIGSTOP)


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn")


def test_a_child_that_makes_no_progress_is_given_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """r6 probe 3: a child stopped (or stuck) before its listing is given up once its CPU
    time stands still for STALL_S: a failure logged, the child killed and reaped, and the
    start-up scans in-process instead of waiting for ever."""
    import signal

    (tmp_path / "sessions").mkdir()
    monkeypatch.setattr(prescan_mod, "_listing", _stalling_listing)
    monkeypatch.setattr(prescan_mod, "STALL_S", 0.5)
    started = Prescan.start(tmp_path / "sessions", (), 64)
    assert started is not None
    wait_until(lambda: Path(f"/proc/{started.pid}/stat").read_text().rpartition(")")[2]
               .split()[0] == "T", timeout=10, what="the child stopped")
    ignored = _ignored_signals(started.pid)
    assert ignored & (1 << (signal.SIGHUP - 1)) and ignored & (1 << (signal.SIGINT - 1)), \
        "a SIGHUP (reload) or Ctrl-C to the group must not end the child"
    assert not ignored & (1 << (signal.SIGTERM - 1))
    blocked = next(line for line in Path(f"/proc/{started.pid}/status").read_text()
                   .splitlines() if line.startswith("SigBlk:")).split()[1]
    assert int(blocked, 16) == 0, "the signals held across the fork are let go in the child"
    assert started.collect(threading.Event()) is None
    assert "made no progress" in capsys.readouterr().err
    with pytest.raises(ChildProcessError):
        os.waitpid(started.pid, os.WNOHANG)


ORPHAN = """
import os, sys, time
from pathlib import Path
from promoter import prescan
prescan._listing = lambda *a: time.sleep(60)  # (the child's stand-in for a long listing)
started = prescan.Prescan.start(Path(sys.argv[1]), (), 64)
print(started.pid, flush=True)
os._exit(0)  # the daemon killed: no discard, no reaping
"""


def test_a_child_dies_with_the_daemon(tmp_path: Path) -> None:
    """r6 probe 7: a kill -9 of the daemon ends its child too (PR_SET_PDEATHSIG), rather
    than leaving an orphan listing on a core for seconds."""
    (tmp_path / "sessions").mkdir()
    out = subprocess.run([sys.executable, "-c", ORPHAN, str(tmp_path / "sessions")],
                         capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.split()[0])

    def gone() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")  # killed, not yet reaped by whoever adopted it
    wait_until(gone, timeout=10, what="the orphaned child ended")


def test_find_pending_stops_between_runs(tmp_path: Path) -> None:
    """r6 probe 1: a stop ends the catch-up's scan between runs (a SIGTERM during the start
    waited for a scan of every run)."""
    store = make_store(tmp_path)
    for i in range(5):
        write_session_file(tmp_path, f"r{i}", "a.txt", b"a", age_s=60)
    assert len(find_pending(store, Rejections())) == 5
    stop = threading.Event()
    stop.set()
    assert find_pending(store, Rejections(), stop=stop) == {}
