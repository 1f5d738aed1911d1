"""The stop's own bound (DESIGN §5: after SIGTERM, exit within a few seconds).

The drain is bounded, but the process can still hang after it: a thread stuck in the
kernel (a flush on a stalled disk, a write to a hung mount) holds the interpreter's exit,
which joins its worker pools. systemd would kill the daemon at `TimeoutStopSec` without a
word on where it was. This guard, armed for the real process only, waits for the stop
event, gives the stop `STOP_GUARD_S` seconds, then logs `daemon.stop_stuck` with every
other thread's stack, lets the log writer take it, and ends the process with status 1.
Nothing durable is lost by that: a copy whose flush has not returned has no entry yet,
and the next start's catch-up promotes its file again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

from promoter import events
from promoter.logs import get_logger
from promoter.logsink import stderr_sink

__all__ = ["STOP_GUARD_S", "arm", "last_stop", "thread_stacks"]

log = get_logger()
STOP_GUARD_S = 25.0  # the drain's bound is 20 s; the unit's TimeoutStopSec is 30 s
STACK_FRAMES = 8  # the innermost frames of each thread: where it waits
FLUSH_S = 1.0


def arm(stop: threading.Event, seconds: float | None = None) -> threading.Thread:
    """Start the guard: once `stop` is set, the process has `seconds` to end."""
    bound = STOP_GUARD_S if seconds is None else seconds
    guard = threading.Thread(target=_guard, args=(stop, bound), name="promoter-stop-guard",
                             daemon=True)
    guard.start()
    return guard


@contextlib.contextmanager
def last_stop(request_stop: Callable[[], None]) -> Iterator[None]:
    """The daemon's life, then SIGTERM and SIGINT ignored to the process's end: the stop
    is under way and its status decided. Python resets a handler of its own to the default
    action when the interpreter finalizes, so a SIGTERM then ended a stopped daemon with
    143, and the early handler (entry.py) raising SystemExit in an atexit callback printed
    a traceback (r7 probe F11). Before the daemon's own handlers, and after them, a signal
    asks for the stop."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: request_stop())
    try:
        yield
    finally:  # SIGHUP too: Python puts back its default action (the end of the process,
        # status 129) as it finalizes (probe r9-signals F1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)


def _guard(stop: threading.Event, seconds: float) -> None:
    stop.wait()
    if threading.Event().wait(seconds):  # never set: the bound, without a fixed sleep
        return
    log.error(events.DAEMON_STOP_STUCK, after_s=seconds, threads=thread_stacks(),
              exit_status=1)
    sink = stderr_sink()
    if sink is not None:
        sink.flush(FLUSH_S)
    os._exit(1)


def thread_stacks() -> dict[str, str]:
    """Every other live thread's name and its innermost frames, one string each."""
    frames = sys._current_frames()
    me = threading.get_ident()
    stacks: dict[str, str] = {}
    for thread in threading.enumerate():
        frame = frames.get(thread.ident) if thread.ident is not None else None
        if frame is None or thread.ident == me:
            continue
        where = traceback.format_stack(frame)[-STACK_FRAMES:]
        stacks[thread.name] = "".join(where).rstrip()
    return stacks
