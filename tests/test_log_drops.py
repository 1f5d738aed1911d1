"""The log sink's accounting: every line a full queue refused is counted in a `log.dropped`
line that is itself never refused, and lifecycle lines, warnings and errors outlast a
queue full of per-file info lines (the breaker found a count of 1 for 9,778 lost lines)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from promoter.logsink import INFO, LIFECYCLE, URGENT, LogSink
from promoter.tomlout import dumps
from tests.daemon_helpers import NotifySocket, base_config, wait_until
from tests.test_log_sink import (
    SMALL_QUEUE,
    _drain,
    _env,
    _files,
    _lines,
    _nonblocking,
    _promoted,
    read_all,
)


def _count(lines: list[str]) -> tuple[list[str], list[int]]:
    """The lines kept, and the counts the reports gave."""
    return ([x for x in lines if not x.startswith("dropped ")],
            [int(x.split()[1]) for x in lines if x.startswith("dropped ")])


@contextlib.contextmanager
def _read_slowly(sink: LogSink, r: int, w: int, pause: float,
                 chunk: int | None = None) -> Iterator[bytearray]:
    """A reader thread taking `chunk` bytes (or all the pipe holds) every `pause` seconds;
    at the end the rest is read, and the sink and the pipe are closed."""
    got = bytearray()
    stop = threading.Event()

    def slow_reader() -> None:
        while not stop.is_set():
            if chunk is None:
                got.extend(_drain(r))
            else:
                with contextlib.suppress(BlockingIOError):
                    got.extend(os.read(r, chunk))
            stop.wait(pause)
    reader = threading.Thread(target=slow_reader, name="slow-reader")
    reader.start()
    try:
        yield got
    finally:
        stop.set()
        reader.join(10)
        got.extend(_drain(r))
        sink.close()
        os.close(w)
        os.close(r)


def test_drops_while_a_slow_reader_drains_the_queue_all_add_up() -> None:
    """A queue of 100 that fills again and again while a slow reader drains it: the
    reports (each rendered by the writer, never refused) add up to the lines lost."""
    r, w = os.pipe()
    _nonblocking(r)
    sink = LogSink(w, report=lambda n: f"dropped {n}", max_lines=100)
    for i in range(2000):  # the pipe and the queue full before the reader comes
        sink.put(f"line {i:05d} " + "y" * 100)
    with _read_slowly(sink, r, w, 0.001, chunk=4096) as got:
        for i in range(2000, 20000):
            sink.put(f"line {i:05d} " + "y" * 100)
        wait_until(lambda: sink.flush(0), 30, what="everything written")
    kept, reports = _count(got.decode().splitlines())
    assert kept == sorted(kept)
    assert reports and all(n > 0 for n in reports)
    assert len(kept) + sum(reports) == 20000
    assert sink.dropped == sum(reports)


def test_lifecycle_lines_and_warnings_outlast_a_queue_full_of_info_lines() -> None:
    """Nobody reads: info lines are refused past the bound, warnings use the reserve
    above it, and a lifecycle line still finds room once the warnings used theirs."""
    r, w = os.pipe()
    _nonblocking(r)
    sink = LogSink(w, report=lambda n: f"dropped {n}", max_lines=50)
    for i in range(2000):
        sink.put(f"info {i:04d} " + "i" * 200, INFO)
    for i in range(2000):
        sink.put(f"warn {i:04d}", URGENT)
    sink.put("daemon.stopping", LIFECYCLE)
    sink.put("info after", INFO)  # refused: the queue is still full
    got = read_all(sink, r, w, 20, "everything written")
    kept, reports = _count(got.decode().splitlines())
    warned = [x for x in kept if x.startswith("warn ")]
    assert 400 <= len(warned) < 2000  # the reserve (500 lines), not more
    assert "daemon.stopping" in kept and "info after" not in kept
    assert len(kept) + sum(reports) == 4002


def test_lines_left_at_exit_are_counted_in_a_last_report() -> None:
    """At exit, a reader too slow for the queue: after the flush's time, the lines left
    are counted in one report where they were, and the lifecycle line behind them is
    still written (daemon.stopped behind seconds of promotions)."""
    r, w = os.pipe()
    _nonblocking(r)
    sink = LogSink(w, report=lambda n: f"dropped {n}")
    for i in range(200):
        sink.put(f"line {i:03d} " + "z" * 2000)  # 400 KB: over a second at the reader's pace
    sink.put("daemon.stopped", LIFECYCLE)
    # a pipe's 64 KiB every 0.2 s: 0.2 s of flush moves about 200 KB, half the lines, unless
    # the flush starts a second late (every 0.05 s moved ~380 KB of the 400: a flake, loaded)
    with _read_slowly(sink, r, w, 0.2) as got:
        assert sink.finish(timeout=0.2, last=20)
    kept, reports = _count(got.decode().splitlines())
    assert len(reports) == 1 and got.decode().splitlines()[-2].startswith("dropped ")
    assert kept[-1] == "daemon.stopped"
    assert len(kept) + reports[0] == 201 and reports[0] > 0


def test_a_daemon_read_slowly_counts_every_lost_line_and_logs_its_stop(tmp_path: Path) -> None:
    """The real program (queue of 50), stderr unread while 600 files are promoted, then
    read slowly through SIGTERM: the reports account for every promotion not seen, and
    daemon.stopping and daemon.stopped are there (a full queue used to lose them)."""
    root = tmp_path / "root"
    (root / "sessions").mkdir(parents=True)
    cfg = tmp_path / "promoter.toml"
    cfg.write_text(dumps(base_config()))
    r, w = os.pipe()
    _nonblocking(r)
    notify = NotifySocket()
    proc = subprocess.Popen(
        [sys.executable, "-c", SMALL_QUEUE, "run", "--root", str(root), "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=w, stdin=subprocess.DEVNULL,
        env={**_env(), "NOTIFY_SOCKET": notify.path})
    os.close(w)
    got = bytearray()
    stop = threading.Event()

    def slow_reader() -> None:
        while not stop.is_set():
            got.extend(_drain(r))
            stop.wait(0.02)
    reader = threading.Thread(target=slow_reader, name="slow-reader")
    try:
        notify.wait_for("READY=1", 30)
        names = _files(root, 3, 200)
        wait_until(lambda: _promoted(root, names), 60, what="600 files promoted")
        reader.start()
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        got.extend(_drain(r))
        os.close(r)
        notify.close()
    lines = _lines(bytes(got))
    seen = sum(1 for line in lines if line["event"] == "artifact.promoted")
    drops = [line["count"] for line in lines if line["event"] == "log.dropped"]
    assert drops and all(n > 0 for n in drops)
    assert seen + sum(drops) >= 600, (seen, drops)  # a count of 1 for hundreds lost, before
    events = [line["event"] for line in lines]
    assert "daemon.stopping" in events and events[-1] == "daemon.stopped"
