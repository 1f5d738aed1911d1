"""Time: an injectable clock and RFC 3339 UTC formatting (DESIGN §2)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "Clock",
    "SystemClock",
    "file_time",
    "format_time",
    "from_timestamp",
    "from_timestamp_ns",
    "last_change_ns",
    "parse_duration",
    "parse_time",
    "utcnow",
    "written_at",
]


CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's id; not in 3.11


class Clock(Protocol):
    """Wall time for stamps and expiry, monotonic time for waiting."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def file_now(self) -> datetime:
        """Now as the kernel stamps file times, to compare with a file's mtime."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def file_now(self) -> datetime:
        # The kernel stamps mtimes from its coarse clock, up to a tick (~4 ms) behind
        # the fine one: a file written just after a deletion stamped with the fine
        # clock would look older than it (DESIGN §1, deleted stays deleted).
        return from_timestamp_ns(time.clock_gettime_ns(CLOCK_REALTIME_COARSE))


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


EPOCH = _EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# an entry rebuilt from its stored copy knows nothing of its source's ctime: recorded as the
# epoch, which every ctime is after, so its source is read (and its digest compared) once
UNREAD = EPOCH
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def file_time(ns: int) -> datetime | None:
    """A file time with microsecond precision, or None when datetime cannot hold it: agents
    set any time (`touch -d @300000000000`, a negative year), DESIGN §6."""
    # the epoch plus whole microseconds (floored), built from days, seconds, microseconds:
    # a third of fromtimestamp + replace, paid for every file of a catch-up (issue 15)
    days, rest = divmod(ns // 1000, 86_400_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    try:
        return _EPOCH + timedelta(days, seconds, micros)
    except OverflowError:
        return None


ONE_US = timedelta(microseconds=1)
MIN_US = (_MIN - _EPOCH) // ONE_US
MAX_US = (_MAX - _EPOCH) // ONE_US


def micros(value: datetime) -> int:
    """An aware time as whole microseconds since the epoch: compared with a file's
    `mtime_ns // 1000`, it says what `value == file_time(mtime_ns)` says without building
    a datetime for every file of a catch-up (issue 15)."""
    return (value - _EPOCH) // ONE_US


def file_micros(ns: int) -> int | None:
    """`file_time(ns)` as microseconds since the epoch (floored), None when it is None."""
    us = ns // 1000
    return us if MIN_US <= us <= MAX_US else None


def from_timestamp_ns(ns: int) -> datetime:
    """A file time with microsecond precision, clamped to datetime's range: never raises."""
    value = file_time(ns)
    if value is not None:
        return value
    return _MAX if ns > 0 else _MIN


def written_at(mtime_ns: int, ctime_ns: int) -> datetime:
    """When a file was last written, as far as deletions are concerned (DESIGN §1): the
    earlier of its modification time, which an agent sets at will, and its change time,
    which it cannot. A future-dated old file stays as old as its ctime says."""
    return from_timestamp_ns(min(mtime_ns, ctime_ns))


def last_change_ns(mtime_ns: int, ctime_ns: int, now_ns: int) -> int:
    """When the file last changed, for deciding that it is quiet: its mtime, unless that lies
    in the future (a time stamp in the future is no reason to wait), then its ctime."""
    return mtime_ns if mtime_ns <= now_ns else min(ctime_ns, now_ns)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`; sub-second digits only when there are any."""
    # isoformat, not strftime: glibc's %Y does not pad, so the year 500 (an agent's
    # `touch -d @-46800000000` on tmpfs) was written "500-...", which no reader accepts
    spec = "microseconds" if value.microsecond else "seconds"
    if value.tzinfo is UTC:  # an entry's time, already in UTC: its `+00:00` is the `Z`
        return value.isoformat(timespec=spec)[:-6] + "Z"
    value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec=spec) + "Z"


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 stamp, `Z` or offset, into an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return value.astimezone(UTC)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `3d`, `2w` → a timedelta; ValueError for anything else."""
    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    if unit not in _UNITS or not (number.isascii() and number.isdigit()) or len(number) > 9:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 12h, 3d or 2w")
    try:
        return timedelta(seconds=int(number) * _UNITS[unit])
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any date can go back") from None
