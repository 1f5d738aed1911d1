"""The faster warm catch-up (issue 15) decides exactly as before: pending files, repairs,
refused metadata and times."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from promoter import rules
from promoter.clock import MAX_US, MIN_US, file_micros, file_time, from_timestamp_ns, micros
from promoter.errors import StoreIOError
from promoter.metadata import ArtifactEntry, RunMetadata, Tombstone
from promoter.reconcile import Rejections, find_pending, reconcile, scan_run
from promoter.safeio import folder
from promoter.startup import prepare
from promoter.store import Store
from tests.store_helpers import make_store, write_session_file

NOW = "2026-01-09T10:30:00Z"


def _old_rule(store: Store) -> dict[str, list[str]]:
    """What find_pending said before issue 15's shortcut: every scanned file to
    rules.needs_promotion."""
    out: dict[str, list[str]] = {}
    with folder(store.sessions_path) as sessions:
        for run_id in sorted(os.listdir(store.sessions_path)):
            meta, tomb = store.read_run(run_id), store.read_tombstone(run_id)
            names = [f.filename for f in scan_run(sessions, run_id, store.config.watch.exclude,
                                                  Rejections(), store.config.watch.max_depth)
                     if rules.needs_promotion(meta, tomb, f.filename, f.size, f.mtime_ns,
                                              f.ctime_ns or f.mtime_ns)]
            if names:
                out[run_id] = sorted(names)
    return out


def _utime_ns(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def test_pending_files_are_the_same_as_verdict_says_on_every_kind_of_case(
        tmp_path: Path) -> None:
    """Unchanged, resized, retimed by 1 µs or by less, new, removed, deleted, excluded,
    temp, link and too-deep files: find_pending offers exactly what rules.verdict offers."""
    store = make_store(tmp_path, watch={"max_depth": 2})
    for name in ("same", "grown", "us", "sub_us", "gone_old", "gone_new", "d/deep.txt"):
        write_session_file(tmp_path, "r1", name, b"abc", age_s=60)
    for name in ("old1", "old2"):
        write_session_file(tmp_path, "r2", name, b"x", age_s=60)
    reconcile(store)
    store.delete_artifact("r1", "gone_old")
    store.delete_artifact("r1", "gone_new")
    store.delete_run("r2")
    out = tmp_path / "sessions/r1/output"
    (out / "grown").write_bytes(b"abcd")
    base = os.lstat(out / "us").st_mtime_ns
    _utime_ns(out / "us", base + 1000)  # one microsecond later: another version
    _utime_ns(out / "sub_us", os.lstat(out / "sub_us").st_mtime_ns // 1000 * 1000 + 999)
    (out / "gone_new").write_bytes(b"rewritten after its removal")
    write_session_file(tmp_path, "r1", "new", b"n")
    write_session_file(tmp_path, "r1", "x.tmp", b"excluded")
    write_session_file(tmp_path, "r1", ".promoter-temp", b"ours")
    os.symlink("/etc/passwd", out / "link")
    write_session_file(tmp_path, "r1", "a/b/c/too_deep.txt", b"deep")
    write_session_file(tmp_path, "r2", "after", b"written after the deletion", age_s=0)
    pending = {run: sorted(f.filename for f in files)
               for run, files in find_pending(store, Rejections()).items()}
    assert pending == _old_rule(store)
    # sub_us: its time was set after the run's last write, to be read (rules.Verdict.RECHECK)
    assert pending == {"r1": ["gone_new", "grown", "link", "new", "sub_us", "us"],
                       "r2": ["after"]}


def test_a_run_promoted_after_its_deletion_keeps_its_deleted_files_out(tmp_path: Path) -> None:
    """With a tombstone and a metadata.json again, old files stay deleted and the new one
    is not offered twice."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r", "old", b"o", age_s=60)
    reconcile(store)
    store.delete_run("r")
    write_session_file(tmp_path, "r", "new", b"n", age_s=0)
    time.sleep(0.01)
    reconcile(store)
    assert store.read_tombstone("r") is not None
    assert [a.filename for a in store.get_run("r").artifacts] == ["new"]
    assert find_pending(store, Rejections()) == {} == _old_rule(store)


def _copy(tmp_path: Path, run: str, name: str) -> Path:
    return tmp_path / "artifacts" / run / "files" / name


