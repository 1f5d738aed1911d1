"""A SIGHUP while `promoter run` starts, before the daemon handles it (r7 probe F7).

`promoter.entry` installs `remember` for SIGHUP before the imports (the signal's default
action would end the process without a line), and calls `forget` just before the
configuration is read: a reload asked for before that read is made by the read itself.
One from the read on (it may have read the file before its change) until the daemon's own
handler replaced `remember` was dropped, and the changed configuration never applied. The
daemon now asks `take` once its handler is in place, so that none falls between, and
reloads once ready. Kept apart from entry.py, which imports the CLI, and from daemon.py,
which `entry` must not import before its handlers are set: no import circle, nothing
heavy imported early.
"""

from __future__ import annotations

from types import FrameType

__all__ = ["forget", "remember", "take"]

_count = [0]  # SIGHUPs since the configuration's read began, before the daemon's handler


def remember(signum: int, frame: FrameType | None) -> None:
    """SIGHUP's handler until the daemon's: counted, nothing else (a signal handler)."""
    _count[0] += 1


def forget() -> None:
    """The configuration is read from here on: a SIGHUP before is no reload to make."""
    _count[0] = 0


def take() -> bool:
    """Whether a SIGHUP came from the configuration's read on (and forget it)."""
    came, _count[0] = _count[0] > 0, 0
    return came
