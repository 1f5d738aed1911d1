"""The inotify limits the early start-up child shares with the daemon's own watches
(`promoter.prescan`, r8 probe F1 and F4).

The child made before the daemon's imports holds an inotify instance and a watch on each
folder it lists until the daemon's watches are set and it has sent its listing. The
user's limits (fs.inotify.max_user_instances, max_user_watches) count both. The daemon's
watches stay for its life, the child's end within the start: so a daemon watch that
fails for the watch limit while the child lives is put off (a debug line, no error, no
degraded run) and added once the child has ended, before READY; and when the daemon's
inotify instance or its watch of `sessions/` cannot be made at all, the child is ended
first and the start tried again, rather than the daemon falling back to polling.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Protocol

from promoter import events
from promoter.logs import get_logger
from promoter.names import is_valid_run_id

__all__ = ["Child", "ChildShare", "runs_of"]

log = get_logger()
LIMITS = frozenset({errno.EMFILE, errno.ENOSPC})  # inotify's instance and watch limits


class Child(Protocol):
    @property
    def alive(self) -> bool: ...

    def discard(self) -> None: ...


class ChildShare:
    """What the watcher puts off while the child lives, and the child to end for room."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self._lock = threading.Lock()
        self._live = True
        self._paths: list[str] = []

    def defer(self, path: str, reason: str) -> bool:
        """True when `path`'s watch failed for the limit while the child holds watches: it
        is added once the child has ended (`take`), nothing is reported."""
        if "limit" not in reason:
            return False
        with self._lock:
            if not self._live:
                return False
            self._paths.append(path)
        log.debug(events.WATCH_DEFERRED, path=path, reason=reason,
                  action="added once the start-up child has ended")
        return True

    def end_for(self, exc: BaseException) -> bool:
        """The daemon's observer could not start for an inotify limit: the child, if it
        still lives, is ended (its instance and watches freed); True: try again."""
        if not (isinstance(exc, OSError) and exc.errno in LIMITS):
            return False
        with self._lock:
            live, self._live, self._paths = self._live, False, []
        if not (live and self._child.alive):
            return False
        log.debug(events.WATCH_DEFERRED, reason=str(exc),
                  action="the start-up child ended, the watches made again")
        self._child.discard()
        return True

    def take(self) -> list[str]:
        """The child has ended: the paths put off, to add now; none is put off from here on."""
        with self._lock:
            paths, self._paths, self._live = self._paths, [], False
        return paths


def runs_of(root: str, paths: list[str]) -> frozenset[str] | None:
    """The runs these watched folders belong to; None when `sessions/` itself is one."""
    runs = set()
    for path in paths:
        if not path.startswith(root + os.sep):
            return None
        run_id = path[len(root) + 1:].split(os.sep, 1)[0]
        if is_valid_run_id(run_id):
            runs.add(run_id)
    return frozenset(runs)
