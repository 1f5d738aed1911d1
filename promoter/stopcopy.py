"""Giving up a long copy when the daemon stops (DESIGN §5).

A copy begun used to be finished whatever its size: a SIGTERM during a 400 MiB copy on a
loaded host waited ~15 s for it (probe r9), and a 1 GiB copy on a slow disk could outlast
the stop's bound (`stopguard.STOP_GUARD_S`, systemd's TimeoutStopSec) and end in a kill.
Now a thread that copies for the daemon says how to know when its stop began (`watch`);
its copy then looks every `CHECK_BYTES` and gives up (`GivenUp`) once the stop is
`GIVE_UP_S` old. Nothing of a copy given up is kept (an unnamed copy vanishes with its
descriptor, a named temporary is removed, a multipart upload is aborted), its file is not
listed, and the next start's catch-up copies it. The state is the thread's own: a task
handed to a pool takes its submitter's along (`carried`); the command line and the server
never watch, so never give up.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["CHECK_BYTES", "GIVE_UP_S", "GivenUp", "StopTime", "carried", "check", "watch"]

CHECK_BYTES = 1 << 20  # a copy looks this often (a 4 KiB copy never looks)
GIVE_UP_S = 5.0  # a copy still under way this long into the stop is given up

StopTime = Callable[[], float | None]  # when the stop began (time.monotonic()); None before
P = ParamSpec("P")
R = TypeVar("R")

_local = threading.local()


class GivenUp(Exception):
    """The daemon is stopping and this copy would hold the stop: given up, nothing kept."""


def watch(stopped_at: StopTime | None) -> None:
    """This thread's copies give up GIVE_UP_S after `stopped_at()` (None: never, the
    default of every thread)."""
    _local.stopped_at = stopped_at


def check() -> None:
    """Raise GivenUp if this thread's daemon began its stop GIVE_UP_S ago or more."""
    stopped_at: StopTime | None = getattr(_local, "stopped_at", None)
    if stopped_at is None:
        return
    began = stopped_at()
    if began is not None and (late := time.monotonic() - began) >= GIVE_UP_S:
        raise GivenUp(f"still copying {late:.1f} s into the stop")


def carried(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` to run on another thread (a pool's) with the calling thread's watch, so that a
    copy made there gives way to the same stop."""
    stopped_at = getattr(_local, "stopped_at", None)

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        saved = getattr(_local, "stopped_at", None)
        _local.stopped_at = stopped_at
        try:
            return fn(*args, **kwargs)
        finally:
            _local.stopped_at = saved
    return run
