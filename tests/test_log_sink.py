"""A stderr nobody reads never blocks promoter: a full pipe once stopped every thread that
logged (the SIGTERM path too), and a non-blocking one glued half a line to the next."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promoter.logsink import LogSink
from promoter.tomlout import dumps
from tests.daemon_helpers import NotifySocket, base_config, wait_until, write

# The real program with a queue of 50 lines, so that a test fills it in a second.
SMALL_QUEUE = ("import runpy, promoter.logsink as s; s.MAX_LINES = 50; "
               "runpy.run_module('promoter', run_name='__main__', alter_sys=True)")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PROMOTER_", "NOTIFY_", "WATCHDOG_"))}


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def read_all(sink: LogSink, r: int, w: int, seconds: float, what: str) -> bytes:
    """Read the pipe until the sink has written everything, then close the sink and pipe."""
    got = bytearray()

    def written() -> bool:
        got.extend(_drain(r))
        return sink.flush(0)
    try:
        wait_until(written, seconds, what=what)
        got.extend(_drain(r))
    finally:
        sink.close()
        os.close(w)
        os.close(r)
    return bytes(got)


def _drain(fd: int) -> bytes:
    """What a non-blocking read end holds now (b"" at end of file as well)."""
    parts = []
    while True:
        try:
            part = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not part:
            break
        parts.append(part)
    return b"".join(parts)


def _lines(data: bytes) -> list[dict[str, Any]]:
    """Every line one JSON object, the last one ended: nothing cut, nothing glued."""
    assert data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.decode().splitlines()]


def _files(root: Path, runs: int, per_run: int, start: int = 0) -> set[tuple[str, str]]:
    names = {(f"r{r}", f"f{i}.txt") for r in range(runs) for i in range(start, start + per_run)}
    for run, name in sorted(names):
        write(root / "sessions" / run / "output" / name, f"{run}/{name}")
    return names


def _promoted(root: Path, names: set[tuple[str, str]]) -> bool:
    found = set()
    for run in {run for run, _ in names}:
        try:
            meta = json.loads((root / "artifacts" / run / "metadata.json").read_text())
        except (FileNotFoundError, ValueError):
            return False
        found |= {(run, a["filename"]) for a in meta["artifacts"]}
    return names <= found


class _Run:
    """`promoter run` (or `head` before it) with its stderr on the write end `err`."""

    def __init__(self, tmp_path: Path, err: int, head: list[str] | None = None) -> None:
        self.root = tmp_path / "root"
        (self.root / "sessions").mkdir(parents=True)
        cfg = tmp_path / "promoter.toml"
        cfg.write_text(dumps(base_config()))
        self.notify = NotifySocket()
        env = _env()
        env["NOTIFY_SOCKET"] = self.notify.path
        self.proc = subprocess.Popen(
            [*(head or [sys.executable, "-m", "promoter"]), "run", "--root", str(self.root),
             "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env)
        os.close(err)

    def stop(self) -> float:
        """SIGTERM; seconds until it exited 0."""
        started = time.monotonic()
        self.proc.terminate()
        assert self.proc.wait(20) == 0
        return time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.notify.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    with contextlib.suppress(OSError):  # handed to the child, closed there
        os.close(w)


def test_a_daemon_whose_stderr_nobody_reads_promotes_reports_drops_and_stops(
        tmp_path: Path, pipe: tuple[int, int]) -> None:
    """stderr a pipe nobody reads (queue of 50 lines): every file promoted, the drops
    reported as one `log.dropped` once read again, SIGTERM with the pipe full exits 0
    in a few seconds, and the pipe holds whole JSON lines only."""
    r, w = pipe
    _nonblocking(r)  # the test's end only: the daemon's stays blocking
    daemon = _Run(tmp_path, w, [sys.executable, "-c", SMALL_QUEUE])
    try:
        daemon.notify.wait_for("READY=1", 20)
        # ~200 KiB of lines: 3 times pipe and queue, over 12 runs: a batch is taken whole
        # while the queue is not full, so drops need batches enough (a run's files gather
        # into one while the workers are busy, issue 15 round 6: 3 runs made too few)
        first = _files(daemon.root, 12, 50)
        wait_until(lambda: _promoted(daemon.root, first), 60, what="600 files promoted")

        seen = bytearray()

        def reported() -> bool:
            seen.extend(_drain(r))
            return b'"log.dropped"' in seen
        wait_until(reported, 20, what="a log.dropped line")

        second = _files(daemon.root, 12, 25, start=50)  # fills the pipe again
        wait_until(lambda: _promoted(daemon.root, second), 60, what="300 more promoted")
        took = daemon.stop()
        assert took < 8, f"SIGTERM with the pipe full took {took:.1f} s"
        seen.extend(_drain(r))
    finally:
        daemon.close()
    lines = _lines(bytes(seen))
    drops = [line["count"] for line in lines if line["event"] == "log.dropped"]
    promoted = [line for line in lines if line["event"] == "artifact.promoted"]
    assert drops and all(n > 0 for n in drops)
    assert len(promoted) < 900
    assert all({"timestamp", "level", "event"} <= line.keys() for line in lines)


def test_a_full_non_blocking_pipe_then_a_slow_reader_loses_nothing(
        tmp_path: Path, pipe: tuple[int, int]) -> None:
    """stderr a non-blocking pipe, unread while 600 files are promoted (EAGAIN, cut
    writes), then read slowly: every promotion's line once, whole, in JSON, no drop."""
    r, w = pipe
    _nonblocking(w)  # one file description: the daemon's fd 2 is non-blocking
    daemon = _Run(tmp_path, w)
    got = bytearray()
    stop = threading.Event()

    def slow_reader() -> None:
        with os.fdopen(r, "rb", buffering=0, closefd=False) as end:
            while not stop.is_set():
                try:
                    part = end.read(512)
                except BlockingIOError:
                    part = None
                if part == b"":
                    return
                got.extend(part or b"")
                stop.wait(0.001)  # a slow reader: 512 bytes a millisecond at most

    reader = threading.Thread(target=slow_reader, name="slow-reader")
    try:
        daemon.notify.wait_for("READY=1", 20)
        names = _files(daemon.root, 6, 100)
        wait_until(lambda: _promoted(daemon.root, names), 30, what="600 files promoted")
        _nonblocking(r)
        reader.start()
        wait_until(lambda: got.count(b'"artifact.promoted"') >= 600, 30,
                   what="every promotion's line read")
        daemon.stop()
        reader.join(20)
        assert not reader.is_alive()
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(10)
        daemon.close()
    lines = _lines(bytes(got))
    promoted = [(line["run_id"], line["filename"]) for line in lines
                if line["event"] == "artifact.promoted"]
    assert sorted(promoted) == sorted(names)
    assert not [line for line in lines if line["event"] == "log.dropped"]
    assert lines[-1]["event"] == "daemon.stopped"


