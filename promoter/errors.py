"""One exception tree; each kind carries the exit status the CLI gives it (DESIGN §3)."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "InvalidNameError",
    "NotFoundError",
    "PromoterError",
    "StoreIOError",
    "TooLargeError",
    "UsageError",
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
