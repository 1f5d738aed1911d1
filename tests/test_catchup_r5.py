"""The warm start-up, fifth round (issue 15): nothing written during the start-up repair is
missed, and the cheaper steps of the parse and the catch-up decide as before (times in UTC,
the first entry of a repeated name, attribution names made lazily)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promoter import metadata
from promoter.context import AttributionReader
from promoter.metadata import ArtifactEntry, RunMetadata, parse_metadata
from promoter.safeio import folder
from promoter.walk import known_copies
from tests.daemon_helpers import base_config, start_daemon, write
from tests.fault_helpers import hook_env


def test_files_written_while_the_repair_runs_are_promoted_once(tmp_path: Path) -> None:
    """Files written before the start, while the start-up repair is held, and after READY,
    in old and new runs and folders, are each promoted once: the catch-up, after the
    watches are set, finds what no event told of."""
    root = tmp_path / "storage"
    gate = tmp_path / "repair-may-go"
    write(root / "sessions" / "old-1" / "output" / "before.txt", "b")
    d = start_daemon(root, base_config(), env=hook_env(repair_wait=str(gate)))
    try:
        d.wait_log("daemon.starting", timeout=20)
        names = {("old-1", "during.txt"), ("new-1", "a.txt"), ("new-1", "sub/b.txt")}
        for run_id, name in names:
            write(root / "sessions" / run_id / "output" / name, name)
        assert not d.events("reconcile.started")  # the repair is still held
        gate.touch()
        d.wait_ready(timeout=20)
        write(root / "sessions" / "new-2" / "output" / "after.txt", "a")
        names |= {("old-1", "before.txt"), ("new-2", "after.txt")}
        for run_id, name in names:
            d.wait_entry(run_id, name, timeout=15)
        assert d.stop() == 0  # the log is whole once the daemon has exited
        promoted = [(e["run_id"], e["filename"]) for e in d.events("artifact.promoted")]
        assert sorted(promoted) == sorted(names)
    finally:
        d.close()


@pytest.mark.parametrize("when", [
    datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 2, 28, 23, 59, 59, 1, tzinfo=UTC), datetime(2024, 2, 29, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
])
def test_a_time_at_offset_zero_is_the_same_time_in_utc(when: datetime) -> None:
    """`_in_utc` gives what `replace(tzinfo=UTC)` gave: the same fields, datetime.UTC, fold 0,
    for a time read at "Z" and at "+00:00"."""
    for text in (when.isoformat().replace("+00:00", "Z"), when.isoformat()):
        doc = {"run_id": "r", "created_at": text, "updated_at": text, "expires_at": text,
               "artifacts": [{"filename": "a", "path": "files/a", "generated_at": text,
                              "size_bytes": 1}]}
        got = parse_metadata(json.dumps(doc).encode()).artifacts[0].generated_at
        assert got == when and got.tzinfo is UTC and got.fold == 0
        assert (got.year, got.month, got.day, got.hour, got.minute, got.second,
                got.microsecond) == (when.year, when.month, when.day, when.hour, when.minute,
                                     when.second, when.microsecond)
    assert metadata._in_utc(when) == when.replace(tzinfo=UTC)


def test_known_copies_keep_the_first_entry_of_a_repeated_name() -> None:
    """As `rules.by_filename`: the first of two entries of one name is the one compared."""
    t0 = datetime(2026, 1, 9, tzinfo=UTC)

    def entry(name: str, size: int, later_us: int) -> ArtifactEntry:
        return ArtifactEntry(filename=name, path=f"files/{name}", size_bytes=size,
                             generated_at=t0 + timedelta(microseconds=later_us))

    meta = RunMetadata(run_id="r", created_at=t0, updated_at=t0, expires_at=t0,
                       artifacts=[entry("a", 1, 5), entry("b", 2, 0), entry("a", 9, 7)])
    base_us = (t0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert known_copies(meta) == {"a": (1, base_us + 5), "b": (2, base_us)}
    assert known_copies(None) == {}


def test_attribution_names_are_made_only_when_the_run_has_lines(tmp_path: Path) -> None:
    """A run without attribution.jsonl never asks for its names (made at most once a call);
    with one, a line naming an entry is kept as before."""
    sessions = tmp_path / "sessions"
    (sessions / "r1" / "output").mkdir(parents=True)
    (sessions / "r2" / "output").mkdir(parents=True)
    (sessions / "r2" / "attribution.jsonl").write_text(
        json.dumps({"filename": "gone.txt", "agent_id": "ag"}) + "\n")
    asked: list[str] = []

    def known(run_id: str) -> set[str]:
        asked.append(run_id)
        return {"gone.txt"}

    reader = AttributionReader()
    with folder(sessions) as fd:
        assert reader.agents(fd, "r1", lambda: known("r1")) == {}
        assert reader.agents(fd, "r2", lambda: known("r2")) == {"gone.txt": "ag"}
    assert asked == ["r2"]
    assert reader._runs["r2"].kept == {"gone.txt": "ag"}  # kept for good: an entry's line

