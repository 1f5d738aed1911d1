"""structlog set-up: one JSON object a line on stderr, never stdout (DESIGN §5)."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["StdlibBridge", "configure_logging", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _StderrFactory:
    """Loggers that write to whatever `sys.stderr` is at the time of each event."""

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=sys.stderr)


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every event to `stream` (the current stderr by default) at `level` and above."""
    renderer: Any
    if fmt == "console":
        tty = (stream or sys.stderr).isatty()
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=(structlog.PrintLoggerFactory(file=stream) if stream is not None
                        else _StderrFactory()),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "promoter") -> Any:
    """A structlog logger; events are names from promoter.events.

    Until configure_logging() runs, JSON at info on stderr: structlog's own
    default prints to stdout, where logs must never go.
    """
    if not structlog.is_configured():
        configure_logging()
    return structlog.get_logger(name)


class StdlibBridge(logging.Handler):
    """Records of libraries' stdlib logging (watchdog, uvicorn) as structlog events named
    `event`, so stderr stays one JSON object a line. The one bridge of the daemon and
    the server."""

    def __init__(self, event: str, level: int = logging.NOTSET) -> None:
        super().__init__(level=level)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = ("error" if record.levelno >= logging.ERROR else
                      "warning" if record.levelno >= logging.WARNING else
                      "info" if record.levelno >= logging.INFO else "debug")
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            getattr(get_logger(), method)(self.event, **fields)
        except Exception:  # a log handler never raises
            self.handleError(record)
