"""PromoterError kinds as HTTP answers: `{"detail": "one clear sentence"}` (DESIGN §7).

The one mapping from error kinds to statuses, used by the app's exception
handlers and by the lean file path alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from fastapi.responses import JSONResponse

from promoter.errors import (
    ConfigError,
    ConflictError,
    InvalidNameError,
    NotFoundError,
    PromoterError,
    StoreIOError,
    TooLargeError,
)

__all__ = ["StreamBroken", "detail_response", "error_response", "sentence", "status_of",
           "store_io_error"]

_STATUS: Final[dict[type[PromoterError], int]] = {
    InvalidNameError: 400,
    NotFoundError: 404,
    ConflictError: 409,
    TooLargeError: 413,
    StoreIOError: 503,
    ConfigError: 500,
}


class StreamBroken(Exception):
    """A streamed answer whose head is already sent cannot be finished (a stored file shrank or
    failed to read): the connection is dropped so the client sees a broken download, never a
    short one that looks whole, and the log gets one line, not a traceback."""


def sentence(text: str) -> str:
    """A store message ("no run x") as the one clear sentence an answer carries."""
    text = text.strip() or "error"
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def status_of(exc: PromoterError) -> int:
    for kind in type(exc).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return 500


def detail_response(status: int, detail: str,
                    headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status,
                        headers=dict(headers) if headers else None)


def error_response(exc: PromoterError) -> JSONResponse:
    """The answer for a store error: its status and its message as a sentence."""
    return detail_response(status_of(exc), sentence(str(exc)))


def store_io_error(exc: BaseException) -> StoreIOError:
    """An OSError the store let through (a read-only or full disk, a lost mount) as the
    503 every store I/O failure is; the reason without a path, which may lie outside
    the store (DESIGN §7)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "I/O error"
    return StoreIOError(f"the store could not be read or written: {reason.lower()}")
