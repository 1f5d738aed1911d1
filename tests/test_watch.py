"""The watcher in-process: real inotify on tmp_path with a recording sink, and scripted fake
observers for supervision, so each of watchdog's silent failures is shown handled."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from promoter.observers import _polling_listdir, bounded_walk, wanted_folder
from promoter.watch import Watcher
from tests.daemon_helpers import FakeFactory, no_thread_leak, wait_until, write
from tests.fault_site.watch_faults import install as install_faults

__all__ = ["no_thread_leak"]  # the autouse fixture below uses it

Call = tuple[Any, ...]


@pytest.fixture(autouse=True)
def _threads(no_thread_leak: None) -> None:
    """Every test here must leave no watcher thread behind."""


class Sink:
    """Records what the watcher concludes, thread-safely; `fail` makes a method raise."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.fail: str | None = None

    def _add(self, call: Call) -> None:
        if self.fail is not None and call[0] == self.fail:
            raise RuntimeError("sink broke")
        with self.lock:
            self.calls.append(call)

    def file_changed(self, run_id: str, filename: str, strong: bool,
                     open_unknown: bool = False) -> None:
        self._add(("changed", run_id, filename, strong))

    def file_nudged(self, run_id: str, filename: str) -> None:
        self._add(("nudged", run_id, filename))

    def file_gone(self, run_id: str, filename: str) -> None:
        self._add(("gone", run_id, filename))

    def folder_gone(self, run_id: str, folder: str) -> None:
        self._add(("folder_gone", run_id, folder))

    def context_changed(self, run_id: str) -> None:
        self._add(("context", run_id))

    def session_gone(self, run_id: str) -> None:
        self._add(("session_gone", run_id))

    def catch_up(self, runs: frozenset[str] | None, reason: str) -> None:
        self._add(("catch_up", runs, reason))

    def seen(self, *call: Any) -> bool:
        with self.lock:
            return call in self.calls

    def of(self, kind: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c[0] == kind]


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    path = tmp_path / "sessions"
    path.mkdir()
    return path


@pytest.fixture
def watched(sessions: Path) -> Iterator[tuple[Watcher, Sink]]:
    sink = Sink()
    w = Watcher(sessions, sink, [".*", "*.tmp"], kind="inotify")
    w.start()
    yield w, sink
    w.stop()


def watched_output(w: Watcher, sink: Sink, sessions: Path, run: str) -> Path:
    """A run whose output/ is surely watched: a probe file's close has come through (in a
    folder made a moment ago, the first writes may come before its watch)."""
    out = sessions / run / "output"
    out.mkdir(parents=True, exist_ok=True)

    def probe() -> bool:
        write(out / "probe", "p")
        return sink.seen("changed", run, "probe", True)
    try:
        wait_until(probe, interval=0.05, what="a watched output/")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; health {w.health()}; calls {sink.calls[-5:]}") from None
    return out


def inotify_watches() -> int:
    """Watches held by this process's inotify instances (/proc/self/fdinfo)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                total += sum(1 for line in fh if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


# -- routing ---------------------------------------------------------------------------


def test_writes_are_weak_and_the_close_is_strong(watched: tuple[Watcher, Sink],
                                                sessions: Path) -> None:
    """Creating and writing a file are weak hints; closing it after writing is the strong one."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    with open(out / "a.txt", "w") as f:
        f.write("a")
        f.flush()
        wait_until(lambda: sink.seen("changed", "r1", "a.txt", False))
        assert not sink.seen("changed", "r1", "a.txt", True)
    wait_until(lambda: sink.seen("changed", "r1", "a.txt", True))


