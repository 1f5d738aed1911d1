"""An entry's recorded source ctime (`source_changed_at`) is trusted only when it is the
file's own: one later than the file's (a hand edit, a clock stepped back since the read, a
JSON number pydantic takes as epoch seconds) once hid every rewrite until the clock passed
it (probe r7-ctime N2). Such a source is read once, its digest compared, then quiet."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from promoter.clock import format_time, from_timestamp_ns, micros
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.reconcile import Rejections, find_pending, reconcile
from promoter.rules import Verdict, verdict
from promoter.scan import Listing
from promoter.store import Outcome
from tests.daemon_helpers import base_config
from tests.store_helpers import make_store, write_session_file
from tests.test_source_ctime import ctime_text, promoted, run_once, sha, write_dated

FUTURE = 4_102_444_800  # 2100-01-01
MTIME = 1_767_225_600  # 2026-01-01


def set_recorded(meta_path: Path, filename: str, value: Any) -> None:
    """Hand-edit one entry's `source_changed_at` in metadata.json (as a person or a tool)."""
    doc = json.loads(meta_path.read_text())
    for item in doc["artifacts"]:
        if item["filename"] == filename:
            item["source_changed_at"] = value
    meta_path.write_text(json.dumps(doc, indent=2) + "\n")


@pytest.mark.parametrize("recorded", [format_time(from_timestamp_ns(FUTURE * 10**9)), FUTURE],
                         ids=["future-text", "json-number"])
def test_a_recorded_ctime_later_than_the_file_s_does_not_hide_a_rewrite(
        tmp_path: Path, recorded: Any) -> None:
    """A recorded ctime in 2100 (text or a JSON number), new bytes under the old mtime while
    down: the next start reads the file and promotes them; an untouched sibling whose entry
    says the same is read once and keeps its copy; the start after reads neither."""
    root = tmp_path / "root"
    config = base_config()
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    write_dated(out / "a.txt", b"AAAA", MTIME)
    write_dated(out / "b.txt", b"same", MTIME)
    run_once(root, config, ("a.txt", "b.txt"))
    meta_path = root / "artifacts" / "r1" / "metadata.json"
    for name in ("a.txt", "b.txt"):
        set_recorded(meta_path, name, recorded)
    write_dated(out / "a.txt", b"BBBB", MTIME)
    second = run_once(root, config)
    assert second.entry("a.txt")["sha256"] == sha(b"BBBB")
    assert (root / "artifacts" / "r1" / "files" / "a.txt").read_bytes() == b"BBBB"
    assert promoted(second.logs, "a.txt") == 1 and promoted(second.logs, "b.txt") == 0
    assert second.startup()["unchanged"] == 1  # b: read, the same bytes
    for name in ("a.txt", "b.txt"):  # the file's own ctime, as text, from now on
        assert second.entry(name)["source_changed_at"] == ctime_text(out / name)
    third = run_once(root, config)
    assert third.startup()["promoted"] == 0 and third.startup()["unchanged"] == 0


def test_the_in_process_scan_reads_a_file_whose_recorded_ctime_is_later(
        tmp_path: Path) -> None:
    """Without the start-up child (a rescan): the same rule in `scan_run`."""
    store = make_store(tmp_path)
    a = write_session_file(tmp_path, "r1", "a", b"old!", age_s=60)
    reconcile(store)
    meta_path = tmp_path / "artifacts" / "r1" / "metadata.json"
    set_recorded(meta_path, "a", format_time(from_timestamp_ns(FUTURE * 10**9)))
    st = os.stat(a)
    a.write_bytes(b"new!")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [f.filename for f in find_pending(store, Rejections())["r1"]] == ["a"]
    assert reconcile(store).outcomes[("r1", "a")].outcome is Outcome.PROMOTED
    assert store.get_run("r1").entry("a").sha256 == sha(b"new!")  # type: ignore[union-attr]
    assert find_pending(store, Rejections()) == {}


def test_verdict_and_listing_trust_only_the_file_s_own_ctime() -> None:
    """Same size and mtime: UNCHANGED only at the recorded ctime itself; a ctime before it
    (the record is later than the file's) is RECHECK as a ctime after it is; the start-up
    child's listing keeps such a run for the in-process scan."""
    mtime_us = 1_700_000_000_000_000
    seen_us = mtime_us + 5_000_000
    at = from_timestamp_ns(seen_us * 1000)
    meta = RunMetadata(run_id="r", created_at=at, updated_at=at, expires_at=at, artifacts=[
        ArtifactEntry(filename="f", path="files/f", generated_at=from_timestamp_ns(
            mtime_us * 1000), size_bytes=3, sha256="0" * 64, source_changed_at=at)])
    ns = mtime_us * 1000

    def judge(ctime_us: int) -> Verdict:
        return verdict(meta, None, "f", 3, ns, ctime_us * 1000 + 999)
    assert judge(micros(at)) is Verdict.UNCHANGED
    assert judge(micros(at) + 1) is Verdict.RECHECK
    assert judge(micros(at) - 1) is Verdict.RECHECK  # N2: recorded later than the file's
    assert judge(mtime_us) is Verdict.RECHECK
    copies = {"f": (3, 10)}
    listing = Listing({"r": dict(copies)}, [], {"r": 20}, {"r": {"f": 10}})
    assert listing.unchanged("r", copies, 99, {"f": 10})
    assert not listing.unchanged("r", copies, 99, {"f": 11})  # recorded later: scanned
    assert not listing.unchanged("r", copies, 99, {"f": 9})
    both = Listing({"r": {**copies, "g": (1, 10)}}, [], {"r": 20}, {"r": {"f": 10, "g": 0}})
    assert not both.unchanged("r", {**copies, "g": (1, 10)}, 99, {"f": 11})  # mixed run
