"""Giving up a long copy when the daemon stops (DESIGN §5).

A copy begun used to be finished whatever its size: a SIGTERM during a 400 MiB copy on a
loaded host waited ~15 s for it (probe r9), and a 1 GiB copy on a slow disk could outlast
the stop's bound (`stopguard.STOP_GUARD_S`, systemd's TimeoutStopSec) and end in a kill.
Now a thread that copies for the daemon says how to know the daemon is stopping
(`watch`); its copy then looks every `CHECK_BYTES` and gives up (`GivenUp`) once the stop
is `GIVE_UP_S` old. Nothing of a copy given up is kept (an unnamed copy vanishes with its
descriptor, a named temporary is removed), its file is not listed, and the next start's
catch-up copies it. Threads that never `watch` (the command line, the server) never give
up: the state is the thread's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CHECK_BYTES", "GIVE_UP_S", "GivenUp", "check", "watch"]

CHECK_BYTES = 8 << 20  # a copy looks this often (a 4 KiB copy never looks)
GIVE_UP_S = 5.0  # a copy still under way this long into the stop is given up

_local = threading.local()


class GivenUp(Exception):
    """The daemon is stopping and this copy would hold the stop: given up, nothing kept."""


def watch(stopping: Callable[[], bool] | None) -> None:
    """This thread's copies give up once `stopping()` has been true for GIVE_UP_S (None:
    never, the default)."""
    _local.stopping = stopping
    _local.since = None


def check() -> None:
    """Raise GivenUp if this thread's daemon has been stopping for GIVE_UP_S."""
    stopping: Callable[[], bool] | None = getattr(_local, "stopping", None)
    if stopping is None or not stopping():
        return
    now = time.monotonic()
    since: float | None = _local.since
    if since is None:
        _local.since = since = now
    if now - since >= GIVE_UP_S:
        raise GivenUp(f"still copying {now - since:.1f} s into the stop")
