"""The store's figures (promoter/stats.py), computed from runs in memory: no filesystem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promoter.errors import UsageError
from promoter.metadata import ArtifactEntry, RejectedEntry, RunMetadata
from promoter.stats import LARGEST_RUNS, OTHER, TOP, compute_stats, parse_duration

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


def entry(name: str, size: int, agent: str = "writer", ctype: str = "text/plain",
          at: datetime = NOW - H) -> ArtifactEntry:
    return ArtifactEntry(filename=name, path=f"files/{name}", agent_id=agent, generated_at=at,
                         size_bytes=size, content_type=ctype)


def run(run_id: str, files: list[ArtifactEntry], *, created: datetime = NOW - 2 * H,
        expires_in: timedelta = 10 * D, keep: bool = False,
        workflow: str = "flow") -> RunMetadata:
    return RunMetadata(run_id=run_id, workflow_id=workflow, created_at=created,
                       updated_at=created, expires_at=NOW + expires_in, keep=keep,
                       artifacts=files)


def seeded() -> list[RunMetadata]:
    """Known totals: a kept run, one expiring in 23 h, one in 5 days, one in 20, one too old."""
    return [
        run("kept", [entry("a.png", 100, "viz", "image/png"),
                     entry("b.png", 200, "viz", "image/png")],
            expires_in=2 * D, keep=True, workflow="report"),
        run("soon", [entry("x.csv", 10, "etl", "text/csv", NOW - 3 * D),
                     entry("y.csv", 20, "etl", "text/csv", NOW - 3 * D),
                     entry("z.txt", 30)],
            expires_in=23 * H, workflow="etl"),
        run("week", [entry("big.bin", 1000, "etl", "application/octet-stream")],
            expires_in=5 * D, workflow="etl"),
        run("later", [entry("n.txt", 7)], expires_in=20 * D, workflow=""),
        run("old", [entry("old.txt", 5000)], created=NOW - 40 * D, expires_in=30 * D),
    ]


def test_totals_of_a_seeded_store() -> None:
    """Runs, files, bytes, kept, and bytes expiring in 24 h and 7 days add up as seeded."""
    stats = compute_stats(seeded(), NOW, 30 * D)
    assert stats.totals.model_dump() == {
        "runs": 4, "artifacts": 7, "bytes": 1367, "kept_runs": 1, "kept_bytes": 300,
        "expiring_24h_bytes": 60, "expiring_7d_bytes": 1060}


def test_breakdowns_are_biggest_first() -> None:
    """by_agent, by_type and by_workflow list [{key, artifacts, bytes}] by bytes, largest first."""
    stats = compute_stats(seeded(), NOW, 30 * D)
    assert [(b.key, b.artifacts, b.bytes) for b in stats.by_agent] == [
        ("etl", 3, 1030), ("viz", 2, 300), ("writer", 2, 37)]
    assert [(b.key, b.bytes) for b in stats.by_type] == [
        ("application/octet-stream", 1000), ("image/png", 300), ("text/plain", 37),
        ("text/csv", 30)]
    assert [(b.key, b.artifacts, b.bytes) for b in stats.by_workflow] == [
        ("etl", 4, 1060), ("report", 2, 300), ("", 1, 7)]


def test_the_window_counts_whole_runs_by_creation() -> None:
    """A longer window takes in the old run; a run created exactly at the cutoff counts."""
    assert compute_stats(seeded(), NOW, 60 * D).totals.bytes == 1367 + 5000
    edge = [run("edge", [entry("e.txt", 3)], created=NOW - 2 * H)]
    assert compute_stats(edge, NOW, 2 * H).totals.runs == 1
    assert compute_stats(edge, NOW, H).totals.runs == 0


def test_per_day_by_generated_day_with_its_type_split() -> None:
    """Each UTC day of generated_at: files, bytes, and bytes by content type."""
    stats = compute_stats(seeded(), NOW, 30 * D)
    days = {d.day: d for d in stats.per_day}
    assert list(days) == ["2026-03-07", "2026-03-10"]
    assert (days["2026-03-07"].artifacts, days["2026-03-07"].bytes) == (2, 30)
    assert days["2026-03-07"].by_type == {"text/csv": 30}
    assert days["2026-03-10"].by_type == {"application/octet-stream": 1000, "image/png": 300,
                                          "text/plain": 37}
    assert sum(d.bytes for d in stats.per_day) == stats.totals.bytes


def test_top_twenty_then_one_other() -> None:
    """25 agents give the 20 biggest by name and one 'other' that holds the rest's sums."""
    files = [entry(f"f{i}.txt", 100 + i, f"agent{i:02d}", f"type/t{i:02d}") for i in range(25)]
    stats = compute_stats([run("many", files)], NOW, 30 * D)
    assert len(stats.by_agent) == TOP + 1
    assert [b.key for b in stats.by_agent[:3]] == ["agent24", "agent23", "agent22"]
    rest = stats.by_agent[-1]
    assert (rest.key, rest.artifacts, rest.bytes) == (OTHER, 5, sum(100 + i for i in range(5)))
    assert sum(b.bytes for b in stats.by_agent) == stats.totals.bytes
    (day,) = stats.per_day
    assert day.by_type[OTHER] == rest.bytes  # the day's split folds the same types away
    assert len(day.by_type) == TOP + 1


