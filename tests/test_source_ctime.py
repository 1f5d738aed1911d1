"""Each entry records its source's ctime as its copy read it (`source_changed_at`): a file
changed since is judged again by its bytes, whatever else wrote the run meanwhile (keep, rm,
a sibling's promotion, an earlier batch of the same catch-up: probe r7-fidelity F1-F3), and
a file whose ctime moved on the same bytes (chmod, rename, hard link) is read once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from promoter.clock import format_time, from_timestamp_ns
from tests.daemon_helpers import Daemon, base_config, start_daemon, wait_until

FUTURE = 4_102_444_800  # 2100-01-01: agents set such mtimes (DESIGN §1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_dated(path: Path, data: bytes, mtime_s: int) -> None:
    """Write `data` and set `mtime_s` on the descriptor before closing (as `cp -p` does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.utime(fd, (mtime_s, mtime_s))
    finally:
        os.close(fd)


def promoted(logs: list[dict[str, Any]], filename: str) -> int:
    return sum(1 for e in logs if e.get("event") == "artifact.promoted"
               and e.get("filename") == filename)


def ctime_text(path: Path) -> str:
    return format_time(from_timestamp_ns(os.stat(path).st_ctime_ns))


class Life(NamedTuple):
    """A daemon that ran, and its log lines (read before the next one on the same root
    writes the same stderr file)."""

    daemon: Daemon
    logs: list[dict[str, Any]]

    def entry(self, filename: str) -> dict[str, Any]:
        found = self.daemon.entry("r1", filename)
        assert found is not None, filename
        return found

    def startup(self) -> dict[str, Any]:
        return next(e for e in self.logs if e.get("event") == "reconcile.finished"
                    and e.get("trigger") == "startup")


def run_once(root: Path, config: dict[str, Any], names: tuple[str, ...] = ()) -> Life:
    """A daemon started, its catch-up finished (`names` in the store), stopped."""
    d = start_daemon(root, config)
    try:
        d.wait_ready()
        d.wait_log("reconcile.finished", trigger="startup")
        for name in names:
            d.wait_entry("r1", name)
    finally:
        assert d.stop() == 0
    return Life(d, d.logs())


@pytest.mark.parametrize("writer", ["keep", "rm"])
def test_a_rewrite_while_down_survives_another_write_of_its_run(tmp_path: Path,
                                                                writer: str) -> None:
    """F1: new bytes under the old mtime while the daemon is down, then `promoter keep` (or
    the rm of another file) writes the run: the next start promotes the new bytes."""
    root = tmp_path / "root"
    config = base_config()
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    write_dated(out / "a.txt", b"AAAA", 1_767_225_600)  # 2026-01-01
    (out / "other.txt").write_bytes(b"other")
    first = run_once(root, config, ("a.txt", "other.txt"))
    write_dated(out / "a.txt", b"BBBB", 1_767_225_600)
    args = ["keep", "r1"] if writer == "keep" else ["rm", "r1", "other.txt"]
    done = subprocess.run([sys.executable, "-m", "promoter", *args, "--root", str(root),
                           "--config", str(first.daemon.cfgfile)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    second = run_once(root, config)
    assert second.entry("a.txt")["sha256"] == sha(b"BBBB")
    assert (root / "artifacts" / "r1" / "files" / "a.txt").read_bytes() == b"BBBB"
    assert promoted(second.logs, "a.txt") == 1


@pytest.mark.parametrize("damage", ["removed", "corrupt"])
def test_a_rewrite_while_down_survives_a_rebuilt_metadata(tmp_path: Path, damage: str) -> None:
    """Probe r7-ctime N1: new bytes under the old mtime while the daemon is down, and the
    run's metadata.json gone or corrupt: the entry rebuilt from the stored copy knows no
    ctime of its source, so the source is read once and its new bytes promoted (the
    rebuild's own write time once hid it for good)."""
    root = tmp_path / "root"
    config = base_config()
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    write_dated(out / "a.txt", b"AAAA", 1_767_225_600)  # 2026-01-01
    run_once(root, config, ("a.txt",))
    write_dated(out / "a.txt", b"BBBB", 1_767_225_600)
    meta = root / "artifacts" / "r1" / "metadata.json"
    if damage == "removed":
        meta.unlink()
    else:
        meta.write_bytes(meta.read_bytes()[:100])
    second = run_once(root, config)
    assert second.entry("a.txt")["sha256"] == sha(b"BBBB")
    assert (root / "artifacts" / "r1" / "files" / "a.txt").read_bytes() == b"BBBB"
    third = run_once(root, config)  # read once: the next start leaves it alone
    assert third.startup()["promoted"] == 0 and third.startup()["unchanged"] == 0


def test_a_live_rewrite_survives_a_sibling_promoted_before_its_turn(tmp_path: Path) -> None:
    """F2: b written, then a rewritten (same size, the same future mtime) before b's turn:
    b's promotion writes the run after a's change; a's new bytes are promoted all the same."""
    d = start_daemon(tmp_path / "root", base_config(watch={"settle_ms": 400}))
    try:
        d.wait_ready()
        out = d.sessions / "r1" / "output"
        out.mkdir(parents=True)
        write_dated(out / "a.txt", b"AAAA", FUTURE)
        d.wait_entry("r1", "a.txt")
        (out / "b.txt").write_bytes(b"b1")
        time.sleep(0.15)  # b settles first: the order the finding needs
        write_dated(out / "a.txt", b"BBBB", FUTURE)
        d.wait_entry("r1", "b.txt")
        d.wait_entry("r1", "a.txt", check=lambda e: e["sha256"] == sha(b"BBBB"))
        wait_until(lambda: promoted(d.logs(), "a.txt") == 2, what="a promoted twice")
    finally:
        assert d.stop() == 0


def test_a_rewrite_while_down_survives_an_earlier_batch_of_the_catch_up(tmp_path: Path) -> None:
    """F3: a future-dated file rewritten in place while the daemon is down, and enough new
    files for the catch-up to cut the run into batches: the first batch's write of the run
    does not hide the rewrite from the later ones."""
    root = tmp_path / "root"
    config = base_config()
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    for name in ("a.txt", "z.txt"):  # one early, one late in any order of the batches
        write_dated(out / name, b"AAAA", FUTURE)
    run_once(root, config, ("a.txt", "z.txt"))
    for name in ("a.txt", "z.txt"):
        write_dated(out / name, b"BBBB", FUTURE)
    for i in range(600):
        (out / f"n{i:03d}.txt").write_bytes(b"x")
    second = run_once(root, config, ("n599.txt",))
    for name in ("a.txt", "z.txt"):
        assert second.entry(name)["sha256"] == sha(b"BBBB"), name
        assert promoted(second.logs, name) == 1


def relink(path: Path, aside: Path) -> None:
    """A hard link made and removed: the file's ctime moves, its bytes and name stay."""
    os.link(path, aside)
    os.unlink(aside)


def test_a_chmod_rename_or_hard_link_while_down_is_read_once(tmp_path: Path) -> None:
    """Same bytes, ctime moved (chmod, renamed away and back, a hard link made and removed)
    while the daemon was down: each read once at the start (its entry records the new
    ctime), never promoted twice, not read again at the next start nor at a rescan."""
    root = tmp_path / "root"
    config = base_config()
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    names = ("a.txt", "b.txt", "c.txt", "d.txt")
    for name in names:
        (out / name).write_bytes(name.encode() * 8)
    run_once(root, config, names)
    os.chmod(out / "a.txt", 0o600)
    os.rename(out / "b.txt", root / "sessions" / "r1" / "b.aside")
    os.rename(root / "sessions" / "r1" / "b.aside", out / "b.txt")
    relink(out / "c.txt", root / "sessions" / "r1" / "c.link")
    second = run_once(root, config)
    summary = second.startup()
    assert summary["unchanged"] == 3 and summary["promoted"] == 0
    for name in ("a.txt", "b.txt", "c.txt"):
        assert second.entry(name)["source_changed_at"] == ctime_text(out / name)
    third = start_daemon(root, base_config(watch={"rescan_interval_s": 1}))
    try:
        third.wait_ready()
        assert third.wait_log("reconcile.finished", trigger="startup")["unchanged"] == 0
        rescan = wait_until(lambda: [e for e in third.events("reconcile.finished")
                                     if e.get("trigger") != "startup"], timeout=15,
                            what="a periodic rescan")
        assert rescan[0]["offered"] == 0
    finally:
        assert third.stop() == 0
    assert sum(promoted(logs, n) for logs in (second.logs, third.logs()) for n in names) == 0


def test_a_chmod_or_rename_live_is_read_once(tmp_path: Path) -> None:
    """The same while the daemon runs (a chmod, a rename away and back: a hard link's count
    change reaches no folder watch, so the rescan or the next start reads it): the entry
    takes the new ctime, no second promotion; the next start reads neither again."""
    root = tmp_path / "root"
    d = start_daemon(root, base_config())
    out = d.sessions / "r1" / "output"
    try:
        d.wait_ready()
        out.mkdir(parents=True)
        for name in ("a.txt", "b.txt"):
            (out / name).write_bytes(name.encode() * 8)
            d.wait_entry("r1", name)
        os.chmod(out / "a.txt", 0o600)
        os.rename(out / "b.txt", d.sessions / "r1" / "b.aside")
        os.rename(d.sessions / "r1" / "b.aside", out / "b.txt")
        for name in ("a.txt", "b.txt"):
            d.wait_entry("r1", name, check=lambda e, n=name: e.get("source_changed_at")
                         == ctime_text(out / n))  # type: ignore[misc]
    finally:
        assert d.stop() == 0
    live = d.logs()
    again = run_once(root, base_config())
    assert again.startup()["unchanged"] == 0
    assert sum(promoted(logs, n) for logs in (live, again.logs) for n in ("a.txt", "b.txt")) == 2


def test_without_digests_a_changed_ctime_copies_once(tmp_path: Path) -> None:
    """checksum = "none": nothing to compare with, so a file whose ctime moved after its copy
    read it is copied again, as a rewrite, once; the next start copies nothing."""
    root = tmp_path / "root"
    config = base_config(promote={"checksum": "none"})
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    write_dated(out / "a.txt", b"AAAA", 1_767_225_600)
    run_once(root, config, ("a.txt",))
    write_dated(out / "a.txt", b"BBBB", 1_767_225_600)
    second = run_once(root, config)
    assert promoted(second.logs, "a.txt") == 1
    assert (root / "artifacts" / "r1" / "files" / "a.txt").read_bytes() == b"BBBB"
    assert promoted(run_once(root, config).logs, "a.txt") == 0


def test_an_entry_without_the_field_is_judged_by_its_run_write(tmp_path: Path) -> None:
    """A store written before `source_changed_at`: its entries are read as before (the run's
    updated_at); a read that finds the same bytes gives the entry its ctime."""
    root = tmp_path / "root"
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    (out / "a.txt").write_bytes(b"same")
    run_once(root, base_config(), ("a.txt",))
    meta_path = root / "artifacts" / "r1" / "metadata.json"
    text = meta_path.read_text()
    old = text.replace(f',\n      "source_changed_at": "{ctime_text(out / "a.txt")}"', "")
    assert old != text
    meta_path.write_text(old)  # as an older promoter wrote it
    assert "source_changed_at" not in old
    os.chmod(out / "a.txt", 0o600)  # after the run's last write: read
    second = run_once(root, base_config())
    assert second.startup()["unchanged"] == 1
    assert second.entry("a.txt")["source_changed_at"] == ctime_text(out / "a.txt")
    assert promoted(second.logs, "a.txt") == 0


def test_the_listing_compares_each_file_with_its_own_entry() -> None:
    """The start-up child's listing (µs from each file's mtime to its ctime) against the
    entries' (`known_changes`): the same difference skips the run in C, a later ctime has it
    scanned, whatever the run's last write; a run without the field keeps that write's rule,
    a run with both kinds judges each file by its own."""
    from promoter.scan import Listing
    copies = {"a": (3, 1_000), "b": (4, 2_000)}
    listing = Listing({"r": dict(copies)}, [], {"r": 2_050}, {"r": {"a": 0, "b": 50}})
    assert listing.unchanged("r", copies, 0, {"a": 0, "b": 50})  # before the run's write
    assert not listing.unchanged("r", copies, 9_999, {"a": 0, "b": 49})  # b changed since
    assert listing.unchanged("r", copies, 2_050, {})  # no field: the run's last write
    assert not listing.unchanged("r", copies, 2_049, {})
    assert listing.unchanged("r", copies, 2_050, {"a": 0})  # b: by the run's write
    assert not listing.unchanged("r", copies, 2_049, {"a": 0})
    assert not listing.unchanged("r", copies, 9_999, {"a": 0, "b": 0})
    assert not Listing({"r": dict(copies)}, [], {"r": 0}).unchanged("r", copies, 9, {"a": 0})
