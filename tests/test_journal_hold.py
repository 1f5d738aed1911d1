"""A journal append that fails (`.audit` made a file, a day file made a folder, any OSError)
lost its batch's events for good (probe F1). They are now held and journaled late, once, in
their order with their own times; a stop with lines still held leaves the life unclean so
the next start journals them (DESIGN §11: every change is an audit event)."""

from __future__ import annotations

import errno
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from promoter import journalhold
from promoter.audit import DAEMON, Auditor, LocalJournal, read_journal
from promoter.errors import StoreIOError
from promoter.journalhold import PartlyWritten
from promoter.promotion import Outcome
from tests.daemon_helpers import base_config, start_daemon, wait_until
from tests.store_helpers import FakeClock, make_store, write_session_file

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)


def auditor(folder: Path) -> tuple[Auditor, FakeClock]:
    clock = FakeClock(T0)
    return Auditor(LocalJournal(folder), "h1", DAEMON, clock), clock


def names(folder: Path) -> list[tuple[str, str]]:
    return [(e["filename"], e["timestamp"]) for e in read_journal(folder)]


def test_a_failed_batch_is_journaled_before_the_next_one_with_its_own_time(
        tmp_path: Path) -> None:
    """`.audit` a file: two batches fail (told), then the folder is back: the next batch
    writes both first, in order, each once, with their own times."""
    folder = tmp_path / ".audit"
    audit, clock = auditor(folder)
    folder.write_text("not a folder")
    for name in ("a", "b"):
        with pytest.raises(StoreIOError, match="not journaled yet"):
            audit.one("artifact.promoted", filename=name)
        clock.current += timedelta(seconds=1)
    assert audit.held.events() == 2
    folder.unlink()
    audit.one("artifact.promoted", filename="c")
    assert names(folder) == [("a", "2026-12-01T01:00:00.000000Z"),
                             ("b", "2026-12-01T01:00:01.000000Z"),
                             ("c", "2026-12-01T01:00:02.000000Z")]
    assert not audit.held and audit.settle()


