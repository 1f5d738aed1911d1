"""Human-readable output for the command line: ages, sizes, states, tables.

Every value the command line prints for a person goes through `printable` (the tables do it
for each cell): names come from agents, SUDO_USER from any user, and a raw newline or ESC
would forge a row or drive the operator's terminal. `--json` output needs none of it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no pydantic for the log renderer, which imports `printable`
    from promoter.metadata import RunMetadata

__all__ = ["age", "human_size", "printable", "run_state", "table"]

DAY = timedelta(days=1)


def human_size(n: int) -> str:
    """1536 → '1.5 KiB'; 104857600 → '100 MiB' (no '.0')."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.1f}".removesuffix(".0") + f" {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def age(then: datetime, now: datetime) -> str:
    """'2 min ago', '3 h ago', '5 d ago'."""
    seconds = max((now - then).total_seconds(), 0)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def run_state(meta: RunMetadata, now: datetime) -> str:
    """One word, as the artifact rail shows it: kept, expired, expiring, live, recent or done."""
    if meta.keep:
        return "kept"
    if now >= meta.expires_at:
        return "expired"
    if meta.expires_at - now < DAY:
        return "expiring"
    if meta.status == "active":
        return "live"
    if now - meta.created_at < DAY:
        return "recent"
    return "done"


def matches_filter(meta: RunMetadata, name: str, now: datetime) -> bool:
    """The list filters of DESIGN §3 and §7 (`current` needs a run id: see the API)."""
    if name == "current":  # without a run id: every active run (DESIGN §7)
        return meta.status == "active"
    if name == "recent":
        return now - meta.created_at < DAY
    if name == "expiring":
        return not meta.keep and meta.expires_at - now < DAY
    return True


# Candidates: everything but printable ASCII other than the backslash (the common case, a
# plain ASCII name, is one failed search). Of those, a character is escaped when it is a
# control (C0, DEL, C1), a format character (bidirectional overrides, zero-width ones, tag
# characters: they reorder or hide text), a surrogate (a non-UTF-8 byte, as the OS layer
# decodes it), or a line or paragraph separator.
_CANDIDATE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char  # é, 漢, an emoji: shown as they are
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object) -> str:
    """`value` as text a terminal shows and never acts on, on one line: control and format
    characters, separators and surrogates as Python escapes (`\\n`, `\\x1b`, `\\u2028`,
    `\\udcff`), a backslash as two, so that what is shown maps back to one name."""
    return _CANDIDATE.sub(_escape, str(value))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; every cell `printable`, so a row is
    one line whatever its values hold."""
    cells = [[printable(c) for c in row] for row in (header, *rows)]
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
             for row in cells]
    return "\n".join(lines)
