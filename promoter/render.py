"""Human-readable output for the command line: ages, sizes, states, tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from promoter.metadata import RunMetadata

__all__ = ["age", "human_size", "run_state", "table"]

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


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines)
