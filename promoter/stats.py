"""What the store holds, in figures: `GET /runtime/stats` and `promoter stats` (DESIGN §3, §7).

A pure function of a list of runs and a time: no filesystem, no clock. The
window (`since`) selects runs by `created_at`, so a run counts whole or not at
all (its bytes, its keep, its expiry); the per-day figures bucket each of its
artifacts by the UTC day of `generated_at` (the source file's time: the store
keeps no separate promotion time).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from promoter import clock
from promoter.errors import UsageError
from promoter.metadata import RunMetadata
from promoter.render import human_size, table

__all__ = [
    "DEFAULT_SINCE",
    "LARGEST_RUNS",
    "OTHER",
    "TOP",
    "Bucket",
    "DayFigures",
    "RunSize",
    "RunTally",
    "StoreStats",
    "Totals",
    "compute_stats",
    "format_stats",
    "in_window",
    "parse_duration",
    "summarize",
    "tally_run",
    "with_expiry",
]

TOP: Final = 20
OTHER: Final = "other"
LARGEST_RUNS: Final = 10
DEFAULT_SINCE: Final = "30d"
DAY: Final = timedelta(days=1)
WEEK: Final = timedelta(days=7)
MAX_SINCE: Final = timedelta(days=36_525)  # a century: "everything", without datetime overflow

def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w' → a timedelta (clock.parse_duration's grammar), at
    most a century ("everything", without datetime overflow); UsageError for anything else."""
    try:
        value = clock.parse_duration(text)
    except ValueError as exc:
        if "longer than any date" in str(exc):
            return MAX_SINCE
        raise UsageError(f"bad duration {text!r}: a whole number and a unit, "
                         "s, m, h, d or w (e.g. 30d, 12h)") from None
    if value <= timedelta(0):
        raise UsageError(f"bad duration {text!r}: it must be longer than zero")
    return min(value, MAX_SINCE)


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

    totals: Totals
    by_agent: list[Bucket]
    by_type: list[Bucket]
    by_workflow: list[Bucket]
    per_day: list[DayFigures]
    largest_runs: list[RunSize]
    rejected_by_reason: dict[str, int] = Field(
        description="Files refused (metadata `rejected` lists), counted by reason")


@dataclass(frozen=True)
class RunTally:
    """One run's sums, worked out once per version of its metadata (the server memoizes it)."""

    artifacts: int
    bytes: int
    agents: dict[str, tuple[int, int]]  # key -> (files, bytes)
    types: dict[str, tuple[int, int]]
    days: dict[tuple[str, str], tuple[int, int]]  # (UTC day, content type) -> (files, bytes)
    rejected: dict[str, int]


def _bump(into: dict[Any, tuple[int, int]], key: Any, files: int, size: int) -> None:
    old = into.get(key)
    into[key] = (files, size) if old is None else (old[0] + files, old[1] + size)


def _merge(into: dict[Any, tuple[int, int]], part: dict[Any, tuple[int, int]]) -> None:
    """`_bump` for every key of `part`, inlined: this loop is the warm call's cost."""
    get = into.get
    for key, value in part.items():
        old = get(key)
        into[key] = value if old is None else (old[0] + value[0], old[1] + value[1])


def tally_run(meta: RunMetadata) -> RunTally:
    """A run's files summed by agent, content type and (day, type)."""
    agents: dict[str, tuple[int, int]] = {}
    types: dict[str, tuple[int, int]] = {}
    days: dict[tuple[str, str], tuple[int, int]] = {}
    total = 0
    for a in meta.artifacts:
        size = a.size_bytes
        total += size
        _bump(agents, a.agent_id, 1, size)
        _bump(types, a.content_type, 1, size)
        _bump(days, (a.generated_at.date().isoformat(), a.content_type), 1, size)
    return RunTally(artifacts=len(meta.artifacts), bytes=total, agents=agents, types=types,
                    days=days, rejected=_rejected(meta))


