"""The harness's teardown, and not paying for the last run's teardown in this one.

On an ext4 without a journal (fsjournal.py) every create skips the inodes freed in the
last 60 s, 360 s while their inode-table block is dirty. At its end the harness removes its
tree, `sync`s and writes the time into a stamp file beside its temporary folders. The sync
does not shorten the window to 60 s, as once written here: the next run's own creates
dirty the same table blocks again, and from then on the 360 s hold (eleventh round: bare
creates cost 140-490 us for five minutes after a run's teardown, 20 us before it). A run
started within 365 s of that stamp waits out the rest before measuring anything, unless
told not to. Other deletions on the machine (a test suite's temporary folders) still tax
a run: this covers the harness's own.

The stamp is untrusted input (a shared /tmp): anything unreadable counts as no stamp, and
it is rewritten in place (no rename: a rename over it would free one more inode).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["STAMP_NAME", "WINDOW_S", "finish", "read_stamp", "wait_before_run", "wait_s"]

STAMP_NAME = ".promoter-bench-teardown"
WINDOW_S = 365.0  # ext4's recently-deleted window while the table block is dirty, and slack


def stamp_path(tmp_dir: str | Path) -> Path:
    return Path(tmp_dir) / STAMP_NAME


def read_stamp(path: Path) -> float | None:
    """The wall time (time.time()) of the last teardown, or None."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    wall = doc.get("wall") if isinstance(doc, dict) else None
    if isinstance(wall, bool) or not isinstance(wall, int | float) or wall != wall:
        return None
    return float(wall)


def wait_s(stamp: float | None, now: float, journal: bool | None,
           window_s: float = WINDOW_S) -> float:
    """Seconds left of the window after the last teardown: only on an ext4 known to have
    no journal (a journal's ext4 does not skip recently freed inodes); a stamp from the
    future (a clock set back) waits at most one window."""
    if journal is not False or stamp is None:
        return 0.0
    return min(window_s, max(0.0, window_s - (now - stamp)))


def wait_before_run(
    tmp_dir: str | Path,
    journal: bool | None,
    skip: bool,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Wait out what is left of the last teardown's window (unless skip); what happened,
    for the results JSON."""
    stamp = read_stamp(stamp_path(tmp_dir))
    t = now()
    need = wait_s(stamp, t, journal)
    out: dict[str, Any] = {
        "stamp": str(stamp_path(tmp_dir)),
        "last_teardown_age_s": None if stamp is None else round(t - stamp, 1),
        "journal": journal,
        "needed_s": round(need, 1),
        "waited_s": 0.0,
        "skipped": bool(skip and need > 0),
    }
    if need <= 0:
        return out
    if skip:
        print(f"not waiting {need:.0f} s (--no-teardown-wait): ext4 without a journal taxes "
              "every create for up to 360 s after the last run's teardown", flush=True)
        return out
    print(f"waiting {need:.0f} s: ext4 without a journal taxes every create for up to 360 s "
          "after the last run's teardown", flush=True)
    t0 = time.monotonic()
    sleep(need)  # a wait for the kernel's window to pass: no event to poll for
    out["waited_s"] = round(time.monotonic() - t0, 1)
    return out


def write_stamp(path: Path, doc: dict[str, Any]) -> str | None:
    """Write the stamp in place; the error, if any (a stamp is a courtesy, not a must)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        return str(exc)
    try:
        data = (json.dumps(doc) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as exc:
        return str(exc)
    finally:
        os.close(fd)
    return None


def finish(tree: Path, tmp_dir: str | Path, keep: bool) -> dict[str, Any]:
    """Remove the run's tree (unless keep), sync, stamp the time: what it cost."""
    out: dict[str, Any] = {"removed": not keep}
    t0 = time.monotonic()
    if not keep:
        shutil.rmtree(tree, ignore_errors=True)
    t1 = time.monotonic()
    os.sync()  # the deletions on disk before the stamp: the wait counts from here
    t2 = time.monotonic()
    wall = time.time()
    out.update(rmtree_s=round(t1 - t0, 2), sync_s=round(t2 - t1, 2),
               at=dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="seconds"))
    # the run's tools freed inodes too (promoter's metadata.json renames): stamp even if kept
    error = write_stamp(stamp_path(tmp_dir), {"wall": wall, "tree": str(tree), **out})
    if error:
        out["stamp_error"] = error
    return out
