"""A run's mark: its `files/` may hold what its metadata.json does not list (DESIGN §6).

After a crash, every file under `files/` must be listed (DESIGN §6): a copy renamed in
whose metadata write never happened, a rewrite renamed over its old copy with the old
entry left, a temporary staged copy. Finding them took an `lstat` of every stored copy
at each start (a third of a warm start over 100,000 files, issue 15). Only a write
session that changes `files/` can leave such a thing, so each one marks its run first:

    artifacts/<run_id>/.unlisted      an empty file; any entry of that name is a mark

1. Before the session's first change to `files/` (a staged copy, a removal) the mark is
   made (`set`); it is made durable (its folder flushed, or by the batch's `syncfs`)
   before the first rename or removal there can be (`pending_flush`, `flushed`).
2. A metadata write that lists every change so far makes the session clean (`written`);
   a later change makes it dirty again.
3. At the session's end (`end`), a mark this session made is removed only when the
   session ended clean and without an error; a mark it found is never removed (another
   session was cut short, or failed, before its metadata write).

The mark is one file for the life of the run: at a clean end it is renamed to
`.listed` (`MARK_AT_REST`), and the next session renames it back (`renameat2` with
`RENAME_NOREPLACE`, so that another session's mark is never replaced). A create and an
unlink a session freed an inode a batch; on an ext4 without a journal every later create
in the group, the agents' too, then scans past each inode freed in the last minute
(`recently_deleted` in fs/ext4/ialloc.c: up to a third of a burst's CPU, issue 15). Where
renaming cannot be done so (no `renameat2`, a file system without the flag, a sandbox that
refuses the call, a resting mark that cannot move) the mark is made and removed as before.

So a run without a mark has nothing unlisted: its start-up repair reads its metadata and
leaves `files/` alone. A marked run is walked as before (`recovery.relist`); the repair
then owns the mark (`adopt`) and removes it once the run is listed again. The marks are
trusted once the store has been repaired whole (`REPAIRED`, written after the first start
of a promoter that marks, so that an older promoter's crash leftovers are found).

All of it happens under the run's lock: one session a run at a time, on every process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from promoter.layout import MARK, MARK_AT_REST
from promoter.safeio import open_dir_chain, remove_tree
from promoter.writeback import libc_function

__all__ = ["RunMark", "is_marked"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE = 1  # <linux/fs.h>


def rename_noreplace(dir_fd: int, src: str, dst: str) -> bool:
    """Rename `src` to `dst` in one folder unless `dst` exists: True when done. Raises
    FileExistsError when `dst` exists; False for anything else (no `src`, no such rename
    here, a sandbox that refuses the call, a `src` that cannot move): the caller then does
    without, as before the resting mark (probe r10: EPERM from a seccomp filter stopped
    every promotion)."""
    func = libc_function("renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                         ctypes.c_char_p, ctypes.c_uint)
    if func is None:
        return False
    if func(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), dst)
    return False


def is_marked(art: int, run_id: str) -> bool:
    """Whether the run carries a mark: any entry of that name (a file, a folder, a link);
    one that cannot be looked at counts as a mark (the walk is the safe side)."""
    try:
        os.stat(f"{run_id}/{MARK}", dir_fd=art, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return True


class RunMark:
    """One write session's mark of its run (the run's lock held)."""

    def __init__(self, art: int, run_id: str, detached: bool = False) -> None:
        self._art = art
        self._run_id = run_id
        self._detached = detached  # outside a session: no `end`, the mark always stays
        self._run_fd: int | None = None  # the run folder, once this session made the mark
        self._unflushed = False  # a mark made this session that may not be on disk yet
        self._present = False  # the mark is there (made, found or adopted) this session
        self._ours = False  # made (or adopted) by this session: it may remove it
        self._clean = True  # no change to files/ since the last metadata write

    def set(self) -> None:
        """Before a change to files/: make the mark if the run has none. Raises OSError when
        it cannot be made: no copy may then be renamed in."""
        self._clean = False
        if self._present:
            return
        run_fd = open_dir_chain(self._art, [self._run_id], create=True)
        try:
            if not rename_noreplace(run_fd, MARK_AT_REST, MARK):  # no inode made (above)
                os.close(os.open(MARK, _CREATE, 0o644, dir_fd=run_fd))
        except FileExistsError:  # another session's (cut short or failed): it stays
            os.close(run_fd)
        except BaseException:
            os.close(run_fd)
            raise
        else:
            self._ours = self._unflushed = True
            self._run_fd = run_fd  # flushed before the first rename (`pending_flush`)
        self._present = True

    def run_folder(self) -> int | None:
        """The run folder's descriptor this session opened to make the mark (open until
        `end`), for the session's metadata write; None when it made none."""
        return self._run_fd

    def pending_flush(self) -> int | None:
        """The run folder to flush before a rename or removal in files/ (a mark made this
        session, not yet on disk); None when nothing is waiting."""
        return self._run_fd if self._unflushed else None

    def flushed(self) -> None:
        """The mark is on disk (its folder flushed, or the whole file system synced)."""
        self._unflushed = False
        if self._detached and self._run_fd is not None:
            os.close(self._run_fd)
            self._run_fd = None

    def flush(self) -> None:
        """Make the mark durable now (a removal or a lone copy: no batch flush to join).
        Raises OSError: a mark that may not be on disk allows no change."""
        if self._run_fd is not None and self._unflushed:
            os.fsync(self._run_fd)
            self.flushed()

    def adopt(self) -> None:
        """The repair walks a marked run: the mark becomes this session's, to remove once
        the run is listed again (`written`, or `relisted` when nothing needed a change)."""
        self._present = self._ours = True
        self._clean = False

    @property
    def clean(self) -> bool:
        """No change to files/ since the session's last metadata write (or its start)."""
        return self._clean

    def written(self) -> None:
        """A metadata write that lists every change of the session so far."""
        self._clean = True

    def untouched(self) -> None:
        """Set for a change that never came (every copy of a batch given up at a stop,
        changed or refused before its rename): files/ holds nothing new, the mark may rest
        (probe r10-stop F4: it stayed, and the next start walked the run)."""
        self._clean = True

    def end(self, ok: bool) -> None:
        """The session ends: put the mark to rest if this session made it and left the run
        clean. Need not be durable: a mark that comes back costs one walk."""
        run_fd, self._run_fd = self._run_fd, None
        try:
            if ok and self._ours and self._clean:
                with contextlib.suppress(OSError):
                    if run_fd is not None and _rest(run_fd):
                        return  # made (or woken) by this session: the empty file it was
                    if run_fd is None:  # adopted by a repair: whatever it is goes
                        run_fd = open_dir_chain(self._art, [self._run_id])
                    remove_tree(run_fd, MARK)  # a file as a rule; a planted folder goes too
        finally:
            if run_fd is not None:
                os.close(run_fd)


def _rest(run_fd: int) -> bool:
    """Rename the mark to its resting name: False when it cannot be (then it is removed)."""
    try:
        return rename_noreplace(run_fd, MARK, MARK_AT_REST)
    except FileExistsError:  # a resting mark already there (two at once): remove this one
        return False
