"""Signals acted on by a thread of their own, never inside the main thread's handler.

Python runs a signal handler in the main thread between two of its bytecodes, which can be
just after that thread took a lock: `Event.wait` holds its condition's lock between the
acquire in C and the next bytecode. A handler that then sets the same event waits for a
lock its own thread holds, for ever. That is how a SIGTERM the moment the daemon was ready
left it running (CI, about 1 stop in 180: the main loop waits on `wake`, the handler set
`wake`). The handler here only writes the signal's number to a pipe; a thread reads it and
does what the signal asks, taking any lock like any other thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["SignalRelay"]

_END = 0  # no signal has number 0: the relay's own end


class SignalRelay:
    """`handler` is what `signal.signal` gets; `act(signum)` runs on the relay's thread."""

    def __init__(self, act: Callable[[int], None], name: str = "promoter-signals") -> None:
        self._act = act
        self._read, self._write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write, False)  # the handler must never wait
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def handler(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: one byte to the pipe, no lock taken."""
        with contextlib.suppress(BlockingIOError):  # 64 KiB not yet read: this adds nothing
            os.write(self._write, bytes((signum,)))

    def close(self, timeout: float = 5.0) -> None:
        """End the thread once the signals already written are acted on; close the pipe."""
        try:
            os.set_blocking(self._write, True)
            os.write(self._write, bytes((_END,)))
            self._thread.join(timeout)
        finally:
            os.close(self._write)
            if not self._thread.is_alive():
                os.close(self._read)  # else the thread still reads it: left to the exit

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except InterruptedError:  # pragma: no cover - PEP 475 retries it
                continue
            if not data:
                return
            for signum in data:
                if signum == _END:
                    return
                self._act(signum)
