"""What the store holds, in figures: `GET /runtime/stats` and `promoter stats` (DESIGN §3, §7).

A pure function of a list of runs and a time: no filesystem, no clock. The
window (`since`) selects runs by `created_at`, so a run counts whole or not at
all (its bytes, its keep, its expiry); the per-day figures bucket each of its
artifacts by the UTC day of `generated_at` (the source file's time: the store
keeps no separate promotion time).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from promoter.errors import UsageError
from promoter.metadata import RunMetadata

__all__ = [
    "DEFAULT_SINCE",
    "LARGEST_RUNS",
    "OTHER",
    "TOP",
    "Bucket",
    "DayFigures",
    "RunSize",
    "StoreStats",
    "Totals",
    "compute_stats",
    "parse_duration",
]

TOP: Final = 20
OTHER: Final = "other"
LARGEST_RUNS: Final = 10
DEFAULT_SINCE: Final = "30d"
DAY: Final = timedelta(days=1)
WEEK: Final = timedelta(days=7)
MAX_SINCE: Final = timedelta(days=36_525)  # a century: "everything", without datetime overflow

_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w' → a timedelta; UsageError for anything else.

    Whole numbers and one unit only: a duration is typed by people, and `1.5d`
    or `1d12h` buy little over `36h`.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"bad duration {text!r}: a whole number and a unit, "
                         "s, m, h, d or w (e.g. 30d, 12h)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise UsageError(f"bad duration {text!r}: it must be longer than zero")
    return timedelta(seconds=min(seconds, int(MAX_SINCE.total_seconds())))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Totals(_Model):
    """Sums over the runs in the window."""

    runs: int = Field(ge=0)
    artifacts: int = Field(ge=0)
    bytes: int = Field(ge=0)
    kept_runs: int = Field(ge=0)
    kept_bytes: int = Field(ge=0)
    expiring_24h_bytes: int = Field(ge=0, description="Unkept runs whose expiry is within "
                                    "24 h (or already past, awaiting the sweep)")
    expiring_7d_bytes: int = Field(ge=0, description="Likewise within 7 days (includes 24 h)")


class Bucket(_Model):
    """One agent, content type or workflow; the last of a full list may be 'other' (the rest)."""

    key: str
    artifacts: int = Field(ge=0)
    bytes: int = Field(ge=0)


class DayFigures(_Model):
    """What was promoted on one UTC day (by the files' `generated_at`)."""

    day: str = Field(description="YYYY-MM-DD, UTC")
    artifacts: int = Field(ge=0)
    bytes: int = Field(ge=0)
    by_type: dict[str, int] = Field(
        default_factory=dict,
        description="Bytes by content type that day, keyed as in by_type (the top types, "
                    "then 'other'): the split of the page's stacked bar")


class RunSize(_Model):
    run_id: str
    bytes: int = Field(ge=0)


class StoreStats(_Model):
    """`GET /runtime/stats` and `promoter stats --json`."""

    since: str = Field(description="The window, as asked (runs created within it count)")
    totals: Totals
    by_agent: list[Bucket]
    by_type: list[Bucket]
    by_workflow: list[Bucket]
    per_day: list[DayFigures]
    largest_runs: list[RunSize]
    rejected_by_reason: dict[str, int] = Field(
        description="Files refused (metadata `rejected` lists), counted by reason")


@dataclass
class _Tally:
    artifacts: int = 0
    bytes: int = 0
    types: Counter[str] = field(default_factory=Counter)

    def add(self, size: int) -> None:
        self.artifacts += 1
        self.bytes += size


def _rank(tallies: dict[str, _Tally]) -> list[Bucket]:
    """Biggest first (bytes, then files, then key), top TOP, then one 'other' for the rest."""
    ordered = sorted(tallies.items(), key=lambda kv: (-kv[1].bytes, -kv[1].artifacts, kv[0]))
    out = [Bucket(key=k, artifacts=t.artifacts, bytes=t.bytes) for k, t in ordered[:TOP]]
    rest = ordered[TOP:]
    if rest:
        out.append(Bucket(key=OTHER, artifacts=sum(t.artifacts for _, t in rest),
                          bytes=sum(t.bytes for _, t in rest)))
    return out


def _rejected(runs: Iterable[RunMetadata]) -> dict[str, int]:
    """Refused files by reason; read defensively, as older metadata has no `rejected` list."""
    counts: Counter[str] = Counter()
    for meta in runs:
        for entry in getattr(meta, "rejected", None) or ():
            reason = getattr(entry, "reason", None)
            counts[str(reason) if reason else "unknown"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def compute_stats(runs: Sequence[RunMetadata], now: datetime, since: timedelta,
                  since_text: str = DEFAULT_SINCE) -> StoreStats:
    """The figures for the runs created within `since` before `now`."""
    cutoff = now - since
    chosen = [m for m in runs if m.created_at >= cutoff]
    agents: dict[str, _Tally] = {}
    types: dict[str, _Tally] = {}
    workflows: dict[str, _Tally] = {}
    days: dict[str, _Tally] = {}
    sizes: list[tuple[int, str]] = []
    artifacts = total = kept_runs = kept_bytes = exp_day = exp_week = 0
    for meta in chosen:
        run_bytes = 0
        flow = workflows.setdefault(meta.workflow_id, _Tally())
        for a in meta.artifacts:
            size = a.size_bytes
            run_bytes += size
            flow.add(size)
            agents.setdefault(a.agent_id, _Tally()).add(size)
            types.setdefault(a.content_type, _Tally()).add(size)
            day = days.setdefault(a.generated_at.strftime("%Y-%m-%d"), _Tally())
            day.add(size)
            day.types[a.content_type] += size
        artifacts += len(meta.artifacts)
        total += run_bytes
        sizes.append((run_bytes, meta.run_id))
        if meta.keep:
            kept_runs += 1
            kept_bytes += run_bytes
        else:
            left = meta.expires_at - now
            exp_day += run_bytes if left < DAY else 0
            exp_week += run_bytes if left < WEEK else 0
    by_type = _rank(types)
    named = {b.key for b in by_type[:TOP]}  # the 21st, when there is one, is the rest
    per_day = []
    for day_key in sorted(days):
        tally = days[day_key]
        split: Counter[str] = Counter()
        for ctype, size in tally.types.items():
            split[ctype if ctype in named else OTHER] += size
        per_day.append(DayFigures(day=day_key, artifacts=tally.artifacts, bytes=tally.bytes,
                                  by_type=dict(sorted(split.items(),
                                                      key=lambda kv: (-kv[1], kv[0])))))
    sizes.sort(key=lambda s: (-s[0], s[1]))
    return StoreStats(
        since=since_text,
        totals=Totals(runs=len(chosen), artifacts=artifacts, bytes=total, kept_runs=kept_runs,
                      kept_bytes=kept_bytes, expiring_24h_bytes=exp_day,
                      expiring_7d_bytes=exp_week),
        by_agent=_rank(agents), by_type=by_type, by_workflow=_rank(workflows),
        per_day=per_day,
        largest_runs=[RunSize(run_id=r, bytes=b) for b, r in sizes[:LARGEST_RUNS]],
        rejected_by_reason=_rejected(chosen),
    )