def test_exactly_twenty_keys_have_no_other() -> None:
    """With 20 keys or fewer every one is named and nothing is folded."""
    files = [entry(f"f{i}.txt", 10, f"agent{i:02d}") for i in range(TOP)]
    stats = compute_stats([run("twenty", files)], NOW, 30 * D)
    assert len(stats.by_agent) == TOP and all(b.key != OTHER for b in stats.by_agent)


def test_largest_runs_and_ties() -> None:
    """The largest runs by bytes, at most LARGEST_RUNS, ties by run id."""
    runs = [run(f"r{i:02d}", [entry("f", i % 4)]) for i in range(14)]
    largest = compute_stats(runs, NOW, 30 * D).largest_runs
    assert len(largest) == LARGEST_RUNS
    assert [(r.run_id, r.bytes) for r in largest[:4]] == [
        ("r03", 3), ("r07", 3), ("r11", 3), ("r02", 2)]


def test_already_expired_unkept_run_counts_as_expiring() -> None:
    """A run past its expiry waits for the sweep: its bytes go within 24 h; a kept one never."""
    runs = [run("past", [entry("p", 50)], expires_in=-H),
            run("pinned", [entry("q", 70)], expires_in=-H, keep=True)]
    totals = compute_stats(runs, NOW, 30 * D).totals
    assert (totals.expiring_24h_bytes, totals.expiring_7d_bytes, totals.kept_bytes) == (50, 50, 70)


def test_empty_store() -> None:
    """No runs: zeros and empty lists, nothing refused."""
    stats = compute_stats([], NOW, 30 * D)
    assert stats.totals.runs == 0 and stats.by_agent == [] and stats.per_day == []
    assert stats.rejected_by_reason == {}


def test_rejected_counted_by_reason() -> None:
    """Files in the runs' `rejected` lists are counted by reason, most first."""
    meta = run("rej", [entry("ok.txt", 1)])
    meta.rejected = [RejectedEntry(filename=n, reason=r, rejected_at=NOW)
                     for n, r in [("l", "symlink"), ("f", "fifo"), ("m", "symlink")]]
    assert compute_stats([meta], NOW, 30 * D).rejected_by_reason == {"symlink": 2, "fifo": 1}


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400),
    (" 7d ", 7 * 86400), ("999999999w", 36_525 * 86400)])
def test_parse_duration(text: str, seconds: int) -> None:
    """Whole numbers with one unit; huge values are capped at a century, not an overflow."""
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0d", "d", "3", "1.5d", "-1d", "1d12h", "3y", "１d",
                                  "9999999999d"])
def test_parse_duration_refuses(text: str) -> None:
    """Anything else is a usage error, never a traceback."""
    with pytest.raises(UsageError):
        parse_duration(text)
