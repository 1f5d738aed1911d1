"""watchdog's own log, read by the watcher (DESIGN §5): some failures show nowhere else."""

from __future__ import annotations

import logging
from typing import Protocol

from promoter.watchtree import overflow_being_reported

__all__ = ["LogBridge"]


class _Watcher(Protocol):
    stopping: bool

    def overflow(self) -> None: ...

    def error(self, source: str, reason: str, runs: frozenset[str] | None,
              **extra: object) -> None: ...


class LogBridge(logging.Handler):
    """watchdog's warnings: an overflow (unless already reported by the reader) becomes a
    catch-up of every run, any other warning a `watch.error` and the same catch-up."""

    def __init__(self, watcher: _Watcher) -> None:
        super().__init__(level=logging.WARNING)
        self.w = watcher

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if overflow_being_reported() or self.w.stopping:
                return
            message = record.getMessage()
            if "overflow" in message.lower():
                self.w.overflow()
            else:
                self.w.error(record.name, message, None)
        except Exception:  # a logging handler must never raise into watchdog
            self.handleError(record)
