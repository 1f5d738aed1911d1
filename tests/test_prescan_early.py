"""The start-up child made before the daemon's imports (issue 15, eighth round): it lists
under watches of its own, so a file changed between its listing and the daemon's watches
is never taken for an unchanged copy; its watches tell exactly the runs that changed; and
a stop during the imports still ends the start cleanly, the child with it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from promoter import prescan as prescan_mod
from promoter.listwatch import TOP, ListWatch, libc
from promoter.prescan import Prescan
from promoter.safeio import open_dir
from tests.daemon_helpers import base_config, child_pids, start_daemon, wait_until, write
from tests.fault_helpers import hook_env


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")

def _mark_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file the child touches once its listing is made (the test waits for it)."""
    listed = tmp_path / "listed"
    real = prescan_mod._listing

    def marked(*args: Any) -> Any:
        found = real(*args)
        listed.touch()
        return found
    monkeypatch.setattr(prescan_mod, "_listing", marked)
    return listed


def test_files_changed_between_the_early_listing_and_the_watches_are_promoted(
        tmp_path: Path) -> None:
    """The child lists before the daemon's module is even imported; then, before the
    daemon's watches exist, a promoted file is rewritten in place (same size), a file is
    added to a promoted run, a nested folder and a new run are made: each is promoted once,
    and the runs nothing touched are still taken from the listing."""
    root = tmp_path / "storage"
    sessions = root / "sessions"
    for run_id in ("old-1", "old-2"):
        write(sessions / run_id / "output" / "a.txt", "a")
        write(sessions / run_id / "output" / "keep.txt", "k")
    first = start_daemon(root, base_config())
    try:
        first.wait_ready(timeout=20)
        for run_id in ("old-1", "old-2"):
            first.wait_entry(run_id, "a.txt", timeout=15)
            first.wait_entry(run_id, "keep.txt", timeout=15)
        assert first.stop() == 0
    finally:
        first.close()
    listed, gate = tmp_path / "listed", tmp_path / "watch-may-go"
    d = start_daemon(root, base_config(), env=hook_env(listed=str(listed),
                                                       watch_wait=str(gate)))
    try:
        wait_until(listed.exists, timeout=20, what="the child's listing")
        assert listed.read_text() == "early"
        a = sessions / "old-1" / "output" / "a.txt"
        before = a.stat()
        a.write_text("b")  # the same size: only its times say it changed
        os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        names = {("old-1", "new.txt"), ("old-1", "sub/n.txt"), ("new-1", "x.txt")}
        for run_id, name in names:
            write(sessions / run_id / "output" / name, name)
        gate.touch()
        d.wait_ready(timeout=20)
        for run_id, name in names:
            d.wait_entry(run_id, name, timeout=15)
        wait_until(lambda: d.events("artifact.promoted", run_id="old-1", filename="a.txt"),
                   timeout=15, what="the rewritten file promoted")
        assert d.stop() == 0
        startup = d.events("reconcile.finished", trigger="startup")
        assert startup and startup[0]["prescan"] is True
        promoted = sorted((e["run_id"], e["filename"]) for e in d.events("artifact.promoted"))
        assert promoted == sorted(names | {("old-1", "a.txt")})
        assert (root / "artifacts" / "old-1" / "files" / "a.txt").read_text() == "b"
    finally:
        d.close()



def _watched(tmp_path: Path) -> tuple[ListWatch, Path, list[int]]:
    """A ListWatch on sessions/ (TOP) and on r1's and r2's output/."""
    sessions = tmp_path / "sessions"
    for run_id in ("r1", "r2"):
        write(sessions / run_id / "output" / "a.txt", "a")
    watch = ListWatch(libc())
    fds = [open_dir(sessions)]
    watch.add(fds[0], TOP)
    for run_id in ("r1", "r2"):
        fds.append(open_dir(sessions / run_id / "output"))
        watch.add(fds[-1], run_id)
    return watch, sessions, fds


def test_the_childs_watches_tell_the_runs_that_changed(tmp_path: Path) -> None:
    """Nothing changed: no run. A file touched in r1 and a new run folder: r1 and the new
    run, not r2; the folder watched is the one opened, whatever its name is now."""
    watch, sessions, fds = _watched(tmp_path)
    try:
        assert watch.changed() == set()
        os.utime(sessions / "r1" / "output" / "a.txt")
        (sessions / "r3").mkdir()
        assert watch.changed() == {"r1", "r3"}
        (sessions / "r2").rename(sessions / "r2-moved")
        write(sessions / "r2-moved" / "output" / "b.txt", "b")
        assert watch.changed() == {"r2", "r2-moved"}
    finally:
        for fd in [*fds, watch.fd]:
            os.close(fd)


