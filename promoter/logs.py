"""structlog set-up: one JSON object a line on stderr, never stdout (DESIGN §5)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from promoter import events
from promoter.logsink import INFO, LIFECYCLE, URGENT, LogSink, stderr_sink
from promoter.structlog_import import structlog

__all__ = ["StdlibBridge", "configure_logging", "get_logger", "info_many", "json_members",
           "stderr_line"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _LossyPrintLogger(structlog.PrintLogger):
    """A line that cannot be written is dropped, never raised: stderr redirected to a file on
    a full disk (ENOSPC) or a closed pipe once ended every worker that logged, and the daemon
    went on watching with nobody left to promote."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # ValueError: the stream was closed
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_LIFECYCLE = frozenset({events.DAEMON_STARTING, events.DAEMON_READY, events.DAEMON_STOPPING,
                        events.DAEMON_STOPPED, events.DAEMON_RELOADED, events.DAEMON_FAILED,
                        events.DAEMON_STOP_STUCK})
_priority = threading.local()  # the event being logged in this thread: set, then taken


def _mark_priority(logger: Any, method_name: str, event_dict: Any) -> Any:
    """How much of the sink's reserve the line may use (promoter.logsink): lifecycle
    lines, then warnings and errors, outlast a queue full of per-file info lines."""
    _priority.value = (LIFECYCLE if event_dict.get("event") in _LIFECYCLE else
                       INFO if method_name in ("debug", "info") else URGENT)
    return event_dict


class _SinkLogger:
    """Lines to the process's stderr through its writer thread (promoter.logsink): a
    stderr nobody reads never blocks the thread that logs. No stderr at all: dropped."""

    def __init__(self, sink: LogSink | None, priority: int | None = None) -> None:
        self._sink = sink
        self._fixed = priority

    def msg(self, message: Any) -> None:
        priority = getattr(_priority, "value", INFO) if self._fixed is None else self._fixed
        _priority.value = INFO  # taken: a later line that skipped the processors is info
        if self._sink is not None:
            self._sink.put(message if isinstance(message, str) else str(message), priority)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _StderrFactory:
    """Loggers that write to whatever `sys.stderr` is at the time of each event: the
    process's own through the sink, another (a test's capture) directly."""

    def __call__(self, *args: Any) -> _SinkLogger | structlog.PrintLogger:
        if sys.stderr is None or sys.stderr is sys.__stderr__:
            return _SinkLogger(stderr_sink())
        return _LossyPrintLogger(file=sys.stderr)


class _StreamFactory:
    """Loggers that write to one given stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return _LossyPrintLogger(file=self.stream)


class _Quoted:
    """A string value the console renderer shows as its Python repr (escaped, quoted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)


class _PrintableValues:
    """The console renderer, with a string value that holds anything `printable` escapes
    shown as its repr: structlog prints a string without a space raw, and a file name an
    agent chose must not reach the operator's terminal as ESC (JSON escapes its own). A
    traceback (`exception`) keeps its lines."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> Any:
        from promoter.render import printable

        shown = {k: _Quoted(v) if isinstance(v, str) and k != "exception"
                 and printable(v) != v else v for k, v in event_dict.items()}
        return self.inner(logger, name, shown)


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every event to `stream` (the current stderr by default) at `level` and above."""
    global _json_chain
    renderer: Any
    if fmt == "console":
        target = stream or sys.stderr
        tty = target is not None and target.isatty()  # None: started with `2>&-`
        renderer = _PrintableValues(structlog.dev.ConsoleRenderer(colors=tty))
    else:
        renderer = structlog.processors.JSONRenderer()
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mark_priority,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_StreamFactory(stream) if stream is not None else _StderrFactory(),
        cache_logger_on_first_use=False,
    )
    _json_chain = tuple(processors) if fmt == "json" else None


