"""The log sink between structlog and fd 2: a stderr nobody reads never blocks promoter.

Logging used to write in the thread that logged. With stderr on a pipe whose reader hung
(a log collector, `promoter run 2>&1 | slow`), the pipe filled and every thread that
logged stopped, the main thread's SIGTERM path (`daemon.stopping`) too: the daemon
neither promoted nor stopped. Now loggers put their rendered lines on a bounded queue and
never wait; one writer thread owns the descriptor.

- A full queue (MAX_LINES lines or MAX_BYTES bytes) refuses the line and counts it; when
  the writer gets going again it logs one `log.dropped` line with the count. A batch of
  lines (`info_many`) is taken whole while the queue is not full, however long: a big
  batch with a reader at hand is no reason to lose it, and it is in memory already.
- The writer writes whole lines, several in one write, at most PIPE_BUF bytes a write,
  which a pipe takes whole or not at all: a pipe left full ends at the end of a line.
  A write cut short (a non-blocking descriptor, a longer line) is finished before anything
  else, so two lines are never glued together.
- A write that fails (EPIPE, EIO, ENOSPC, a closed descriptor) drops its lines, as the
  print logger did; such lines are not counted, there is nowhere to report them.
- At exit, what is queued gets FLUSH_S to be written; then the process leaves without it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import structlog

from promoter import events

__all__ = ["FLUSH_S", "MAX_BYTES", "MAX_LINES", "LogSink", "stderr_sink"]

MAX_LINES = 10_000  # a burst of promotions is a line a file: a few seconds of a big one
MAX_BYTES = 8 << 20  # what a queue may hold, whatever its lines' length
FLUSH_S = 1.0  # at exit: well inside the stop bound, and a live reader takes 8 MiB in that
_CHUNK = select.PIPE_BUF  # bytes a write at most: atomic on a pipe
_POLL_S = 0.5  # a non-blocking descriptor that stays full: how often to look at close()


class LogSink:
    """Lines from any thread, written to `fd` by one writer thread in the order they came."""

    def __init__(self, fd: int, report: Callable[[int], None] | None = None,
                 max_lines: int | None = None, max_bytes: int | None = None) -> None:
        self.fd = fd
        self.report = report
        self.max_lines = MAX_LINES if max_lines is None else max_lines
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self._reset()

    def _reset(self) -> None:
        """A fresh, empty, writer-less state (also a forked child's: its parent writes the
        parent's lines, and the writer thread did not come along)."""
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the writer waits for lines
        self._idle = threading.Condition(self._lock)  # flush() waits for the writer
        self._queue: deque[bytes] = deque()
        self._lines = self._bytes = 0
        self.dropped = 0  # lines a full queue refused, not yet reported
        self._writing = False
        self._cut = False  # a write failed part-way through a line
        self._closing = False
        self._thread: threading.Thread | None = None

    def put(self, text: str) -> None:
        """Queue `text` (one line or several, without the last newline); never blocks."""
        data = text.encode("utf-8", "backslashreplace") + b"\n"
        lines = data.count(b"\n")
        with self._lock:
            if self._lines >= self.max_lines or self._bytes >= self.max_bytes:
                self.dropped += lines  # the writer is at work: it reports them after a write
                return
            if len(data) > _CHUNK and lines > 1:  # a batch: chunks of whole lines
                self._queue.extend(data.splitlines(keepends=True))
            else:
                self._queue.append(data)
            self._lines += lines
            self._bytes += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="promoter-log-writer",
                                                daemon=True)
                self._thread.start()
            self._ready.notify()

    def flush(self, timeout: float = FLUSH_S) -> bool:
        """Wait until every queued line is written (or its write failed); False if that
        took longer than `timeout` seconds, the lines being left to the writer."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._writing or self.dropped:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = FLUSH_S) -> None:
        """Flush, then end the writer (a blocked write cannot be ended: it stays a daemon)."""
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._writing = False
                self._idle.notify_all()
                while not self._queue and not self.dropped and not self._closing:
                    self._ready.wait()
                if self._closing:
                    return
                count, self.dropped = self.dropped, 0
                parts: list[bytes] = []
                size = 0
                while self._queue and (not parts or size + len(self._queue[0]) <= _CHUNK):
                    parts.append(self._queue.popleft())
                    size += len(parts[-1])
                chunk = b"".join(parts)
                self._lines -= chunk.count(b"\n")
                self._bytes -= size
                self._writing = True
            if count and self.report is not None:
                self.report(count)  # back through put(), behind what is queued
            self._write(chunk)

    def _write(self, data: bytes) -> None:
        """All of `data`, however many writes it takes, or none of the rest on an error
        (then the next write first ends the cut line: a full disk took half of it)."""
        if self._cut:
            data = b"\n" + data
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
                self._cut = bool(view)
            except BlockingIOError:  # a non-blocking descriptor, full: wait for room
                if self._closing:
                    return
                poll = select.poll()
                poll.register(self.fd, select.POLLOUT)
                poll.poll(_POLL_S * 1000)
            except (OSError, ValueError):  # EPIPE, EIO, ENOSPC, EBADF: lost, as before
                return


def _report(count: int) -> None:
    """The `log.dropped` line, rendered as any other (it is queued like any other)."""
    with contextlib.suppress(Exception):  # a log sink never raises
        structlog.get_logger("promoter").warning(events.LOG_DROPPED, count=count)


_sink: LogSink | None = None
_sink_lock = threading.Lock()


def stderr_sink() -> LogSink | None:
    """The process's sink on fd 2 while `sys.stderr` is the process's own stderr; None if
    it was replaced (a test's capture) or there is none (started with `2>&-`: fd 2 may be
    any file opened since, never to be written)."""
    global _sink
    stream = sys.__stderr__
    if stream is None or sys.stderr is not stream:
        return None
    if _sink is None:
        with _sink_lock:
            if _sink is None:
                try:
                    fd = stream.fileno()
                except (OSError, ValueError):
                    return None
                sink = LogSink(fd, _report)
                atexit.register(sink.flush)
                os.register_at_fork(after_in_child=sink._reset)
                _sink = sink
    return _sink