def test_repair_still_lists_unlisted_and_changed_copies_and_removes_temps(
        tmp_path: Path) -> None:
    """An unlisted copy, a copy of another size, one a microsecond newer, a missing copy and
    temps in files/ (two runs, two threads): relisted, rehashed, dropped, removed."""
    store = make_store(tmp_path, promote={"workers": 2, "checksum": "sha256"})
    for name in ("a", "b", "c", "d", "sub/e"):
        write_session_file(tmp_path, "r1", name, b"abc", age_s=60)
    write_session_file(tmp_path, "r2", "z", b"z", age_s=60)
    reconcile(store)
    untouched = (tmp_path / "artifacts/r2/metadata.json").read_bytes()
    _copy(tmp_path, "r1", "unlisted").write_bytes(b"planted")
    _copy(tmp_path, "r1", ".promoter-x").write_bytes(b"temp")
    _copy(tmp_path, "r1", "sub/.promoter-y").write_bytes(b"temp")
    _copy(tmp_path, "r1", "b").write_bytes(b"bigger")
    c_ns = os.lstat(_copy(tmp_path, "r1", "c")).st_mtime_ns
    _utime_ns(_copy(tmp_path, "r1", "c"), c_ns + 1000)
    _copy(tmp_path, "r1", "d").unlink()
    fresh = Store(store.config)
    prepare(fresh, create=False)
    meta = fresh.get_run("r1")
    by_name = {a.filename: a for a in meta.artifacts}
    assert sorted(by_name) == ["a", "b", "c", "sub/e", "unlisted"]
    assert by_name["b"].size_bytes == 6
    assert by_name["b"].sha256 == hashlib.sha256(b"bigger").hexdigest()
    assert micros(by_name["c"].generated_at) == (c_ns + 1000) // 1000
    assert not _copy(tmp_path, "r1", ".promoter-x").exists()
    assert not _copy(tmp_path, "r1", "sub/.promoter-y").exists()
    assert (tmp_path / "artifacts/r2/metadata.json").read_bytes() == untouched


