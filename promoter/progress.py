"""Progress of long command-line work on a terminal (DESIGN §3).

Shown only when stderr is a terminal and the work has lasted longer than a
second; one line rewritten in place (files done of files found, bytes, rate),
never on a pipe or in a journal, where it would be noise between log lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from promoter.render import human_size

__all__ = ["TerminalProgress", "terminal_progress"]


class TerminalProgress:
    """One status line on `stream`, after `delay_s`, at most every `every_s`."""

    def __init__(self, stream: TextIO, what: str, delay_s: float = 1.0, every_s: float = 0.2,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.what = what
        self.delay_s = delay_s
        self.every_s = every_s
        self._now = monotonic
        self._start = monotonic()
        self._last = 0.0
        self._shown = False
        self._latest = (0, 0, 0)

    def update(self, done: int, found: int, size_bytes: int = 0, final: bool = False) -> None:
        self._latest = (done, found, size_bytes)
        now = self._now()
        elapsed = now - self._start
        if elapsed < self.delay_s or (not final and now - self._last < self.every_s):
            return
        self._last = now
        rate = done / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r{self.what} {done} of {found}, {human_size(size_bytes)}, "
                          f"{rate:.0f}/s\033[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """The last figures, then end the line (only if a line was shown at all)."""
        if self._shown:
            self.update(*self._latest, final=True)
            self.stream.write("\n")
            self.stream.flush()


def terminal_progress(what: str) -> TerminalProgress | None:
    """A progress line on stderr when it is a terminal, else None."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalProgress(sys.stderr, what) if tty else None
