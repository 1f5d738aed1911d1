"""Progress of long command-line work on a terminal (DESIGN §3).

Shown only when stderr is a terminal and the work has lasted longer than a
second; one status line (files done of files found, bytes, rate), never on a
pipe or in a journal, where it would be noise between log lines.

The line goes through the log sink (promoter.logsink) as its status line: the
writer thread draws it under the log lines, clears it before writing more of
them, and a terminal nobody reads never holds up the work that reports (the
daemon's catch-up thread, a command's main thread). The line is cleared at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from promoter.logsink import stderr_sink
from promoter.render import human_size

__all__ = ["TerminalProgress", "terminal_progress"]


class TerminalProgress:
    """One status line shown by `show` (None clears it), after `delay_s`, at most every
    `every_s`."""

    def __init__(self, show: Callable[[str | None], None], what: str, delay_s: float = 1.0,
                 every_s: float = 0.2, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.show = show
        self.what = what
        self.delay_s = delay_s
        self.every_s = every_s
        self._now = monotonic
        self._start = monotonic()
        self._last = 0.0
        self._shown = False

    def update(self, done: int, found: int, size_bytes: int = 0) -> None:
        now = self._now()
        elapsed = now - self._start
        if elapsed < self.delay_s or now - self._last < self.every_s:
            return
        self._last = now
        rate = done / elapsed if elapsed > 0 else 0.0
        self.show(f"{self.what} {done} of {found}, {human_size(size_bytes)}, {rate:.0f}/s")
        self._shown = True

    def close(self) -> None:
        """Clear the line (only if a line was shown at all)."""
        if self._shown:
            self.show(None)


def terminal_progress(what: str) -> TerminalProgress | None:
    """A progress line on stderr when it is a terminal (and the process's own, written
    by the log sink), else None."""
    try:
        tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"  # no cursor control
    except (AttributeError, ValueError):
        tty = False
    sink = stderr_sink() if tty else None
    if sink is None:
        return None
    status, fd = sink.status, sink.fd

    def fitted(text: str | None) -> None:
        """Cut to the terminal's width: a wrapped line is cleared only on its last row."""
        if text is not None:
            try:
                columns = os.get_terminal_size(fd).columns or 80  # 0: size unknown
            except OSError:
                columns = 80
            text = text[:max(columns - 1, 1)]
        status(text)
    return TerminalProgress(fitted, what)