def test_a_failing_repair_spares_the_other_runs_and_a_store_failure_ends_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the repair threads as before: one run's surprise is logged and skipped, a failure
    of the store itself is raised."""
    store = make_store(tmp_path, promote={"workers": 2})
    for run in ("r1", "r2", "r3"):
        write_session_file(tmp_path, run, "f", b"x", age_s=60)
    reconcile(store)
    _copy(tmp_path, "r3", "unlisted").write_bytes(b"planted")
    original = Store.repair

    def repair(self: Store, run_id: str) -> bool:
        if run_id == "r1":
            raise ValueError("surprise")
        return original(self, run_id)

    monkeypatch.setattr(Store, "repair", repair)
    prepare(Store(store.config), create=False)
    assert "unlisted" in [a.filename for a in Store(store.config).get_run("r3").artifacts]

    def broken(self: Store, run_id: str) -> bool:
        raise StoreIOError("store gone")

    monkeypatch.setattr(Store, "repair", broken)
    with pytest.raises(StoreIOError):
        prepare(Store(store.config), create=False)


def _doc(**entry: object) -> dict[str, object]:
    item = {"filename": "a", "path": "files/a", "generated_at": NOW, "size_bytes": 1} | entry
    return {"run_id": "r", "created_at": NOW, "updated_at": NOW, "expires_at": NOW,
            "artifacts": [item]}


@pytest.mark.parametrize("doc", [
    _doc(extra=1),
    {**_doc(), "removed": [{"filename": "a", "removed_at": NOW, "why": "x"}]},
    {**_doc(), "rejected": [{"filename": "a", "reason": "r", "rejected_at": NOW, "n": 1}]},
    {**_doc(), "other": True},
])
def test_an_unknown_key_anywhere_in_metadata_is_refused_with_one_clear_error(
        doc: dict[str, object]) -> None:
    """Checked once a document now, not by a validator an entry: still refused, naming it."""
    with pytest.raises(ValidationError) as failed:
        RunMetadata.model_validate_json(json.dumps(doc))
    assert failed.value.error_count() == 1
    assert "unknown key" in str(failed.value)


def test_a_tombstone_with_an_unknown_key_or_a_naive_time_is_refused() -> None:
    """Tombstones are read from disk too."""
    good = {"run_id": "r", "deleted_at": NOW, "reason": "rm"}
    assert Tombstone.model_validate_json(json.dumps(good)).deleted_at.tzinfo is UTC
    for bad in ({**good, "x": 1}, {**good, "deleted_at": "2026-01-09T10:30:00"}):
        with pytest.raises(ValidationError):
            Tombstone.model_validate_json(json.dumps(bad))


@pytest.mark.parametrize("field", ["generated_at", "created_at"])
def test_a_time_without_a_zone_is_refused(field: str) -> None:
    """A naive time in metadata.json is not RFC 3339 (checked by pydantic-core now)."""
    doc = _doc()
    if field == "generated_at":
        doc = _doc(generated_at="2026-01-09T10:30:00")
    else:
        doc[field] = "2026-01-09T10:30:00"
    with pytest.raises(ValidationError) as failed:
        RunMetadata.model_validate_json(json.dumps(doc))
    assert "timezone" in str(failed.value)


def test_every_time_read_is_in_utc_whatever_its_offset() -> None:
    """An offset is converted to UTC and a `Z` carries datetime.UTC, as the per-field
    validator gave: the day an entry counts for and its comparisons stay the same."""
    doc = _doc(generated_at="2026-01-09T23:30:00-02:00")
    doc["removed"] = [{"filename": "b", "removed_at": "2026-01-10T03:00:00+05:00"}]
    doc["rejected"] = [{"filename": "c", "reason": "r", "rejected_at": NOW}]
    meta = RunMetadata.model_validate_json(json.dumps(doc))
    times = [meta.created_at, meta.updated_at, meta.expires_at, meta.artifacts[0].generated_at,
             meta.removed[0].removed_at, meta.rejected[0].rejected_at]
    assert all(t.tzinfo is UTC for t in times)
    assert meta.artifacts[0].generated_at == datetime(2026, 1, 10, 1, 30, tzinfo=UTC)
    assert meta.removed[0].removed_at == datetime(2026, 1, 9, 22, 0, tzinfo=UTC)
    assert json.loads(meta.to_json())["artifacts"][0]["generated_at"] == "2026-01-10T01:30:00Z"


_NS = st.one_of(st.integers(min_value=-(10**22), max_value=10**22),
                st.integers(min_value=-(10**12), max_value=10**12),
                st.sampled_from([MIN_US * 1000, MIN_US * 1000 - 1, MAX_US * 1000 + 999,
                                 MAX_US * 1000 + 1000]))


@settings(max_examples=400, deadline=None)
@given(_NS, _NS, st.integers(min_value=0, max_value=3))
def test_integer_times_decide_as_datetimes_did(ns: int, stored_ns: int, size: int) -> None:
    """file_micros is file_time in µs; the integer same_copy and verdict say what the
    datetime comparisons said, out-of-range times included."""
    t = file_time(ns)
    assert file_micros(ns) == (None if t is None else micros(t))
    entry = ArtifactEntry(filename="a", path="files/a", size_bytes=1,
                          generated_at=from_timestamp_ns(stored_ns))
    assert rules.same_copy(entry, size, ns) == (
        size == 1 and entry.generated_at == from_timestamp_ns(ns))
    meta = RunMetadata(run_id="r", created_at=entry.generated_at,
                       updated_at=entry.generated_at, expires_at=entry.generated_at,
                       artifacts=[entry])
    expected = (rules.Verdict.BAD_TIME if t is None
                else rules.Verdict.UNCHANGED if size == 1 and entry.generated_at == t
                else rules.Verdict.PROMOTE)
    assert rules.verdict(meta, None, "a", size, ns, ns) is expected


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
def test_a_time_that_leaves_the_calendar_in_utc_is_refused_not_raised(when: str) -> None:
    """An offset that pushes a time past year 9999 or before year 1 raised OverflowError
    out of the parser (not a ValidationError: the run's repair and reads failed); now the
    file is refused like any planted one, and so set aside and rebuilt."""
    for doc in ({**_doc(), "created_at": when}, _doc(generated_at=when)):
        with pytest.raises(ValidationError, match="out of range"):
            RunMetadata.model_validate_json(json.dumps(doc))
    with pytest.raises(ValidationError, match="out of range"):
        Tombstone.model_validate_json(json.dumps({"run_id": "r", "deleted_at": when,
                                                  "reason": "rm"}))


def test_a_planted_metadata_with_an_overflowing_time_is_rebuilt_at_start(
        tmp_path: Path) -> None:
    """The start-up repair sets such a file aside and relists the copies."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r", "a", b"abc", age_s=60)
    reconcile(store)
    path = tmp_path / "artifacts/r/metadata.json"
    doc = json.loads(path.read_text())
    doc["created_at"] = "9999-12-31T23:59:59-23:59"
    path.write_text(json.dumps(doc))
    fresh = Store(store.config)
    prepare(fresh, create=False)
    assert [a.filename for a in fresh.get_run("r").artifacts] == ["a"]
    assert any(p.name.startswith("metadata.json.corrupt-") for p in path.parent.iterdir())
