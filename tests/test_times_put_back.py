"""New bytes under an old mtime (`cp -p`, `rsync -t`, `tar x`) are promoted: the file's ctime
says it changed, its bytes decide (DESIGN §2: a file rewritten with new content replaces its
copy; an unchanged file is not copied again). Live, and while the daemon was down."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from promoter.clock import micros
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.reconcile import Rejections, find_pending, reconcile
from promoter.rules import Verdict, times_set, verdict
from promoter.scan import Listing
from promoter.store import Outcome
from tests.daemon_helpers import base_config, start_daemon
from tests.store_helpers import make_store, write_session_file


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_back(path: Path, data: bytes) -> None:
    """Rewrite `path` with `data` (same size), then set its old times again, as `cp -p` does."""
    st = os.stat(path)
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def promoted(logs: list[dict[str, Any]], filename: str) -> int:
    return sum(1 for e in logs if e.get("event") == "artifact.promoted"
               and e.get("filename") == filename)


def test_live_rewrite_with_the_old_mtime_is_promoted(tmp_path: Path) -> None:
    """While the daemon runs: the new bytes are promoted; a chmod alone copies nothing."""
    d = start_daemon(tmp_path / "root")
    try:
        d.wait_ready()
        out = d.sessions / "r1" / "output"
        out.mkdir(parents=True)
        (out / "a.txt").write_bytes(b"A" * 100)
        (out / "b.txt").write_bytes(b"B" * 100)
        d.wait_entry("r1", "a.txt")
        d.wait_entry("r1", "b.txt")
        os.chmod(out / "b.txt", 0o600)
        put_back(out / "a.txt", b"C" * 100)
        d.wait_entry("r1", "a.txt", check=lambda e: e["sha256"] == sha(b"C" * 100))
        (out / "later.txt").write_bytes(b"after the chmod")  # b's turn came before this one
        d.wait_entry("r1", "later.txt")
        assert promoted(d.logs(), "b.txt") == 1
        assert promoted(d.logs(), "a.txt") == 2
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("checksum", ["sha256", "none"])
def test_rewrite_while_down_is_promoted_once(tmp_path: Path, checksum: str) -> None:
    """Rewritten with its old mtime while the daemon was down: promoted at the next start,
    not again at the one after; a file only chmodded is read, not copied (with checksum
    "none" there is nothing to compare with: copied again, once)."""
    root = tmp_path / "root"
    config = base_config(promote={"checksum": checksum})
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_bytes(name.encode() * 10)
    (root / "sessions" / "r2" / "output").mkdir(parents=True)
    (root / "sessions" / "r2" / "output" / "x.txt").write_bytes(b"untouched")
    lives = []
    for step in range(3):
        d = start_daemon(root, config)
        try:
            d.wait_ready()
            for name in ("a.txt", "b.txt", "c.txt") if step == 0 else ():
                d.wait_entry("r1", name)
        finally:
            assert d.stop() == 0
        lives.append(d.logs())
        if step == 0:
            put_back(out / "a.txt", b"A" * 50)
            os.chmod(out / "b.txt", 0o600)
    assert promoted(lives[1], "a.txt") == 1
    assert promoted(lives[1], "b.txt") == (1 if checksum == "none" else 0)
    assert promoted(lives[1], "c.txt") == promoted(lives[1], "x.txt") == 0
    assert sum(promoted(lives[2], n) for n in ("a.txt", "b.txt", "c.txt", "x.txt")) == 0
    summaries = [next(e for e in life if e.get("event") == "reconcile.finished")
                 for life in lives[1:]]
    assert [s["unchanged"] for s in summaries] == [1 if checksum == "sha256" else 0, 0]
    if checksum == "sha256":
        assert d.entry("r1", "a.txt") is not None
        assert d.entry("r1", "a.txt")["sha256"] == sha(b"A" * 50)  # type: ignore[index]


def test_the_in_process_scan_reads_a_put_back_file_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the start-up child: the new bytes are found and promoted; a file only chmodded
    is read once: its run is written, so no later pass (or start) reads it again."""
    store = make_store(tmp_path)
    a = write_session_file(tmp_path, "r1", "a", b"old!", age_s=60)
    b = write_session_file(tmp_path, "r1", "b", b"same", age_s=60)
    reconcile(store)
    reads: list[int] = []
    import promoter.promotion as promotion

    original = promotion.same_bytes
    monkeypatch.setattr(promotion, "same_bytes",
                        lambda *args: reads.append(1) or original(*args))
    put_back(a, b"new!")
    os.chmod(b, 0o600)
    assert sorted(f.filename for f in find_pending(store, Rejections())["r1"]) == ["a", "b"]
    report = reconcile(store)
    assert report.outcomes[("r1", "a")].outcome is Outcome.PROMOTED
    assert store.get_run("r1").entry("a").sha256 == sha(b"new!")  # type: ignore[union-attr]
    assert find_pending(store, Rejections()) == {}
    os.chmod(b, 0o640)  # a change since the run's last write again: read again, once
    assert reconcile(store).summary()["unchanged"] == 1
    assert reconcile(store).summary()["unchanged"] == 0
    assert len(reads) == 3  # a, b after its first chmod, b after its second: once each


