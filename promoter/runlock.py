"""One lock per run, across threads and processes (DESIGN §2: serialized metadata writes).

`flock` locks belong to an open file description, so two threads that each
open the lock file exclude each other exactly as two processes do.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["run_lock"]


@contextmanager
def run_lock(locks_fd: int, run_id: str, wait: bool = True) -> Iterator[None]:
    """Hold the run's lock; lock files live in `artifacts/.locks/` and are never removed,
    so that a waiter never holds a lock on a file that another has replaced.

    With `wait=False`, raises BlockingIOError at once when another holds it.
    """
    fd = os.open(run_id, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=locks_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
