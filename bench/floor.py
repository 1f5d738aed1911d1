"""A gauge of what a durable small file costs this machine, in the same minutes as a shape.

On this VM the kernel's cost of a durable 4 KiB file (create, write, fsync, close) moves
2-5x with the file system's recent history, from ~0.2 to ~0.5 ms of CPU a file. The cause
is not `discard` (as once written here) but an ext4 without a journal: each new inode
skips, one by one, every free inode of its group freed in the last 60 s (360 s while their
inode-table block is dirty; `recently_deleted()` in fs/ext4/ialloc.c), so for a minute or
more after mass deletions every create pays (fsjournal.py says whether the tmp file system
is such an ext4; teardown.py keeps a run off the last run's deletions). The daemon's CPU
per file means little without it, so each shape measures it just before its tools: the
harness itself writes FILES such files, one after another, each flushed, and reads its own
thread's CPU. It is a gauge, not a floor: promoter shares its flushes (one syncfs for a big
batch), so it can spend less than this a file. The files are left in place (deleting them
would raise the next measurement's cost); the run's temporary folder goes at the end.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

__all__ = ["durable_creates"]


def durable_creates(folder: Path, size: int, files: int = 500) -> dict[str, Any]:
    """CPU (ms) a file of writing `files` files of `size` bytes, each fsynced."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    before = resource.getrusage(resource.RUSAGE_THREAD)
    for i in range(files):
        fd = os.open(folder / f"f{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    user = (after.ru_utime - before.ru_utime) / files * 1000
    sys = (after.ru_stime - before.ru_stime) / files * 1000
    return {"tool": "floor (durable create, fsync each)", "files": files,
            "floor_ms_per_file": round(user + sys, 3), "floor_sys_ms_per_file": round(sys, 3)}
