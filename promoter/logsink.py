"""The log sink between structlog and fd 2: a stderr nobody reads never blocks promoter.

Logging used to write in the thread that logged. With stderr on a pipe whose reader hung
(a log collector, `promoter run 2>&1 | slow`), the pipe filled and every thread that
logged stopped, the main thread's SIGTERM path (`daemon.stopping`) too: the daemon
neither promoted nor stopped. Now loggers put their rendered lines on a bounded queue and
never wait; one writer thread owns the descriptor.

- A full queue (MAX_LINES lines or MAX_BYTES bytes) refuses info lines and counts them
  where they would have been: the writer renders one `log.dropped` line with the count
  there itself, so the report is never refused and the counts add up to the lines lost.
  Once full, info lines stay refused until the queue is down to three quarters: drops
  come in runs, one report a run, not one every few lines. Warnings and errors may use
  a reserve of RESERVE_LINES above the bounds, lifecycle lines (daemon.ready, stopping,
  stopped, ...) a second one: a queue full of promotions does not cost them.
- A batch of lines (`info_many`) is taken whole while the queue is not full, however
  long: a big batch with a reader at hand is no reason to lose it.
- The writer writes whole lines, several in one write, at most PIPE_BUF bytes a write,
  which a pipe takes whole or not at all: a pipe left full ends at the end of a line.
  A write cut short (a non-blocking descriptor, a longer line) is finished before anything
  else, so two lines are never glued together.
- A status line (a terminal's progress, `status()`): never waits either; the writer draws
  the latest one after the log lines, clears it (CR, erase line) before writing more, and
  skips the ones superseded before it got to them.
- A write that fails (EPIPE, EIO, ENOSPC, a closed descriptor) drops its lines, as the
  print logger did; such lines are not counted, there is nowhere to report them.
- At exit, what is queued gets FLUSH_S to be written; if that is not enough, the lines
  left are counted where they were (`log.dropped`), and those reports and the lifecycle
  lines among them (daemon.stopping, daemon.stopped) get LAST_S more.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from promoter import events
from promoter.structlog_import import structlog

__all__ = ["FLUSH_S", "LAST_S", "MAX_BYTES", "MAX_LINES", "RESERVE_LINES", "LogSink",
           "stderr_sink"]

MAX_LINES = 10_000  # a burst of promotions is a line a file: a few seconds of a big one
MAX_BYTES = 8 << 20  # what a queue may hold, whatever its lines' length
RESERVE_LINES = 500  # above the bounds, for each priority above info's
_RESERVE_BYTES = 1 << 20
FLUSH_S = 1.0  # at exit: well inside the stop bound, and a live reader takes 8 MiB in that
LAST_S = 0.25  # at exit, after FLUSH_S: for the last report of the lines left unwritten
_CHUNK = select.PIPE_BUF  # bytes a write at most: atomic on a pipe
_GAP_BYTES = 256  # room a `log.dropped` line takes in a chunk
_POLL_S = 0.5  # a non-blocking descriptor that stays full: how often to look at close()
_CLEAR = b"\r\x1b[K"  # back to the line's start, erase it: the status line gone

INFO, URGENT, LIFECYCLE = 0, 1, 2  # priorities: the reserves a line may use


class _Gap:
    """Where lines were refused: the writer writes the `log.dropped` line here."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class _Lifecycle(bytes):
    """A lifecycle line (daemon.stopping, stopped): still written when the exit flush
    gives up on the lines queued before it."""