def test_rename_is_gone_then_moved_in(watched: tuple[Watcher, Sink], sessions: Path) -> None:
    """A rename inside output/ forgets the old name and hands over the new one as written."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    write(out / "draft.txt", "d")
    wait_until(lambda: sink.seen("changed", "r1", "draft.txt", True))
    os.rename(out / "draft.txt", out / "final.txt")
    wait_until(lambda: sink.seen("changed", "r1", "final.txt", True))
    assert sink.seen("gone", "r1", "draft.txt")


def test_excluded_and_temporary_names_are_filtered(watched: tuple[Watcher, Sink],
                                                   sessions: Path) -> None:
    """Excluded globs on any component and .promoter- names never reach the sink; a rename
    from an excluded name arrives as the final name only."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    for name in (".hidden", "x.tmp", ".git/config", "a/.cache/b", ".promoter-123"):
        write(out / name, "no")
    write(out / "report.csv.tmp", "r")
    os.rename(out / "report.csv.tmp", out / "report.csv")
    wait_until(lambda: sink.seen("changed", "r1", "report.csv", True))
    names = {c[2] for c in sink.calls if c[0] in ("changed", "gone") and c[1] == "r1"}
    assert names == {"probe", "report.csv"}


def test_input_and_other_run_files_are_ignored(watched: tuple[Watcher, Sink],
                                               sessions: Path) -> None:
    """input/ and files beside output/ make no calls; run.json and attribution.jsonl make
    context refreshes."""
    w, sink = watched
    watched_output(w, sink, sessions, "r1")
    write(sessions / "r1" / "input" / "data.csv", "i")
    write(sessions / "r1" / "notes.txt", "n")
    write(sessions / "r1" / "run.json", "{}")
    write(sessions / "r1" / "attribution.jsonl", "\n")
    wait_until(lambda: len(sink.of("context")) >= 2)
    assert {c[2] for c in sink.of("changed")} == {"probe"}


def test_deletions_map_to_forgetting(watched: tuple[Watcher, Sink], sessions: Path) -> None:
    """A deleted file, a deleted folder under output/ and a deleted session folder each have
    their call."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    write(out / "dir" / "f.txt", "f")  # a new folder: maybe no close event, see above
    wait_until(lambda: sink.seen("changed", "r1", "dir/f.txt", True)
               or sink.seen("changed", "r1", "dir/f.txt", False))
    (out / "dir" / "f.txt").unlink()
    wait_until(lambda: sink.seen("gone", "r1", "dir/f.txt"))
    (out / "dir").rmdir()
    wait_until(lambda: sink.seen("folder_gone", "r1", "dir"))
    (out / "probe").unlink()
    out.rmdir()
    (sessions / "r1").rmdir()
    wait_until(lambda: sink.seen("session_gone", "r1"))


def test_folder_moved_in_brings_only_synthetic_weak_events(watched: tuple[Watcher, Sink],
                                                          sessions: Path) -> None:
    """A folder renamed into output/ with its files already written gives no close event
    (watchdog synthesizes "created" ones): every file arrives, as a weak hint."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    staging = sessions.parent / "staging"  # outside every watched folder: no IN_MOVED_FROM
    for i in range(3):
        write(staging / "deep" / f"f{i}", "x")
    os.rename(staging, out / "moved")
    for i in range(3):
        wait_until(lambda i=i: sink.seen("changed", "r1", f"moved/deep/f{i}", False))
    assert not [c for c in sink.of("changed") if c[2].startswith("moved/") and c[3]]


def test_invalid_run_ids_are_warned_about_once(watched: tuple[Watcher, Sink],
                                               sessions: Path) -> None:
    """A folder under sessions/ that is no valid run id is ignored with one warning."""
    w, sink = watched
    with structlog.testing.capture_logs() as logs:
        write(sessions / "bad id" / "output" / "a", "a")
        write(sessions / "bad id" / "output" / "b", "b")
        watched_output(w, sink, sessions, "ok")
    assert [e["name"] for e in logs if e["event"] == "run.ignored"] == ["bad id"]
    assert not [c for c in sink.calls if c[1] == "bad id"]