def test_an_overflow_or_sessions_moved_tells_every_run(tmp_path: Path) -> None:
    """More events than the kernel queues (an overflow), or `sessions/` itself moved: no run
    can be told apart, so every one is left to the daemon (None)."""
    watch, sessions, fds = _watched(tmp_path)
    try:
        queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        files = [write(sessions / "r1" / "output" / name, name) for name in ("b", "c")]
        for i in range(queued + 10):  # (two names in turn: equal events in a row are merged)
            os.utime(files[i % 2], ns=(i, i))
        assert watch.changed() is None
        assert watch.changed() == set()  # (the queue was read to its end)
        sessions.rename(tmp_path / "elsewhere")
        assert watch.changed() is None
    finally:
        for fd in [*fds, watch.fd]:
            os.close(fd)


def test_the_childs_share_of_the_watch_limit_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child takes at most a part of the user's watch limit (the daemon's own watches
    must not fail for its): past it, adding fails, which leaves that run to the daemon."""
    monkeypatch.setattr("promoter.listwatch._limit", lambda: 8)
    watch = ListWatch(libc())
    fd = open_dir(tmp_path)
    try:
        watch.add(fd, "r1")
        watch.add(fd, "r2")
        with pytest.raises(OSError, match="share of the inotify watch limit"):
            watch.add(fd, "r3")
    finally:
        os.close(fd)
        os.close(watch.fd)


def test_a_run_changed_before_go_is_left_to_the_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's listing is made, then r1 changes before the daemon says its watches are
    set: the listing comes without r1 (scanned in the daemon) and with r2 as it was."""
    sessions = tmp_path / "sessions"
    for run_id in ("r1", "r2"):
        write(sessions / run_id / "output" / "a.txt", "a")
    listed = _mark_listing(tmp_path, monkeypatch)
    started = Prescan.start(sessions, (), 64)
    assert started is not None
    wait_until(listed.exists, timeout=20, what="the child's listing")
    write(sessions / "r1" / "output" / "a.txt", "changed")
    listing = started.collect(threading.Event())
    assert listing is not None
    assert sorted(listing.runs) == ["r2"] and sorted(listing.ctimes) == ["r2"]
    assert listing.runs["r2"]["a.txt"][0] == 1


def test_a_sigterm_to_the_group_while_the_child_lists_is_one_clean_stop(
        tmp_path: Path) -> None:
    """SIGTERM to the daemon and its child (systemd stops a unit's every process) after the
    early child is made, before the daemon's own handlers: one `daemon.stopping` line (the
    parent's, none from the child), exit 0, and the child ends too."""
    root = tmp_path / "storage"
    for i in range(50):
        write(root / "sessions" / f"r{i}" / "output" / "a.txt", "a")
    gate = tmp_path / "import-may-go"
    d = start_daemon(root, base_config(), env=hook_env(import_wait=str(gate)))
    try:
        [child] = wait_until(lambda: child_pids(d.proc.pid), timeout=20, interval=0.005,
                             what="the early child")
        os.kill(child, signal.SIGTERM)  # as a stop of the whole unit sends it to each
        d.send(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        [line] = d.logs()
        assert (line["event"], line["signal"], line["phase"]) == (
            "daemon.stopping", "SIGTERM", "starting")
        wait_until(lambda: _gone(child), timeout=10, what="the child ended")
    finally:
        gate.touch()
        d.close()


def test_a_sessions_folder_replaced_before_go_leaves_every_run_to_the_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sessions` a link re-pointed to another folder after the listing (no event in the one
    listed): the daemon now watches another folder than the child listed, so the listing
    comes without any run."""
    for side in ("a", "b"):
        write(tmp_path / side / "r1" / "output" / "f.txt", side)
    link = tmp_path / "sessions"
    link.symlink_to(tmp_path / "a")
    listed = _mark_listing(tmp_path, monkeypatch)
    started = Prescan.start(link, (), 64)
    assert started is not None
    wait_until(listed.exists, timeout=20, what="the child's listing")
    (tmp_path / "next").symlink_to(tmp_path / "b")
    (tmp_path / "next").replace(link)
    listing = started.collect(threading.Event())
    assert listing is not None and listing.runs == {}


def test_without_inotify_watches_the_early_child_is_ended_and_reaped(tmp_path: Path) -> None:
    """The daemon fell back to polling (or has no watcher): the early child's listing could
    not be trusted past its own watches, so it is killed and reaped, and none is made."""
    sessions = tmp_path / "sessions"
    write(sessions / "r1" / "output" / "a.txt", "a")
    started = Prescan.start(sessions, (), 64)
    assert started is not None
    assert prescan_mod.watches_set(started, "polling", sessions, (), 64) is None
    with pytest.raises(ChildProcessError):
        os.waitpid(started.pid, os.WNOHANG)  # reaped already
