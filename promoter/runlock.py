"""One lock per run, across threads and processes (DESIGN §2: serialized metadata writes).

`flock` locks belong to an open file description, so two threads that each
open the lock file exclude each other exactly as two processes do.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from promoter.errors import StoreIOError

__all__ = ["hold_daemon_lock", "run_lock"]


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


def hold_daemon_lock(sessions: Path) -> int:
    """One daemon per sessions folder (DESIGN §5): an advisory lock on the folder itself
    (nothing is written under sessions/), held as long as the returned descriptor is open.

    Raises StoreIOError naming the running daemon's PID when another holds it.
    """
    try:
        sessions.mkdir(parents=True, exist_ok=True)
        fd = os.open(sessions, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreIOError(f"cannot open the sessions folder {sessions}: "
                           f"{exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _lock_holder(os.fstat(fd))
        os.close(fd)
        who = f"PID {pid}" if pid else "another process"
        raise StoreIOError(f"another promoter run ({who}) already watches {sessions}; "
                           "one daemon per sessions folder") from None
    return fd


def _lock_holder(st: os.stat_result) -> int | None:
    """The PID holding a flock on the file of `st`, from /proc/locks (Linux)."""
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (blocked waiters have "->")
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None