# -- scale -----------------------------------------------------------------------------


def test_one_schedule_and_no_input_watches_whatever_the_runs(watched: tuple[Watcher, Sink],
                                                             sessions: Path) -> None:
    """Fifty runs still mean three watcher threads, and input/ trees hold no inotify watch:
    one watch for sessions/, one per run folder and one per output/ folder."""
    w, sink = watched
    for i in range(50):
        (sessions / f"run{i}" / "input" / "a" / "b").mkdir(parents=True)
        (sessions / f"run{i}" / "output").mkdir()
    watched_output(w, sink, sessions, "run49")
    wait_until(lambda: inotify_watches() == 1 + 50 * 2, what="watches to settle")
    names = [t.name for t in threading.enumerate() if t.name.startswith("promoter-watch")]
    assert sorted(names) == ["promoter-watch-dispatch", "promoter-watch-emitter",
                             "promoter-watch-inotify"]


def test_wanted_folders() -> None:
    """Watches go to sessions/, valid run folders and output/ with everything below it."""
    root = "/s"
    assert wanted_folder(root, "/s")
    assert wanted_folder(root, "/s/run-1")
    assert wanted_folder(root, "/s/run-1/output")
    assert wanted_folder(root, "/s/run-1/output/a/b")
    assert not wanted_folder(root, "/s/run-1/input")
    assert not wanted_folder(root, "/s/run-1/input/output")
    assert not wanted_folder(root, "/s/bad id")
    assert not wanted_folder(root, "/elsewhere")


def test_polling_lists_only_what_is_watched(sessions: Path) -> None:
    """The polling observer's listing skips invalid runs, input/ and other run files."""
    write(sessions / "r1" / "output" / "a", "a")
    write(sessions / "r1" / "input" / "big", "b")
    write(sessions / "r1" / "run.json", "{}")
    write(sessions / "bad id" / "output" / "x", "x")
    listdir = _polling_listdir(str(sessions), DepthReport(64))
    assert [e.name for e in listdir(str(sessions))] == ["r1"]
    assert sorted(e.name for e in listdir(str(sessions / "r1"))) == ["output", "run.json"]
    assert [e.name for e in listdir(str(sessions / "r1" / "output"))] == ["a"]


