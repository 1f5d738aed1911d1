"""One exception tree; each kind carries the exit status the CLI gives it (DESIGN §3)."""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "ConflictError",
    "InvalidNameError",
    "NotFoundError",
    "PromoterError",
    "StoreIOError",
    "TooLargeError",
    "UsageError",
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
_LIMITS = {
    errno.EMFILE: "out of file descriptors ({}): raise the daemon's limit (LimitNOFILE=)",
    errno.ENFILE: "out of file descriptors ({}): raise the system's limit (fs.file-max)",
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