def test_held_lines_are_retried_on_a_timer(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No later batch: the timer writes the held lines once the journal takes them."""
    monkeypatch.setattr(journalhold, "RETRY_S", 0.05)
    folder = tmp_path / ".audit"
    audit, _ = auditor(folder)
    audit.held.keep_retrying()
    folder.write_text("not a folder")
    with pytest.raises(StoreIOError):
        audit.one("artifact.promoted", filename="a")
    folder.unlink()
    wait_until(lambda: not audit.held, what="the held line written by the timer")
    assert [n for n, _ in names(folder)] == ["a"] and audit.settle()


class TornSink:
    """Like LocalJournal on a disk that fills mid-write: the first append takes its first
    line and part of the second, then fails; later ones start on a line of their own."""

    def __init__(self) -> None:
        self.data, self.torn = b"", False

    def append(self, day: str, data: bytes) -> None:
        if self.data and not self.data.endswith(b"\n"):
            self.data += b"\n"
        if not self.torn:
            self.torn = True
            sent = data.index(b"\n") + 10
            self.data += data[:sent]
            exc = PartlyWritten(28, "No space left on device", "x.jsonl")
            exc.sent = sent
            raise exc
        self.data += data

    def prune(self, before: str) -> list[str]:
        return []


def test_lines_a_failed_append_wrote_are_not_written_again() -> None:
    """A full disk mid-write: the whole first line is not held again, the torn second line
    is written again whole (its torn part stays a bad line): no event twice."""
    sink = TornSink()
    audit = Auditor(sink, "h1", DAEMON, FakeClock(T0))
    with pytest.raises(StoreIOError):
        audit.record([("artifact.promoted", {"filename": n}) for n in ("a", "b", "c")])
    assert audit.held.events() == 2
    audit.one("artifact.promoted", filename="d")
    lines = sink.data.split(b"\n")
    whole = [json.loads(x)["filename"] for x in lines if x.startswith(b"{") and x.endswith(b"}")]
    assert whole == ["a", "b", "c", "d"] and len(lines) == 6 and not audit.held


def test_past_the_bound_a_batch_is_dropped_and_the_stop_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held lines are bounded: past MAX_HELD_BYTES a batch is dropped (counted), and
    `settle` is False even once the journal works again (the life is left unclean)."""
    monkeypatch.setattr(journalhold, "MAX_HELD_BYTES", 300)
    folder = tmp_path / ".audit"
    audit, _ = auditor(folder)
    folder.write_text("not a folder")
    for name in ("a", "b", "c"):
        with pytest.raises(StoreIOError):
            audit.one("artifact.promoted", filename=name, pad="x" * 100)
    assert audit.held.dropped >= 1 and not audit.settle()
    folder.unlink()
    assert not audit.settle()
    assert [n for n, _ in names(folder)] == ["a", "b", "c"][:3 - audit.held.dropped]


def promoted(root: Path) -> list[str]:
    return sorted(e["filename"] for e in read_journal(root / "artifacts" / ".audit")
                  if e["event"] == "artifact.promoted")


def test_the_daemon_journals_a_failed_batch_once_the_journal_is_back(tmp_path: Path) -> None:
    """Live (probe F1): `.audit` made a file while files are promoted; once it is removed,
    the next batch journals them, each once."""
    root = tmp_path / "root"
    d = start_daemon(root, base_config())
    try:
        d.wait_ready()
        audit = root / "artifacts" / ".audit"
        shutil.rmtree(audit, ignore_errors=True)
        audit.write_text("x")
        out = d.sessions / "r1" / "output"
        out.mkdir(parents=True)
        for i in range(3):
            (out / f"f{i}.txt").write_text(f"f{i}")
        d.wait_log("audit.failed")
        for i in range(3):
            d.wait_entry("r1", f"f{i}.txt")
        audit.unlink()
        (out / "g.txt").write_text("g")
        wait_until(lambda: "g.txt" in promoted(root), what="g.txt journaled")
        assert promoted(root) == ["f0.txt", "f1.txt", "f2.txt", "g.txt"]
        assert d.events("audit.retried")
    finally:
        assert d.stop() == 0


def test_a_stop_with_lines_held_leaves_them_to_the_next_start(tmp_path: Path) -> None:
    """The day's file made a folder (the marker beside it is fine): the promotion cannot be
    journaled before the stop, so the life is left unclean and the next start journals it,
    recovered, once."""
    root = tmp_path / "root"
    day = root / "artifacts" / ".audit" / f"{datetime.now(UTC).date().isoformat()}.jsonl"
    d = start_daemon(root, base_config())
    try:
        d.wait_ready()
        day.mkdir(parents=True)
        out = d.sessions / "r1" / "output"
        out.mkdir(parents=True)
        (out / "a.txt").write_text("a")
        d.wait_entry("r1", "a.txt")
        d.wait_log("audit.failed")
    finally:
        assert d.stop() == 0
    marker: dict[str, Any] = json.loads(next(day.parent.glob(".daemon-*.json")).read_text())
    assert marker["clean"] is False
    day.rmdir()
    again = start_daemon(root, base_config())
    try:
        again.wait_ready()
        assert again.events("audit.recovered")
    finally:
        assert again.stop() == 0
    lines = [e for e in read_journal(day.parent) if e["event"] == "artifact.promoted"]
    assert [(e["filename"], e.get("recovered")) for e in lines] == [("a.txt", True)]


def test_a_run_whose_first_list_was_never_written_is_journaled_when_rebuilt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe F2: a full disk at a new run's first metadata write leaves copies under files/
    and no list; the retry rebuilds the run from them ("metadata.json missing"): each copy's
    promotion is journaled then (recovered), once, and a second rebuild adds nothing."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    write_session_file(tmp_path, "r1", "b.txt", b"bb")
    write_meta = store.disk.write_meta

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store.disk, "write_meta", full)
    assert not any(r.outcome is Outcome.PROMOTED for r in store.promote_files("r1", ["a.txt"]))
    monkeypatch.setattr(store.disk, "write_meta", write_meta)
    assert list((tmp_path / "artifacts" / "r1" / "files").iterdir())  # the copy, unlisted
    store.promote_files("r1", ["a.txt", "b.txt"])
    assert {a.filename for a in store.get_run("r1").artifacts} == {"a.txt", "b.txt"}
    lines = [(e["filename"], e.get("recovered")) for e in
             read_journal(tmp_path / "artifacts" / ".audit") if e["event"] == "artifact.promoted"]
    assert sorted(lines) == [("a.txt", True), ("b.txt", None)]
    (tmp_path / "artifacts" / "r1" / "metadata.json").unlink()  # by hand: every line exists
    store.repair("r1")
    again = [e for e in read_journal(tmp_path / "artifacts" / ".audit")
             if e["event"] == "artifact.promoted"]
    assert len(again) == 2