class DepthReport:
    """The two Report members the walks use: the bound, and the folders found past it."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.deep: list[str] = []

    def too_deep(self, path: str) -> None:
        self.deep.append(path)


def test_walks_stop_at_the_depth_bound_and_report_it(sessions: Path) -> None:
    """Polling and inotify walks enter output/ down to max_depth only; a deeper folder is
    reported, never listed or entered."""
    out = sessions / "r1" / "output"
    write(out / "a" / "b" / "f", "f")
    write(out / "a" / "b" / "c" / "g", "g")
    write(sessions / "r1" / "input" / "x" / "y", "y")
    report = DepthReport(2)
    listdir = _polling_listdir(str(sessions), report)
    assert [e.name for e in listdir(str(out / "a" / "b"))] == ["f"]
    assert report.deep == [str(out / "a" / "b" / "c")]
    report.deep.clear()
    walked = [here for here, _, _ in bounded_walk(str(sessions), str(sessions), report)]
    assert sorted(walked) == sorted([str(sessions), str(sessions / "r1"), str(out),
                                     str(out / "a"), str(out / "a" / "b")])
    assert report.deep == [str(out / "a" / "b" / "c")]


def test_the_walk_enters_each_folder_before_listing_it(sessions: Path) -> None:
    """bounded_walk calls `enter` (the inotify group's watch add) before it lists a folder:
    a folder made from `enter` is in the listing, and is itself entered and walked."""
    out = sessions / "r1" / "output"
    (out / "a").mkdir(parents=True)
    entered: list[str] = []

    def enter(here: str) -> None:
        entered.append(here)
        if os.path.basename(here) in ("output", "a"):
            os.mkdir(os.path.join(here, "made-on-enter"))

    listed = {here: sorted(d.name for d in dirs)
              for here, dirs, _ in bounded_walk(str(out), str(sessions), DepthReport(8), enter)}
    assert listed[str(out)] == ["a", "made-on-enter"]
    assert listed[str(out / "a")] == ["made-on-enter"]
    assert sorted(entered) == sorted(listed) == sorted(
        str(p) for p in (out, out / "a", out / "made-on-enter", out / "a" / "made-on-enter"))


def test_polling_observer_reports_changes(sessions: Path) -> None:
    """With the polling observer, new files are reported (as weak hints: no close events)."""
    sink = Sink()
    w = Watcher(sessions, sink, [], kind="polling")
    w.start()
    try:
        assert w.in_use == "polling"
        write(sessions / "r1" / "output" / "a.txt", "a")
        wait_until(lambda: sink.seen("changed", "r1", "a.txt", False), timeout=10)
    finally:
        w.stop()


# -- watchdog's silent failures --------------------------------------------------------


def test_a_raising_handler_is_caught_logged_and_caught_up(watched: tuple[Watcher, Sink],
                                                          sessions: Path) -> None:
    """An exception while handling an event never reaches watchdog: it is logged as
    watch.error, the run is caught up, and later events still arrive."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    with structlog.testing.capture_logs() as logs:
        sink.fail = "changed"
        write(out / "boom.txt", "b")
        wait_until(lambda: sink.seen("catch_up", frozenset({"r1"}), "watch-error:handler"))
        sink.fail = None
        write(out / "after.txt", "a")
        wait_until(lambda: sink.seen("changed", "r1", "after.txt", True))
    assert any(e["event"] == "watch.error" and e["source"] == "handler" for e in logs)
    assert w.health() is None


def test_an_overflow_in_watchdogs_own_path_is_reported_once(watched: tuple[Watcher, Sink],
                                                            sessions: Path) -> None:
    """IN_Q_OVERFLOW through watchdog's InotifyFD.handle_event (which only logs it and
    rebuilds watches) becomes one watch.overflow and one catch-up of every run."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

    w, sink = watched
    watched_output(w, sink, sessions, "r1")
    fd = w._observer._fd  # type: ignore[union-attr]  # the observer's inotify reader
    with structlog.testing.capture_logs() as logs:
        fd.handle_event(InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b""))
    assert sink.of("catch_up") == [("catch_up", None, "overflow")]
    assert [e["event"] for e in logs if e["event"].startswith("watch.")] == ["watch.overflow"]
    assert w.overflows == 1
    write(sessions / "r1" / "output" / "after.txt", "a")  # watches were rebuilt
    wait_until(lambda: sink.seen("changed", "r1", "after.txt", True))


def test_watchdog_warnings_in_its_log_trigger_a_catch_up(watched: tuple[Watcher, Sink]) -> None:
    """Whatever watchdog only logs is not lost: a warning is a watch.error and a catch-up of
    every run; one that speaks of an overflow counts as an overflow."""
    _, sink = watched
    logger = logging.getLogger("watchdog.observers.inotify")
    logger.warning("Unable to rebuild recursive inotify watches below %r", b"/x")
    assert sink.seen("catch_up", None, "watch-error:watchdog.observers.inotify")
    logger.warning("Inotify queue overflowed; reconciling recursive watches below %r", b"/x")
    assert sink.seen("catch_up", None, "overflow")
    logger.info("routine")
    assert len(sink.of("catch_up")) == 2


def test_a_watch_that_cannot_be_added_is_reported(sessions: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose watch fails (ENOSPC, injected) is a watch.error naming the path, a
    catch-up of its run, and the run is degraded until a restart."""
    install_faults({"nowatch"}, monkeypatch.setattr)
    sink = Sink()
    w = Watcher(sessions, sink, [], kind="inotify")
    w.start()
    try:
        watched_output(w, sink, sessions, "r1")
        (sessions / "r1" / "output" / "fault-nowatch-x").mkdir()
        wait_until(lambda: sink.seen("catch_up", frozenset({"r1"}), "watch-error:add_watch"))
        assert w.degraded_runs() == frozenset({"r1"})
    finally:
        w.stop()


def test_a_dead_dispatcher_is_noticed_and_restarted(sessions: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An error that escapes the handler ends the thread that calls it (the emitter, which
    dispatches itself); the watcher hears of it at once, and supervise() restarts the
    observer and catches every run up."""
    install_faults({"kill"}, monkeypatch.setattr)
    sink = Sink()
    trouble = threading.Event()
    w = Watcher(sessions, sink, [], kind="inotify", on_trouble=trouble.set)
    w.start()
    try:
        out = watched_output(w, sink, sessions, "r1")
        write(out / "fault-kill.txt", "k")
        assert trouble.wait(10)
        assert w.health() is not None and "promoter-watch-emitter" in w.health()  # type: ignore[operator]
        assert w.supervise() is None
        assert w.health() is None and w.restarts == 1
        assert sink.seen("catch_up", None, "watch-restart")
        write(out / "after.txt", "a")
        wait_until(lambda: sink.seen("changed", "r1", "after.txt", True))
    finally:
        w.stop()


def test_a_deleted_sessions_folder_is_noticed(sessions: Path) -> None:
    """watchdog stops its emitter when the watched folder itself is deleted; the watcher
    reports it and restarts once the folder is back."""
    sink = Sink()
    trouble = threading.Event()
    w = Watcher(sessions, sink, [], kind="inotify", on_trouble=trouble.set)
    w.start()
    try:
        sessions.rmdir()
        assert trouble.wait(10)
        assert w.supervise(now=0) is not None  # cannot watch a missing folder: retry later
        assert w.degraded_runs() is None
        sessions.mkdir()
        assert w.supervise(now=1e9) is None and w.health() is None
    finally:
        w.stop()


# -- supervision with a scripted observer ----------------------------------------------


def test_auto_falls_back_to_polling_when_inotify_is_unusable(sessions: Path) -> None:
    """observer = auto uses polling when inotify cannot start, and says so."""
    factory = FakeFactory(broken={"inotify"})
    w = Watcher(sessions, Sink(), [], kind="auto", factory=factory)
    with structlog.testing.capture_logs() as logs:
        w.start()
    assert w.in_use == "polling" and [o.kind for o in factory.made] == ["polling"]
    assert any(e["event"] == "watch.error" and e["action"] == "trying polling" for e in logs)
    w.stop()


def test_unhealthy_observer_is_replaced(sessions: Path) -> None:
    """supervise() stops an observer with a dead thread, starts a new one and catches up."""
    factory, sink = FakeFactory(), Sink()
    w = Watcher(sessions, sink, [], kind="inotify", factory=factory)
    w.start()
    assert w.supervise() is None and len(factory.made) == 1
    factory.made[0].trouble = "promoter-watch-emitter is not running"
    assert w.health() == "promoter-watch-emitter is not running"
    assert w.supervise() is None
    assert factory.made[0].stopped and factory.made[1].started
    assert sink.of("catch_up") == [("catch_up", None, "watch-restart")]
    w.stop()


def test_failed_restarts_back_off_and_catch_up_meanwhile(sessions: Path) -> None:
    """While no observer can start, restarts are spaced out and every run is caught up."""
    factory, sink = FakeFactory(), Sink()
    w = Watcher(sessions, sink, [], kind="inotify", factory=factory)
    w.start()
    factory.made[0].trouble = "dead"
    factory.broken = {"inotify"}
    first = w.supervise(now=100.0)
    assert first is not None and first > 100.0
    assert w.supervise(now=100.1) == first  # not before its time
    second = w.supervise(now=first)
    assert second is not None and second - first > first - 100.0
    assert sink.of("catch_up") == [("catch_up", None, "watch-down")] * 2
    factory.broken = set()
    assert w.supervise(now=second) is None and w.health() is None
    w.stop()


def test_died_reports_after_stop_are_ignored(sessions: Path) -> None:
    """Threads ending because the watcher stops them are not trouble."""
    trouble = threading.Event()
    w = Watcher(sessions, Sink(), [], kind="inotify", on_trouble=trouble.set)
    w.start()
    w.stop()
    assert not trouble.is_set()


def test_quiesce_returns_once_events_are_delivered(watched: tuple[Watcher, Sink],
                                                   sessions: Path) -> None:
    """After quiesce(), the close of every file written before it has reached the sink."""
    w, sink = watched
    out = watched_output(w, sink, sessions, "r1")
    for i in range(200):
        write(out / f"q{i}", "q")
    assert w.quiesce(5.0)
    missing = [i for i in range(200) if not sink.seen("changed", "r1", f"q{i}", True)]
    assert not missing, (missing, w._observer.idle())  # type: ignore[union-attr]


def test_a_files_create_and_writes_are_superseded_by_its_close_in_one_read() -> None:
    """Within one read, a file's creation and writes followed by its own write or close are
    dropped (the last touch alone decides its settle state); folders, moves, deletions,
    attributes, and what follows a close or a deletion of the name are all kept."""
    from watchdog.observers.inotify_c import InotifyConstants as C

    from promoter.inotify import superseded

    def ev(wd: int, mask: int, name: bytes, cookie: int = 0) -> Any:
        return (wd, mask, cookie, name)

    create, modify, close = C.IN_CREATE, C.IN_MODIFY, C.IN_CLOSE_WRITE
    burst = [ev(1, create, b"a"), ev(1, create, b"b"), ev(1, modify, b"a"),
             ev(1, modify, b"b"), ev(1, close, b"a"), ev(2, modify, b"a"), ev(1, close, b"b")]
    assert superseded(burst) == [burst[4], burst[5], burst[6]]  # wd 2's "a" is another file
    still_open = [ev(1, create, b"a"), ev(1, modify, b"a")]
    assert superseded(still_open) == [still_open[1]]  # weak, as the write alone says
    kept = [
        ev(1, create | C.IN_ISDIR, b"d"), ev(1, close, b"d"),  # a folder: never dropped
        ev(1, modify, b"m"), ev(1, C.IN_MOVED_FROM, b"m", 7), ev(1, close, b"m"),
        ev(1, create, b"x"), ev(1, C.IN_DELETE, b"x"), ev(1, create, b"x"),
        ev(1, C.IN_ATTRIB, b"t"), ev(1, close, b"t"),
        ev(1, close, b"w"), ev(1, modify, b"w"),  # written again after its close: weak
    ]
    assert superseded(kept) == kept
    assert superseded([]) == []


def test_a_burst_reaches_the_sink_as_one_strong_change_a_file(sessions: Path) -> None:
    """300 files written at once (900 kernel events) reach the sink as about one call a
    file, each strong, in write order: the weak ones their close superseded never travel."""
    sink = Sink()
    w = Watcher(sessions, sink, [], kind="inotify")
    w.start()
    try:
        out = watched_output(w, sink, sessions, "r1")
        names = [f"s{i:03d}.txt" for i in range(300)]
        for name in names:
            write(out / name, "x")
        wait_until(lambda: all(sink.seen("changed", "r1", n, True) for n in names), 20)
        with sink.lock:
            calls = [c for c in sink.calls if c[0] == "changed" and c[2] in names]
        assert len(calls) < 2 * len(names), len(calls)  # 900 before
        assert [c[2] for c in calls if c[3]] == names
    finally:
        w.stop()


def test_events_reach_the_sink_from_the_emitter_in_few_wakes(sessions: Path) -> None:
    """The handler runs in the emitter thread (no dispatcher hop), and a burst already queued
    in the kernel wakes the emitter once a read, not once an event, in the kernel's order."""
    from promoter import inotify

    sink = Sink()
    threads: set[str] = set()
    file_changed = sink.file_changed

    def changed(run_id: str, filename: str, strong: bool, open_unknown: bool = False) -> None:
        threads.add(threading.current_thread().name)
        file_changed(run_id, filename, strong, open_unknown)

    sink.file_changed = changed  # type: ignore[method-assign]
    wakes = 0
    wake = inotify._HeldQueue.wake

    def counted(self: Any) -> None:
        nonlocal wakes
        wakes += 1
        wake(self)

    w = Watcher(sessions, sink, [], kind="inotify")
    w.start()
    try:
        out = watched_output(w, sink, sessions, "r1")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(inotify._HeldQueue, "wake", counted)
            names = [f"b{i:03d}.txt" for i in range(300)]
            for name in names:
                write(out / name, "x")  # create, modify, close: 900 events
            wait_until(lambda: all(sink.seen("changed", "r1", n, True) for n in names), 20)
        assert threads == {"promoter-watch-emitter"}
        assert wakes < 300, wakes  # one a read of the reader; it was one an event
        with sink.lock:
            closes = [c[2] for c in sink.calls if c[0] == "changed" and c[3] and c[2] in names]
        assert closes == names
    finally:
        w.stop()


def test_a_files_close_is_handed_over_as_watchdogs_own_path_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The emitter's shortcut for a file closed after a write hands the handler exactly what
    watchdog's own path does (its FileClosedEvent; the folder's modification filtered out),
    without taking that path; any other mask (a folder's, a write, a creation, attributes,
    a deletion) takes watchdog's path."""
    import functools
    import types

    from watchdog.events import FileClosedEvent
    from watchdog.observers.inotify import InotifyFullEmitter
    from watchdog.observers.inotify_c import InotifyConstants as C
    from watchdog.observers.inotify_c import InotifyEvent
    from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent

    from promoter.inotify import SupervisedInotifyEmitter
    from promoter.observers import EVENT_FILTER

    masks = [C.IN_CLOSE_WRITE, C.IN_CLOSE_WRITE | C.IN_ISDIR, C.IN_MODIFY, C.IN_CREATE,
             C.IN_CREATE | C.IN_ISDIR, C.IN_ATTRIB, C.IN_DELETE, C.IN_CLOSE_WRITE]
    events = [PathedInotifyEvent(InotifyEvent(1, mask, 0, b"f"), f"/s/r/output/f{i}".encode())
              for i, mask in enumerate(masks)]

    def emitter(seen: list[Any]) -> SupervisedInotifyEmitter:
        made = SupervisedInotifyEmitter.__new__(SupervisedInotifyEmitter)
        made._event_filter = frozenset(EVENT_FILTER)
        made._watch = types.SimpleNamespace(path="/s", is_recursive=True)
        made.handler = types.SimpleNamespace(dispatch=seen.append)
        return made

    slow: list[Any] = []
    long_way = functools.partial(InotifyFullEmitter.build_and_queue_event, emitter(slow))
    for event in events:
        long_way(event)
    taken: list[Any] = []
    original = InotifyFullEmitter.build_and_queue_event
    monkeypatch.setattr(InotifyFullEmitter, "build_and_queue_event",
                        lambda *a, **kw: (taken.append(a[1]), original(*a, **kw))[1])
    fast: list[Any] = []
    short_way = emitter(fast)
    for event in events:
        short_way.build_and_queue_event(event)
    assert fast == slow and len(fast) == 7  # the folder's close is no event of the filter's
    assert fast[0] == FileClosedEvent("/s/r/output/f0")
    assert taken == events[1:-1]  # the two plain closes took the shortcut