def _cli(root: Path, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
    kw.setdefault("env", _env())
    return subprocess.Popen([sys.executable, "-m", "promoter", *argv, "--root", str(root)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, **kw)


def test_a_command_prints_its_lines_and_never_waits_for_a_reader(
        tmp_path: Path, pipe: tuple[int, int]) -> None:
    """`promoter reconcile` over 400 files: read, its stderr holds every line at exit;
    a pipe nobody reads (more than it takes) does not hold it up, and holds whole lines."""
    read, unread = tmp_path / "read", tmp_path / "unread"
    for root in (read, unread):
        (root / "artifacts").mkdir(parents=True)
        names = _files(root, 2, 200)
    done = _cli(read, "reconcile", stderr=subprocess.PIPE)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err[-2000:]
    promoted = {(line["run_id"], line["filename"]) for line in _lines(err)
                if line["event"] == "artifact.promoted"}
    assert promoted == names

    r, w = pipe
    _nonblocking(r)
    blocked = _cli(unread, "reconcile", stderr=w)
    os.close(w)
    out, _ = blocked.communicate(timeout=30)
    assert blocked.returncode == 0
    assert out.startswith(b"400 promoted"), out
    assert len(_lines(_drain(r))) < 400


def test_a_command_started_without_stderr_logs_nothing_on_stdout(tmp_path: Path) -> None:
    """`2>&-`: no stderr at all. Log lines are dropped; they used to land on stdout (the
    print logger's fallback), mixed into a command's data, and the console format failed."""
    root = tmp_path / "root"
    (root / "artifacts").mkdir(parents=True)
    _files(root, 1, 3)
    done = _cli(root, "reconcile", stderr=None, preexec_fn=lambda: os.close(2))
    out, _ = done.communicate(timeout=60)
    assert done.returncode == 0
    assert out.decode().splitlines() == [out.decode().splitlines()[0]]
    assert out.startswith(b"3 promoted"), out
    env = {**_env(), "PROMOTER_LOG__FORMAT": "console"}  # it asks whether stderr is a tty
    done = _cli(root, "reconcile", stderr=None, preexec_fn=lambda: os.close(2), env=env)
    out, _ = done.communicate(timeout=60)
    assert done.returncode == 0
    assert out.startswith(b"0 promoted") and out.count(b"\n") == 1, out


def test_a_line_cut_by_a_non_blocking_pipe_is_finished_before_the_next() -> None:
    """A line far longer than the pipe, then short ones from two threads: read as it
    comes, the bytes are exactly the lines, each thread's in its order."""
    r, w = os.pipe()
    _nonblocking(w)
    _nonblocking(r)
    sink = LogSink(w)
    big = "x" * 300_000
    sink.put(big)

    def more(tag: str) -> None:
        for i in range(200):
            sink.put(f"{tag}{i}")
    threads = [threading.Thread(target=more, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    got = bytearray()
    total = len(big) + 1 + 2 * sum(len(f"a{i}\n") for i in range(200))

    def everything() -> bool:
        got.extend(_drain(r))
        return len(got) >= total
    try:
        wait_until(everything, 20, what="every line read")
    finally:
        for thread in threads:
            thread.join()
        sink.close()
        os.close(w)
        os.close(r)
    lines = got.decode().splitlines()
    assert lines[0] == big
    assert [x for x in lines if x.startswith("a")] == [f"a{i}" for i in range(200)]
    assert [x for x in lines if x.startswith("b")] == [f"b{i}" for i in range(200)]
    assert len(lines) == 401


def test_a_full_queue_drops_counts_and_reports_once_room_comes() -> None:
    """Nobody reads: put() returns at once whatever comes; the lines over the bounds are
    counted and reported once the reader is back; the rest arrive whole, in order."""
    r, w = os.pipe()
    _nonblocking(r)
    sink = LogSink(w, report=lambda n: f"dropped {n}", max_lines=100,
                   max_bytes=1 << 20)
    started = time.monotonic()
    for i in range(5000):
        sink.put(f"line {i:05d} " + "y" * 100)
    assert time.monotonic() - started < 5  # never waited for the pipe
    got = bytearray()

    def reported() -> bool:
        got.extend(_drain(r))
        return b"dropped" in got and sink.flush(0)
    wait_until(reported, 10, what="the drop report")
    got.extend(_drain(r))  # what came between the last read and the flush
    sink.close()
    os.close(w)
    os.close(r)
    lines = got.decode().splitlines()
    kept = [x for x in lines if x.startswith("line ")]
    dropped = sum(int(x.split()[1]) for x in lines if x.startswith("dropped "))
    assert kept == sorted(kept)
    assert len(kept) + dropped == 5000 and dropped > 0


def test_a_write_that_fails_drops_its_lines_quietly() -> None:
    """/dev/full (ENOSPC) and a pipe whose reader is gone (EPIPE): lines dropped, flush
    ends at once, the writer lives on and no drop is reported (nowhere to)."""
    reports: list[int] = []
    with open("/dev/full", "wb") as full:
        sink = LogSink(full.fileno(), report=reports.append)
        for i in range(100):
            sink.put(f"line {i}")
        assert sink.flush(5)
        sink.close()
    r, w = os.pipe()
    os.close(r)
    sink = LogSink(w, report=reports.append)
    sink.put("nobody hears this")
    assert sink.flush(5)
    sink.put("nor this")
    assert sink.flush(5)
    sink.close()
    os.close(w)
    assert reports == []


CUT_BY_A_FULL_DISK = """
import resource, sys
from promoter.logsink import LogSink
with open(sys.argv[1], "wb") as out:
    sink = LogSink(out.fileno())
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    for i in range(10):
        sink.put(str(i) * 299)
    assert sink.flush(5)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    sink.put("after")
    assert sink.flush(5)
    sink.close()
"""


def test_a_line_a_full_disk_cut_is_ended_before_the_next(tmp_path: Path) -> None:
    """A file that takes 1,000 bytes of a 3,000-byte write, then no more (EFBIG, as a
    full disk): once it takes lines again, they start on a line of their own."""
    out = tmp_path / "stderr"
    done = subprocess.run([sys.executable, "-c", CUT_BY_A_FULL_DISK, str(out)], env=_env(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = out.read_bytes().split(b"\n")
    assert lines[:3] == [b"0" * 299, b"1" * 299, b"2" * 299]
    assert lines[3] == b"3" * 100  # 1,000 bytes, cut
    assert lines[4:] == [b"after", b""]


def test_a_batch_longer_than_the_queue_is_written_whole() -> None:
    """One put of 500 lines into a queue of 100 (a big run's promotions in one batch),
    with a reader at hand: taken whole, nothing dropped; a put while it is queued is
    refused, counted and reported."""
    r, w = os.pipe()
    _nonblocking(r)
    reports: list[int] = []
    sink = LogSink(w, report=reports.append, max_lines=100)
    sink.put("\n".join(f"line {i:03d}" for i in range(500)))
    sink.put("refused")  # the batch fills the queue unless the writer took it already
    lines = read_all(sink, r, w, 10, "the batch written").decode().splitlines()
    assert lines[:500] == [f"line {i:03d}" for i in range(500)]
    assert reports in ([], [1])
    assert lines[500:] == ([] if reports else ["refused"])