def get_logger(name: str = "promoter") -> Any:
    """A structlog logger; events are names from promoter.events.

    Until configure_logging() runs, JSON at info on stderr: structlog's own
    default prints to stdout, where logs must never go.
    """
    if not structlog.is_configured():
        configure_logging()
    return structlog.get_logger(name)


_json_chain: tuple[Any, ...] | None = None  # the processors of the JSON format, as configured


def json_members(fields: Mapping[str, Any]) -> str | None:
    """`fields` as the members of a JSON object, as the JSON log renderer writes them
    (`"key": value, ...`, ASCII, in order): encoded once, for the log line and the journal
    line of an audited event (DESIGN §11 wants both). None when a value is not plain JSON
    (the renderer's fallback then decides how it reads)."""
    try:
        return json.dumps(fields)[1:-1]
    except (TypeError, ValueError):
        return None


def _plain_json(bound: Any) -> bool:
    """Whether an info line may be written as the configured JSON processors would make it,
    without them: the chain is still `configure_logging`'s (a test's capture replaces it in
    place) and nothing adds fields to it (no context variable or bound value)."""
    chain, now = _json_chain, structlog.get_config()["processors"]
    return (chain is not None and len(now) == len(chain)
            and all(a is b for a, b in zip(now, chain, strict=True))
            and not bound._context and not structlog.contextvars.get_contextvars())


_RENDERED = frozenset({"event", "level", "timestamp"})  # the keys the processors write


def _plain_lines(items: Sequence[tuple[str, Mapping[str, Any]]],
                 encoded: Sequence[str | None]) -> str | None:
    """The JSON renderer's lines for `items` from their encoded fields (one time stamp for
    the batch); None if any cannot be made so (a field the processors would overwrite, a
    value that is not plain JSON)."""
    stamp = json.dumps(datetime.now(tz=UTC).isoformat().replace("+00:00", "Z"))
    tail = f'"level": "info", "timestamp": {stamp}}}'
    lines = []
    for (event, fields), members in zip(items, encoded, strict=True):
        if members is None or not _RENDERED.isdisjoint(fields):
            return None
        head = f"{{{members}, " if members else "{"
        lines.append(f'{head}"event": {json.dumps(event)}, {tail}')
    return "\n".join(lines)


def info_many(items: Sequence[tuple[str, Mapping[str, Any]]],
              extra: Mapping[str, Any] | None = None,
              encoded: Sequence[str | None] | None = None) -> None:
    """Info events, each rendered once by the configured processors, written together: a
    batch of promotions is one write to stderr, not one write and flush a line (a burst
    logs a line a promoted file). `extra`: fields added to every event (after its own).
    `encoded`: each event's fields (`extra` already in them) as `json_members` made them:
    with the JSON format, each line is then those members, the event, level and time, as
    the processors would write it, one time stamp for the batch (the processors were two
    thirds of an audited promotion's cost, issue 15). Nothing is rendered, nor merged,
    when info is filtered out."""
    if not items:
        return
    bound = get_logger().bind()
    if not bound.is_enabled_for(logging.INFO):
        return
    if encoded is not None and _plain_json(bound):
        text = _plain_lines(items, encoded)
        if text is not None:
            _priority.value = INFO
            bound._logger.msg(text)
            return
    lines: list[str] = []
    for event, fields in items:
        try:
            merged = {**fields, **extra} if extra else dict(fields)
            args, kw = bound._process_event("info", event, merged)
        except structlog.DropEvent:
            continue
        if len(args) == 1 and not kw and isinstance(args[0], str):
            lines.append(args[0])
        else:  # a renderer that does not make a line (a test's): logged as structlog would
            bound._logger.info(*args, **kw)
    if lines:
        bound._logger.msg("\n".join(lines))


def stderr_line(text: str) -> None:
    """One plain line on stderr (a command's error), after the log lines already queued
    and, like them, never waiting for a reader."""
    if sys.stderr is None or sys.stderr is sys.__stderr__:
        _SinkLogger(stderr_sink(), URGENT).msg(text)
    else:
        sys.stderr.write(text + "\n")


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
