"""One exception tree; each kind carries the exit status the CLI gives it (DESIGN §3)."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable

__all__ = [
    "DESCRIPTORS",
    "QUIET",
    "ConfigError",
    "ConflictError",
    "InvalidNameError",
    "LimitEpisodes",
    "NotFoundError",
    "PromoterError",
    "StoreIOError",
    "TooLargeError",
    "UsageError",
    "descriptor_episodes",
    "host_limit",
    "plain_reason",
]


class PromoterError(Exception):
    """Root of every error promoter reports to a user as one line."""

    exit_code = 1


class ConfigError(PromoterError):
    """The configuration (file, environment or flags) is unusable."""

    exit_code = 2


class UsageError(PromoterError):
    """The command line is malformed."""

    exit_code = 2


class NotFoundError(PromoterError):
    """A run, artifact or library file does not exist."""


class InvalidNameError(PromoterError):
    """A run id, file name or library name breaks the rules of DESIGN §1."""


class ConflictError(PromoterError):
    """A library name is taken and overwriting was not asked for."""


class TooLargeError(PromoterError):
    """An upload or a file is over its configured limit."""


class StoreIOError(PromoterError):
    """The store could not be read or written."""


# errno -> the host's limit, said plainly: a limit to raise, not a bug (r6 start probe 5)
DESCRIPTORS = "out of file descriptors"
_LIMITS = {
    errno.EMFILE: DESCRIPTORS + " ({}): raise the daemon's limit (LimitNOFILE=)",
    errno.ENFILE: DESCRIPTORS + " ({}): raise the system's limit (fs.file-max)",
    errno.EFBIG: "file size limit reached ({}): raise the daemon's limit (LimitFSIZE=)",
    errno.ENOSPC: "disk full ({})",
    errno.EDQUOT: "disk quota exceeded ({})",
    errno.ENOMEM: "out of memory ({}): raise the daemon's limit (LimitAS=, MemoryMax=)",
}
THREADS = "cannot start a thread ({}): raise the daemon's limits (LimitAS=, TasksMax=, LimitNPROC=)"


def host_limit(exc: BaseException) -> str | None:
    """One plain line when `exc` (or what it wraps: a StoreIOError raised `from None` still
    holds its OSError as context) is a host limit, else None. The one place that says so."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _LIMITS:
            return _LIMITS[cur.errno].format(cur.strerror or cur)
        if isinstance(cur, MemoryError):
            return _LIMITS[errno.ENOMEM].format("no memory")
        if isinstance(cur, RuntimeError) and "can't start new thread" in str(cur):
            return THREADS.format(cur)
        cur = cur.__cause__ or cur.__context__
    return None


def plain_reason(exc: BaseException) -> str:
    """A failure's reason in one line: a host limit named, an OSError by its text and path,
    anything else by its type and text."""
    if (limit := host_limit(exc)) is not None:
        return limit
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    if isinstance(exc, PromoterError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class LimitEpisodes:
    """Out of descriptors, every retry of every waiting file fails alike, and the backoff
    (DESIGN §5: it never gives up) logged an `artifact.failed` error for each attempt. Here
    such failures make episodes: the first is told (at warning), the rest quietly (debug),
    and the end is told once with their count (`settled`). An episode ends when each file
    that failed in it has been done otherwise since (promoted, unchanged, lost...), or, a
    file gone meanwhile never coming back, at a later success once no such failure came
    for `linger_s`. Thread-safe (the workers); nothing but one read a batch outside one."""

    def __init__(self, prefix: str = DESCRIPTORS, linger_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix, self.linger_s, self._clock = prefix, linger_s, clock
        self._lock = threading.Lock()
        self._files: set[tuple[str, str]] = set()  # failed, not done since
        self.open = False  # read without the lock: a batch outside an episode pays that only
        self._quiet = 0
        self._started = self._last = 0.0

    def failed(self, run_id: str, filename: str | None, reason: str) -> str:
        """The level to log this failure at: error (not this limit), warning (the first of
        an episode), debug (one more of it). `filename` None: a batch's failure, whose files
        are each tried and told again."""
        if not reason.startswith(self.prefix):
            return "error"
        with self._lock:
            if not self.open:
                self.open, self._quiet = True, -1
                self._started = self._clock()
            if filename is not None:
                self._files.add((run_id, filename))
            self._last = self._clock()
            self._quiet += 1
            return "warning" if self._quiet == 0 else "debug"

    def settled(self, done: Iterable[tuple[str, str]]) -> tuple[int, float] | None:
        """After a batch's failures were told, its files done otherwise (run id, filename):
        when that ends the episode, its failures told quietly and its seconds."""
        with self._lock:
            any_done = False
            for key in done:
                any_done = True
                self._files.discard(key)
            now = self._clock()
            if not self.open or not any_done or (
                    self._files and now - self._last < self.linger_s):
                return None
            self.open = False
            self._files.clear()
            return self._quiet, now - self._started


QUIET = {"then": "each retry logged at debug until a copy goes through (limit.recovered)"}
descriptor_episodes = LimitEpisodes()  # the process's: every store of it draws on one limit
