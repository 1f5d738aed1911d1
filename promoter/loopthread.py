"""A stoppable loop thread: the shape the daemon's background loops share.

One named daemon thread runs the subclass's `_run`, which waits on `_kick` (a
request, a reload) or a timer, never a bare sleep, and ends once the stop event
is set: `stop()` sets it and wakes the loop, `join()` waits a bounded time. The
stop event may be the daemon's one event, so a single `set()` ends every loop.
"""

from __future__ import annotations

import threading
import time

__all__ = ["LoopThread"]


class LoopThread:
    """A named daemon thread over `_run`, woken by `kick` or the stop event."""

    name = ""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._stop = stop or threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self.stopped_at: float | None = None  # when `stop` was first asked (time.monotonic())

    def _run(self) -> None:
        raise NotImplementedError

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Run a pass now (a reload: the interval may have changed)."""
        self._kick.set()

    def stop(self) -> None:
        """Set the stop event and wake the loop; `join` waits for it."""
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()  # a long copy of the loop's gives way (stopcopy)
        self._stop.set()
        self._kick.set()

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds; True once the thread has ended (or never ran)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