class LogSink:
    """Lines from any thread, written to `fd` by one writer thread in the order they came.
    `report(count)` renders the line that says `count` lines were dropped (None: none)."""

    def __init__(self, fd: int, report: Callable[[int], str | None] | None = None,
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
        self._queue: deque[bytes | _Gap] = deque()
        self._lines = self._bytes = 0
        self._full = False  # info lines refused until the queue is down to 3/4
        self.dropped = 0  # lines refused in all (the reports say where)
        self._status: bytes | None = None  # the status line wanted on screen
        self._drawn: bytes | None = None  # the one there now
        self._writing = False
        self._cut = False  # a write failed part-way through a line
        self._closing = False
        self._thread: threading.Thread | None = None

    def put(self, text: str, priority: int = INFO) -> None:
        """Queue `text` (one line or several, without the last newline); never blocks."""
        data = text.encode("utf-8", "backslashreplace") + b"\n"
        lines = data.count(b"\n")
        with self._lock:
            if self._refuse(priority):
                self.dropped += lines
                if self._queue and isinstance(self._queue[-1], _Gap):
                    self._queue[-1].count += lines
                else:  # not counted in the bounds: a report is never refused
                    self._queue.append(_Gap(lines))
                return
            if len(data) > _CHUNK and lines > 1:  # a batch: chunks of whole lines
                self._queue.extend(data.splitlines(keepends=True))
            else:
                self._queue.append(_Lifecycle(data) if priority == LIFECYCLE else data)
            self._lines += lines
            self._bytes += len(data)
            self._wake()

    def _refuse(self, priority: int) -> bool:
        """Whether the queue is too full for a line of `priority` (under the lock)."""
        if priority == INFO:
            if self._full and (self._lines <= self.max_lines * 3 // 4
                               and self._bytes <= self.max_bytes * 3 // 4):
                self._full = False
            if self._lines >= self.max_lines or self._bytes >= self.max_bytes:
                self._full = True
            return self._full
        return (self._lines >= self.max_lines + priority * RESERVE_LINES
                or self._bytes >= self.max_bytes + priority * _RESERVE_BYTES)

    def status(self, text: str | None) -> None:
        """Show `text` as the status line under the log lines (None: clear it); never
        blocks, and a status not yet drawn is simply replaced."""
        data = None if text is None else text.encode("utf-8", "backslashreplace")
        with self._lock:
            if data != self._status:  # nothing to do (at exit: no writer started for it)
                self._status = data
                self._wake()

    def _wake(self) -> None:
        """The writer, started if need be, told there is work (under the lock)."""
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
            while self._queue or self._writing or self._status != self._drawn:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._idle.wait(left)
        return True

    def finish(self, timeout: float = FLUSH_S, last: float = LAST_S) -> bool:
        """At exit: clear the status line, flush; lines still queued after `timeout` are
        counted, and the reports and the lifecycle lines get `last` seconds more."""
        self.status(None)
        if self.flush(timeout):
            return True
        with self._lock:
            queue: deque[bytes | _Gap] = deque()
            gap = 0
            for part in self._queue:  # lifecycle lines kept, the rest counted where it was
                if isinstance(part, _Lifecycle):
                    if gap:
                        queue.append(_Gap(gap))
                        gap = 0
                    queue.append(part)
                elif isinstance(part, _Gap):
                    gap += part.count
                else:
                    gap += part.count(b"\n")
                    self.dropped += part.count(b"\n")
            if gap:
                queue.append(_Gap(gap))
            self._queue = queue
            kept = [part for part in queue if isinstance(part, bytes)]
            self._lines = len(kept)
            self._bytes = sum(map(len, kept))
        return self.flush(last)

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
                while not self._queue and self._status == self._drawn and not self._closing:
                    self._ready.wait()
                if self._closing:
                    return
                parts = self._take()
                drawn, status = self._drawn, self._status
                self._drawn = status
                self._writing = True
            data = b"".join(self._render(part) for part in parts)
            if data or status is None:
                data = (_CLEAR if drawn else b"") + data
            if status is not None:
                data += b"\r" + status + b"\x1b[K"
            self._write(data)

    def _take(self) -> list[bytes | _Gap]:
        """The next chunk's parts: whole lines up to _CHUNK bytes (under the lock)."""
        parts: list[bytes | _Gap] = []
        size = 0
        while self._queue:
            head = self._queue[0]
            length = _GAP_BYTES if isinstance(head, _Gap) else len(head)
            if parts and size + length > _CHUNK:
                break
            parts.append(self._queue.popleft())
            size += length
            if not isinstance(head, _Gap):
                self._lines -= head.count(b"\n")
                self._bytes -= length
        return parts

    def _render(self, part: bytes | _Gap) -> bytes:
        if not isinstance(part, _Gap):
            return part
        line = None
        if self.report is not None:
            with contextlib.suppress(Exception):  # a log sink never raises
                line = self.report(part.count)
        return b"" if line is None else line.encode("utf-8", "backslashreplace") + b"\n"

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


def _report(count: int) -> str | None:
    """The `log.dropped` line, rendered as any other, in the writer (None: warnings are
    not logged at the configured level)."""
    with contextlib.suppress(Exception):  # a log sink never raises: the count said plainly
        bound = structlog.get_logger("promoter").bind()
        if not bound.is_enabled_for(logging.WARNING):
            return None
        args, kw = bound._process_event("warning", events.LOG_DROPPED, {"count": count})
        if len(args) == 1 and not kw and isinstance(args[0], str):
            return args[0]
    return json.dumps({"event": events.LOG_DROPPED, "level": "warning", "count": count})


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
                atexit.register(sink.finish)
                os.register_at_fork(after_in_child=sink._reset)
                _sink = sink
    return _sink
