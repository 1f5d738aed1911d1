"""The local journal's appends: one day file, whole lines, durably (DESIGN §11).

`append_lines` is one append as every process does it: open the day's file
(O_APPEND), take its lock, start on a line of its own after a torn one, one
write, one `fdatasync`. `GroupCommit` lets the threads of one process share
it: the daemon's workers each finish a batch at about the same time, and each
flush costs ~0.15 ms of CPU and a few ms of disk. A thread that finds another's
append under way queues its lines and waits; the next leader writes every
queued batch in one write and one flush, and each batch returns (or raises)
only once its own lines are flushed, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from pathlib import Path

from promoter import events
from promoter.journalhold import PartlyWritten
from promoter.logs import get_logger

__all__ = ["LOCK_WAIT_S", "GroupCommit", "append_lines", "check_folder"]

log = get_logger()
LOCK_WAIT_S = 2.0


def check_folder(folder: Path) -> os.stat_result:
    """`.audit` must be a folder of the store, never a link to one elsewhere (the day files
    would be written, and pruned, wherever it points); its stat (its owner's) when it is."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a folder (a link?)", str(folder))
    return st


def append_lines(folder: Path, day: str, data: bytes, lock_wait: float | None = None) -> bool:
    """Append `data` (whole lines) to `folder/<day>.jsonl` and flush it; PartlyWritten (with
    the bytes of `data` that reached the file) when it failed after writing some. Whether
    the day file's lock was had (waited for at most `lock_wait`, LOCK_WAIT_S by default)."""
    try:  # the folder is made once: a mkdir a batch (EEXIST, then pathlib's stat) was not
        owner = check_folder(folder)
    except FileNotFoundError:
        folder.mkdir(mode=0o750, exist_ok=True)
        owner = check_folder(folder)
    path = folder / f"{day}.jsonl"
    # O_NONBLOCK: a FIFO put in place of a day must fail here, not block the daemon
    # once its buffer is full (it is a no-op on a regular file).
    sent = 0  # bytes of `data` in the file: what a failure must not have retried
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NONBLOCK, 0o640)
    try:
        # A line torn by a crash (another process's, or a full disk) must not swallow
        # this batch's first line: the batch then starts on a line of its own. The lock
        # (every process; a process's own threads take turns in GroupCommit) keeps another
        # append from growing the file between the look and the write: a half-seen write
        # made a blank line (F2). One fstat, under the lock, serves every check.
        locked = _lock(fd, LOCK_WAIT_S if lock_wait is None else lock_wait)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        # `sudo promoter rm` must not leave the day's file owned by root, where the daemon
        # (user promoter) could no longer append: it belongs to the folder's owner, whom
        # `promoter run` made when it created the store.
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid) and os.geteuid() == 0:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        size = st.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
            sent = -1  # the separator is not the caller's
        view = memoryview(data)
        written = os.write(fd, view)  # one write a batch: O_APPEND keeps lines whole
        sent += written
        while written < len(view):  # a short write (full disk, signal): finish the lines
            view = view[written:]
            written = os.write(fd, view)
            sent += written
        os.fdatasync(fd)
    except Exception as exc:  # not only OSError: what reached the file must not be sent twice
        if sent <= 0:
            raise
        torn = (PartlyWritten(exc.errno, exc.strerror, exc.filename) if isinstance(exc, OSError)
                else PartlyWritten(errno.EIO, repr(exc), str(path)))
        torn.sent = sent
        raise torn from exc
    finally:
        os.close(fd)
    return locked


class _Waiting:
    """One thread's batch in the queue, and how its append ended."""

    __slots__ = ("data", "day", "done", "error")

    def __init__(self, day: str, data: bytes) -> None:
        self.day, self.data = day, data
        self.done = False
        self.error: OSError | None = None


class GroupCommit:
    """The appends of one journal, shared by the threads that make them at the same time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Waiting] = []
        self._leading = False  # a thread is writing a group: the others queue
        self.flushes = 0  # groups written (each one write and one flush a day)
        # The lock was found held by another process for a whole wait: the next groups try
        # it once, without waiting again, until they have it (probe r9-journal F1: each
        # group waited its own 2 s, one after another, where threads had waited together).
        self._lock_stuck = False

    def append(self, day: str, data: bytes) -> None:
        """Append `data` (whole lines) to the day's file: returns once they are flushed,
        raises (as `append_lines`) when this batch's lines were not all written."""
        mine = _Waiting(day, data)
        with self._cond:
            self._queue.append(mine)
            while self._leading and not mine.done:
                self._cond.wait()
            lead = not mine.done  # nobody leads: this thread writes the queue, its batch in it
            if lead:
                self._leading = True
                group, self._queue = self._queue, []
        if lead:
            try:
                self._commit(group)
            finally:
                for batch in group:  # a leader stopped mid-way: nobody may wait for ever
                    if not batch.done:
                        batch.error = OSError(errno.EIO, "journal append interrupted")
                        batch.done = True
                with self._cond:
                    self._leading = False  # a waiter whose batch came too late leads next
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error

    def _commit(self, group: list[_Waiting]) -> None:
        """Each day's batches of `group`, in their order, as one append; each batch's outcome
        set on it (never raised: every waiter must be told)."""
        start = 0
        while start < len(group):
            end = start + 1
            while end < len(group) and group[end].day == group[start].day:
                end += 1
            self._commit_day(group[start:end])
            start = end

    def _commit_day(self, batches: list[_Waiting]) -> None:
        data = batches[0].data if len(batches) == 1 else b"".join(b.data for b in batches)
        sent = len(data)
        error: OSError | None = None
        try:
            locked = append_lines(self.folder, batches[0].day, data,
                                  0.0 if self._lock_stuck else None)
            self._lock_stuck = not locked
        except OSError as exc:
            error, sent = exc, max(exc.sent if isinstance(exc, PartlyWritten) else 0, 0)
        except Exception as exc:  # a bug or MemoryError before any write: held, retried
            error, sent = OSError(errno.EIO, f"journal append failed: {exc!r}"), 0
        self.flushes += 1
        offset = 0
        for batch in batches:
            if error is not None:  # alone: its own error as raised; else its share of it
                batch.error = error if len(batches) == 1 else _share(
                    error, min(max(sent - offset, 0), len(batch.data)))
            offset += len(batch.data)
            batch.done = True


def _share(error: OSError, sent: int) -> OSError:
    """A batch's own error from the group's: how many of its bytes reached the file."""
    if sent <= 0:
        return OSError(error.errno, error.strerror, error.filename)
    torn = PartlyWritten(error.errno, error.strerror, error.filename)
    torn.sent = sent
    return torn


def _lock(fd: int, wait: float) -> bool:
    """The day file's lock, waited for at most `wait` s: another process that holds it for
    ever must cost at worst a blank line in the journal, never a worker stuck with its batch's
    lines (a probe's held lock kept a worker past the stop and lost the lines). Whether it
    was had; the warning once a wait (a try without one, after a wait in vain, is quiet)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                if wait > 0:
                    log.warning(events.AUDIT_FAILED, reason="journal lock held by another "
                                "process: appended without it")
                return False
            time.sleep(0.005)
