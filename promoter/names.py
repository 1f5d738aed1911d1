"""Validation of run ids, artifact file names and library names (DESIGN §1, §6), and of
the HOST:PORT an HTTP server listens on (DESIGN §3).

Every name that reaches the store, from an agent's folder, the command line or
an HTTP request, goes through here first, so that no name can climb out of its
folder.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from promoter.errors import InvalidNameError

__all__ = [
    "TEMP_PREFIX",
    "check_library_name",
    "check_relpath",
    "check_run_id",
    "is_excluded",
    "is_valid_run_id",
    "split_host_port",
    "split_relpath",
]

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TEMP_PREFIX = ".promoter-"
MAX_NAME_BYTES = 255
MAX_RELPATH_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_valid_run_id(run_id: str) -> bool:
    """True when `run_id` may name a run (DESIGN §1)."""
    return RUN_ID_RE.fullmatch(run_id) is not None


def check_run_id(run_id: str) -> str:
    """Return `run_id` or raise InvalidNameError."""
    if not is_valid_run_id(run_id):
        raise InvalidNameError(f"invalid run id {run_id!r}")
    return run_id


def _check_component(part: str, what: str) -> None:
    if part in ("", ".", ".."):
        raise InvalidNameError(f"invalid {what}: empty, '.' or '..' component")
    if "\x00" in part or "/" in part:
        raise InvalidNameError(f"invalid {what}: NUL or '/' in a name")
    try:
        # strict: bytes that are not UTF-8 (decoded by the OS layer as surrogates) can be no
        # string of metadata.json or JSON answer, so such a name is refused, not stored
        encoded = part.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNameError(f"invalid {what}: not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidNameError(f"invalid {what}: a component is over {MAX_NAME_BYTES} bytes")


def split_relpath(relpath: str) -> list[str]:
    """Split an artifact file name (`plots/a.png`) into checked components."""
    if not relpath or relpath.startswith("/"):
        raise InvalidNameError(f"invalid file name {relpath!r}")
    if len(relpath.encode("utf-8", "surrogateescape")) > MAX_RELPATH_BYTES:
        raise InvalidNameError("invalid file name: too long")
    parts = relpath.split("/")
    for part in parts:
        _check_component(part, "file name")
    if parts[-1].startswith(TEMP_PREFIX):
        raise InvalidNameError("invalid file name: reserved prefix .promoter-")
    return parts


def check_relpath(relpath: str) -> str:
    """Return `relpath` or raise InvalidNameError."""
    split_relpath(relpath)
    return relpath


def check_library_name(name: str) -> str:
    """Return `name` if it may name a library file: one component, no leading dot."""
    if not name or name.startswith("."):
        raise InvalidNameError(f"invalid library name {name!r}: empty or starts with '.'")
    _check_component(name, "library name")
    if _CONTROL.search(name):
        raise InvalidNameError(f"invalid library name {name!r}: control characters")
    return name


def is_excluded(parts: Iterable[str], patterns: Iterable[str]) -> bool:
    """True when any path component matches an exclude glob, or is promoter's own temp."""
    pats = tuple(patterns)
    for part in parts:
        if part.startswith(TEMP_PREFIX):
            return True
        if any(fnmatch.fnmatchcase(part, pat) for pat in pats):
            return True
    return False


def split_host_port(value: str, zero_port: bool = False) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) → (host, port): the one parser of `http.listen` and
    `serve --listen`. Port 0 (any free port) only with `zero_port`; ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    try:
        number = int(port) if port.isdigit() else -1
    except ValueError:  # a digit int() does not read ("²"): no port either
        number = -1
    if not sep or not host or not (0 if zero_port else 1) <= number <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8730")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, number