def entry(size: int, mtime_us: int) -> ArtifactEntry:
    from promoter.clock import from_timestamp_ns
    return ArtifactEntry(filename="f", path="files/f", generated_at=from_timestamp_ns(
        mtime_us * 1000), size_bytes=size, sha256="0" * 64)


def test_verdict_reads_a_file_changed_since_its_times() -> None:
    """Same size and mtime: UNCHANGED when the ctime is before the run's last write (µs),
    RECHECK when later; the event path also reads a file whose mtime was set (`times_set`)."""
    from promoter.clock import from_timestamp_ns
    mtime_us = 1_700_000_000_000_000
    written = from_timestamp_ns((mtime_us + 5_000_000) * 1000)
    meta = RunMetadata(run_id="r", created_at=written, updated_at=written, expires_at=written,
                       artifacts=[entry(3, mtime_us)])
    ns = mtime_us * 1000

    def judge(ctime_ns: int) -> Verdict:
        return verdict(meta, None, "f", 3, ns, ctime_ns)
    assert judge(ns) is Verdict.UNCHANGED  # written plainly
    assert judge(ns + 1000) is Verdict.UNCHANGED  # times set, but before the run's last write
    assert judge(micros(written) * 1000 + 999) is Verdict.UNCHANGED  # the same µs
    assert judge(micros(written) * 1000 + 1000) is Verdict.RECHECK
    assert verdict(meta, None, "f", 4, ns, ns) is Verdict.PROMOTE
    assert not times_set(ns, ns + 999) and times_set(ns, ns + 1000)


def test_the_listing_holds_a_run_changed_since_its_last_write() -> None:
    """The child's listing skips a run only when no file of it changed after its last write."""
    listing = Listing({"r": {"f": (3, 10)}}, [], {"r": 500})
    assert listing.unchanged("r", {"f": (3, 10)}, 500)
    assert not listing.unchanged("r", {"f": (3, 10)}, 499)
    assert not Listing({"r": {"f": (3, 10)}}, []).unchanged("r", {"f": (3, 10)}, 500)
    assert not listing.unchanged("r", {"f": (3, 11)}, 500)


def test_without_digests_an_event_on_a_renamed_file_copies_nothing(tmp_path: Path) -> None:
    """checksum = "none": a file whose mtime was set (ctime later), offered again by an event,
    is trusted by size and mtime (no digest to compare with); only the catch-up's RECHECK
    copies again."""
    store = make_store(tmp_path, promote={"checksum": "none"})
    write_session_file(tmp_path, "r1", "a", b"data", age_s=60)  # its mtime set: ctime later
    assert store.promote_files("r1", ["a"])[0].outcome is Outcome.PROMOTED
    assert store.promote_files("r1", ["a"])[0].outcome is Outcome.UNCHANGED
