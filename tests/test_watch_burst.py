"""The watcher's cost a file in a burst (issue 15, ninth round), in-process on real inotify:
the emitter hands over every event a read brought in one loop, and a close reaches the
handler without an event object. Each still gets every file to the sink, strong, in write
order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from promoter import inotify
from promoter.watch import Watcher
from tests.daemon_helpers import no_thread_leak, wait_until, write
from tests.test_watch import Sink, watched_output

__all__ = ["no_thread_leak"]  # the autouse fixture below uses it


@pytest.fixture(autouse=True)
def _threads(no_thread_leak: None) -> None:
    """Every test here must leave no watcher thread behind."""


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    path = tmp_path / "sessions"
    path.mkdir()
    return path


def test_a_burst_takes_one_emitter_loop_a_read_not_one_an_event(
        sessions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """300 files: the emitter's loop ran once an event before (300 and more); now once for
    all the events ready in the group's queue, so far fewer, and every close still comes
    strong, in the kernel's order."""
    loops = 0
    queue_events = inotify.SupervisedInotifyEmitter.queue_events

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal loops
        loops += 1
        queue_events(self, *args, **kwargs)

    sink = Sink()
    w = Watcher(sessions, sink, [], kind="inotify")
    w.start()
    try:
        out = watched_output(w, sink, sessions, "r1")
        monkeypatch.setattr(inotify.SupervisedInotifyEmitter, "queue_events", counted)
        names = [f"b{i:03d}.txt" for i in range(300)]
        for name in names:
            write(out / name, "x")
        wait_until(lambda: all(sink.seen("changed", "r1", n, True) for n in names), 20)
        assert loops < len(names) // 2, loops
        with sink.lock:
            closes = [c[2] for c in sink.calls if c[0] == "changed" and c[3] and c[2] in names]
        assert closes == names
        assert w.quiesce(5.0)
    finally:
        w.stop()


def test_a_close_reaches_the_handler_as_its_path_alone(sessions: Path) -> None:
    """The emitter calls the handler's `closed(path)` for a plain close (no FileClosedEvent
    made), which concludes what dispatching that event did; a folder's events, moves and
    deletions still come as watchdog's events."""
    sink = Sink()
    w = Watcher(sessions, sink, [], kind="inotify")
    closed: list[str] = []
    dispatched: list[Any] = []
    handler = w._handler
    real_closed, real_dispatch = handler.closed, handler.dispatch
    handler.closed = lambda path: (closed.append(path), real_closed(path))[1]  # type: ignore[method-assign]
    handler.dispatch = lambda e: (dispatched.append(e), real_dispatch(e))[1]  # type: ignore[method-assign]
    w.start()
    try:
        out = watched_output(w, sink, sessions, "r1")
        write(out / "a.txt", "x")
        wait_until(lambda: sink.seen("changed", "r1", "a.txt", True), 5)
        (out / "a.txt").rename(out / "b.txt")
        wait_until(lambda: sink.seen("changed", "r1", "b.txt", True), 5)
        assert sink.seen("gone", "r1", "a.txt")
        assert str(out / "a.txt") in closed
        assert not any(type(e).__name__ == "FileClosedEvent" for e in dispatched)
        assert any(type(e).__name__ == "FileMovedEvent" for e in dispatched)
    finally:
        w.stop()