def _rank(tallies: dict[str, tuple[int, int]]) -> list[Bucket]:
    """Biggest first (bytes, then files, then key), top TOP, then one 'other' for the rest."""
    ordered = sorted(tallies.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
    out = [Bucket(key=k, artifacts=n, bytes=b) for k, (n, b) in ordered[:TOP]]
    rest = ordered[TOP:]
    if rest:
        out.append(Bucket(key=OTHER, artifacts=sum(n for _, (n, _b) in rest),
                          bytes=sum(b for _, (_n, b) in rest)))
    return out


def _rejected(meta: RunMetadata) -> dict[str, int]:
    """Refused files of the run (its `rejected` list, DESIGN §2), counted by reason."""
    return dict(Counter(entry.reason or "unknown" for entry in meta.rejected))


def compute_stats(runs: Sequence[RunMetadata], now: datetime, since: timedelta,
                  tally: Callable[[RunMetadata], RunTally] = tally_run) -> StoreStats:
    """The figures for the runs created within `since` before `now`.

    `tally` gives one run's sums; the server passes a memoized `tally_run`, so a
    warm call merges a few sums a run instead of walking every file again.
    """
    chosen = in_window(runs, now, since)
    return with_expiry(summarize(chosen, tally), chosen, now, tally)


def in_window(runs: Sequence[RunMetadata], now: datetime,
              since: timedelta) -> list[RunMetadata]:
    """The runs created within `since` before `now` (a run counts whole or not at all)."""
    cutoff = now - since
    return [m for m in runs if m.created_at >= cutoff]


def summarize(chosen: Sequence[RunMetadata],
              tally: Callable[[RunMetadata], RunTally] = tally_run) -> StoreStats:
    """Every figure that does not depend on the time: all but the expiring bytes (zero here).

    For the same runs, unchanged, the answer is the same: the server keeps it.
    """
    agents: dict[str, tuple[int, int]] = {}
    types: dict[str, tuple[int, int]] = {}
    workflows: dict[str, tuple[int, int]] = {}
    days: dict[tuple[str, str], tuple[int, int]] = {}
    rejected: Counter[str] = Counter()
    sizes: list[tuple[int, str]] = []
    artifacts = total = kept_runs = kept_bytes = 0
    for meta in chosen:
        t = tally(meta)
        artifacts += t.artifacts
        total += t.bytes
        _bump(workflows, meta.workflow_id, t.artifacts, t.bytes)
        _merge(agents, t.agents)
        _merge(types, t.types)
        _merge(days, t.days)
        if t.rejected:
            rejected.update(t.rejected)
        sizes.append((t.bytes, meta.run_id))
        if meta.keep:
            kept_runs += 1
            kept_bytes += t.bytes
    by_type = _rank(types)
    named = {b.key for b in by_type[:TOP]}  # the 21st, when there is one, is the rest
    largest = heapq.nsmallest(LARGEST_RUNS, sizes, key=lambda s: (-s[0], s[1]))
    return StoreStats(
        totals=Totals(runs=len(chosen), artifacts=artifacts, bytes=total, kept_runs=kept_runs,
                      kept_bytes=kept_bytes, expiring_24h_bytes=0, expiring_7d_bytes=0),
        by_agent=_rank(agents), by_type=by_type, by_workflow=_rank(workflows),
        per_day=_per_day(days, named),
        largest_runs=[RunSize(run_id=r, bytes=b) for b, r in largest],
        rejected_by_reason=dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def with_expiry(base: StoreStats, chosen: Sequence[RunMetadata], now: datetime,
                tally: Callable[[RunMetadata], RunTally] = tally_run) -> StoreStats:
    """`base` with the bytes of unkept runs expiring within 24 h and 7 days of `now`.

    Past expiries count too: those runs wait for the sweep (as the Expiring filter
    shows them).
    """
    day_mark, week_mark = now + DAY, now + WEEK
    exp_day = exp_week = 0
    for meta in chosen:
        if not meta.keep and meta.expires_at < week_mark:
            size = tally(meta).bytes
            exp_week += size
            if meta.expires_at < day_mark:
                exp_day += size
    totals = base.totals.model_copy(update={"expiring_24h_bytes": exp_day,
                                            "expiring_7d_bytes": exp_week})
    return base.model_copy(update={"totals": totals})


def _per_day(days: dict[tuple[str, str], tuple[int, int]], named: set[str]) -> list[DayFigures]:
    """Days in order, each with its bytes by type (types outside `named` folded into 'other')."""
    merged: dict[str, tuple[int, int, Counter[str]]] = {}
    for (day, ctype), (n, b) in days.items():
        files, size, split = merged.get(day) or (0, 0, Counter())
        split[ctype if ctype in named else OTHER] += b
        merged[day] = (files + n, size + b, split)
    return [DayFigures(day=day, artifacts=n, bytes=b,
                       by_type=dict(sorted(split.items(), key=lambda kv: (-kv[1], kv[0]))))
            for day, (n, b, split) in sorted(merged.items())]


def _rows(buckets: Sequence[Bucket], empty: str = "-") -> list[list[str]]:
    return [[b.key or empty, str(b.artifacts), human_size(b.bytes)] for b in buckets]


def format_stats(stats: StoreStats, since: str) -> str:
    """`promoter stats` on a terminal: a summary line, then one table a breakdown."""
    t = stats.totals
    lines = [
        f"runs created in the last {since}: {t.runs} run(s), {t.artifacts} file(s), "
        f"{human_size(t.bytes)}",
        f"kept: {t.kept_runs} run(s), {human_size(t.kept_bytes)}; expiring within 24 h: "
        f"{human_size(t.expiring_24h_bytes)}, within 7 days: {human_size(t.expiring_7d_bytes)}",
    ]
    if not t.runs:
        return "\n".join(lines)
    sections = [
        table(["AGENT", "FILES", "SIZE"], _rows(stats.by_agent)),
        table(["TYPE", "FILES", "SIZE"], _rows(stats.by_type)),
        table(["WORKFLOW", "FILES", "SIZE"], _rows(stats.by_workflow, "(none)")),
        table(["DAY (UTC)", "FILES", "SIZE"],
              [[d.day, str(d.artifacts), human_size(d.bytes)] for d in stats.per_day]),
        table(["LARGEST RUN", "SIZE"], [[r.run_id, human_size(r.bytes)]
                                        for r in stats.largest_runs]),
    ]
    if stats.rejected_by_reason:
        sections.append(table(["REFUSED (REASON)", "FILES"],
                              [[k, str(v)] for k, v in stats.rejected_by_reason.items()]))
    return "\n".join(lines) + "\n\n" + "\n\n".join(sections)
