"""The early start-up child shares the user's inotify limits with the daemon's own watches
(issue 15, r8 probe): it never leaves the daemon degraded or on polling, never outlives a
stop during the imports, and never vouches for a file another hard link may change."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from promoter import prescan as prescan_mod
from promoter.prescan import Prescan
from tests.daemon_helpers import Daemon, base_config, child_pids, start_daemon, wait_until, write
from tests.fault_helpers import hook_env, is_root

RUNS = 20
DAEMON_WATCHES = 1 + 2 * RUNS  # sessions/, and each run's folder and output/


def _inotify_watches(pid: int) -> int:
    """How many watches the process's inotify instances hold (/proc fdinfo)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += sum(line.startswith("inotify wd:") for line in text.splitlines())
    return count


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def _promoted_root(tmp_path: Path) -> Path:
    """RUNS runs of one promoted file each, the daemon stopped."""
    root = tmp_path / "storage"
    for i in range(RUNS):
        write(root / "sessions" / f"r{i:02d}" / "output" / "a.txt", "a")
    first = start_daemon(root, base_config())
    try:
        first.wait_ready(timeout=20)
        for i in range(RUNS):
            first.wait_entry(f"r{i:02d}", "a.txt", timeout=15)
        assert first.stop() == 0
    finally:
        first.close()
    return root


def _start_after_listing(tmp_path: Path, root: Path, **hooks: Any) -> Daemon:
    """The daemon (logging debug lines) whose watches start only once its early child has
    listed (and so holds its own inotify instance and watches)."""
    listed = tmp_path / "listed"
    return start_daemon(root, base_config(log={"level": "debug"}), env=hook_env(
        listed=str(listed), watch_wait=str(listed), **hooks))


def _problems(d: Daemon) -> list[dict[str, Any]]:
    return [line for line in d.logs() if line.get("level") in ("warning", "error")]


@pytest.mark.skipif(not is_root(), reason="a user namespace of its own with a watch limit")
def test_watches_refused_for_the_childs_are_added_once_it_has_ended(tmp_path: Path) -> None:
    """The watch limit leaves room for the daemon's own watches but not for the child's
    too: the daemon's watches that fail while the child holds its are added once it has
    ended, before READY; no error, no degraded run, and the runs are promoted by events."""
    root = _promoted_root(tmp_path)
    d = _start_after_listing(tmp_path, root, userns_watches=DAEMON_WATCHES + 5)
    try:
        d.wait_ready(timeout=30)
        assert _inotify_watches(d.proc.pid) == DAEMON_WATCHES
        assert d.events("watch.deferred")  # (a debug line)
        assert _problems(d) == []
        [ready] = d.events("daemon.ready")
        assert ready["observer"] == "inotify"
        [startup] = d.events("reconcile.finished", trigger="startup")
        assert startup["prescan"] is True
        for i in range(RUNS):
            write(root / "sessions" / f"r{i:02d}" / "output" / "b.txt", "b")
        for i in range(RUNS):
            d.wait_entry(f"r{i:02d}", "b.txt", timeout=15)
        assert not d.events("reconcile.started", trigger="degraded")
        assert d.stop() == 0
        assert _problems(d) == []
    finally:
        d.close()


@pytest.mark.skipif(not is_root(), reason="a user namespace of its own with an instance limit")
def test_the_childs_inotify_instance_is_never_the_daemons(tmp_path: Path) -> None:
    """One inotify instance allowed, taken by the early child: the daemon ends the child and
    makes its own rather than falling back to polling; a child made after its watches lists
    without an instance of its own, so the start-up listing still comes from it."""
    root = _promoted_root(tmp_path)
    d = _start_after_listing(tmp_path, root, userns_instances=1)
    try:
        d.wait_ready(timeout=30)
        [ready] = d.events("daemon.ready")
        assert ready["observer"] == "inotify"
        assert _problems(d) == []
        [startup] = d.events("reconcile.finished", trigger="startup")
        assert startup["prescan"] is True
        write(root / "sessions" / "r00" / "output" / "b.txt", "b")
        d.wait_entry("r00", "b.txt", timeout=15)
        assert d.stop() == 0
    finally:
        d.close()


def test_a_child_stopped_before_it_can_die_with_the_daemon_is_ended_by_a_stop(
        tmp_path: Path) -> None:
    """The early child stops (SIGSTOP) before it arranges to die with the daemon, and the
    daemon is stopped during its imports: the child is killed and reaped with the stop,
    never left behind as a stopped orphan."""
    root = tmp_path / "storage"
    write(root / "sessions" / "r1" / "output" / "a.txt", "a")
    gate = tmp_path / "import-may-go"
    d = start_daemon(root, base_config(), env=hook_env(import_wait=str(gate), child_stops=1))
    child = None
    try:
        [child] = wait_until(lambda: child_pids(d.proc.pid), timeout=20, interval=0.005,
                             what="the early child")
        wait_until(lambda: _state(child) == "T", timeout=10, what="the child stopped")
        d.send(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        wait_until(lambda: _state(child) in (None, "Z", "X"), timeout=10,
                   what="the stopped child ended")
    finally:
        gate.touch()
        if child is not None and _state(child) == "T":
            os.kill(child, signal.SIGKILL)
        d.close()


def _listing_of(sessions: Path, monkeypatch: pytest.MonkeyPatch | None = None,
                ended: frozenset[str] | None = frozenset()) -> dict[str, Any]:
    started = Prescan.start(sessions, (), 64)
    assert started is not None
    started.ended = lambda: ended
    listing = started.collect(threading.Event())
    assert listing is not None
    return dict(listing.runs)


def test_a_run_with_a_hard_linked_file_is_left_to_the_daemon(tmp_path: Path) -> None:
    """A file with another hard link may be written through that name, with no event in
    any folder the child watches: its run is not taken from the listing (the daemon stats
    it itself, after its watches)."""
    sessions = tmp_path / "sessions"
    write(sessions / "r1" / "output" / "plain.txt", "p")
    outside = write(tmp_path / "outside" / "h.txt", "h")
    write(sessions / "r2" / "output" / "plain.txt", "p")
    os.link(outside, sessions / "r2" / "output" / "h.txt")
    assert sorted(_listing_of(sessions)) == ["r1"]


def test_runs_watched_only_after_the_child_are_left_out_of_its_listing(
        tmp_path: Path) -> None:
    """The runs whose daemon watches were added only once the child ended (`ended`) are
    the daemon's to scan: left out of the listing (None: every run)."""
    sessions = tmp_path / "sessions"
    for run_id in ("r1", "r2", "r3"):
        write(sessions / run_id / "output" / "a.txt", "a")
    assert sorted(_listing_of(sessions, ended=frozenset({"r2", "gone"}))) == ["r1", "r3"]
    assert _listing_of(sessions, ended=None) == {}


def test_a_child_made_after_the_watches_takes_no_inotify_instance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child made once the daemon's watches are set needs none of its own: it lists
    even where no inotify instance can be had."""
    sessions = tmp_path / "sessions"
    write(sessions / "r1" / "output" / "a.txt", "a")

    def refused(*_: Any) -> Any:
        raise OSError(24, "inotify instance limit reached")
    monkeypatch.setattr(prescan_mod, "ListWatch", refused)
    started = prescan_mod.watches_set(None, "inotify", sessions, (), 64)
    assert started is not None
    listing = started.collect(threading.Event())
    assert listing is not None and sorted(listing.runs) == ["r1"]
