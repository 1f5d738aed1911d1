"""The harness's view of its file system (issue 15, round 10): whether the tmp dir's ext4
has a journal (bench/fsjournal.py), and the wait after the last run's teardown
(bench/teardown.py). /proc and /sys are faked by passing paths to files made here."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench import fsjournal, teardown


def fake_system(tmp_path: Path, mounts: str) -> dict[str, str]:
    root = tmp_path / "sys"
    for sub in ("mounts-dir", "ext4", "jbd2", "dev-block"):
        (root / sub).mkdir(parents=True)
    (root / "mounts-dir" / "mounts").write_text(mounts)
    return {"mounts": str(root / "mounts-dir" / "mounts"), "sys_ext4": str(root / "ext4"),
            "jbd2": str(root / "jbd2"), "sys_dev_block": str(root / "dev-block")}


def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data dir"
    d.mkdir()
    return d


def mounts_for(d: Path, dev: str = "/dev/fakevd", fstype: str = "ext4") -> str:
    escaped = str(d).replace(" ", "\\040")
    return (f"/dev/vda / ext4 rw,relatime 0 0\n{dev} {escaped} {fstype} rw 0 0\n"
            "tmpfs /dev/shm tmpfs rw 0 0\n")


def test_journal_task_none_means_no_journal(tmp_path: Path) -> None:
    d = data_dir(tmp_path)
    paths = fake_system(tmp_path, mounts_for(d))
    (Path(paths["sys_ext4"]) / "fakevd").mkdir()
    (Path(paths["sys_ext4"]) / "fakevd" / "journal_task").write_text("<none>\n")
    info = fsjournal.describe(str(d), **paths)
    assert info["journal"] is False
    assert (info["device"], info["mount"], info["fstype"]) == ("/dev/fakevd", str(d), "ext4")
    assert "WITHOUT a journal" in fsjournal.line(info)


def test_a_journal_task_or_a_jbd2_entry_means_a_journal(tmp_path: Path) -> None:
    d = data_dir(tmp_path)
    paths = fake_system(tmp_path, mounts_for(d))
    (Path(paths["jbd2"]) / "fakevd-8").mkdir()
    assert fsjournal.describe(str(d), **paths)["journal"] is True  # jbd2 alone
    (Path(paths["sys_ext4"]) / "fakevd").mkdir()
    (Path(paths["sys_ext4"]) / "fakevd" / "journal_task").write_text("jbd2/fakevd-8\n")
    info = fsjournal.describe(str(d), **paths)
    assert info["journal"] is True and "journal_task" in info["how"]


def test_dev_root_is_found_through_the_paths_device_numbers(tmp_path: Path) -> None:
    """/dev/root names nothing in /sys/fs/ext4: the path's st_dev does, via /sys/dev/block."""
    d = data_dir(tmp_path)
    paths = fake_system(tmp_path, mounts_for(d, dev="/dev/root"))
    st = os.stat(d)
    target = tmp_path / "devices" / "vdz"
    target.mkdir(parents=True)
    (Path(paths["sys_dev_block"]) / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}").symlink_to(
        target)
    (Path(paths["sys_ext4"]) / "vdz").mkdir()
    (Path(paths["sys_ext4"]) / "vdz" / "journal_task").write_text("<none>\n")
    info = fsjournal.describe(str(d), **paths)
    assert info["journal"] is False and info["device_name"] == "vdz"


@pytest.mark.parametrize("case", ["not ext4", "nothing says", "no mounts file", "no mount"])
def test_unknown_is_none_never_an_exception(tmp_path: Path, case: str) -> None:
    d = data_dir(tmp_path)
    paths = fake_system(tmp_path, mounts_for(d, fstype="overlay" if case == "not ext4"
                                             else "ext4"))
    if case == "no mounts file":
        paths["mounts"] = str(tmp_path / "absent")
    if case == "no mount":
        Path(paths["mounts"]).write_text("garbage\n\n/dev/x /elsewhere ext4 rw 0 0\n")
    paths["sys_ext4"] = str(tmp_path / "no-sys") if case == "nothing says" else paths["sys_ext4"]
    info = fsjournal.describe(str(d), **paths)
    assert info["journal"] is None
    assert "journal unknown" in fsjournal.line(info)


def test_the_longest_mount_point_wins(tmp_path: Path) -> None:
    d = data_dir(tmp_path)
    inner = d / "inner"
    inner.mkdir()
    escaped = str(d).replace(" ", "\\040")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/b {escaped}/inner xfs rw 0 0\n/dev/a {escaped} ext4 rw 0 0\n"
                      f"/dev/c {escaped}/inn ext4 rw 0 0\n")
    assert fsjournal.mount_of(str(inner / "x"), str(mounts)) == ("/dev/b", str(inner), "xfs")
    assert fsjournal.mount_of(str(d), str(mounts)) == ("/dev/a", str(d), "ext4")


def test_this_machine_does_not_crash() -> None:
    info = fsjournal.describe("/tmp")
    assert info["journal"] in (True, False, None)


# ------------------------------------------------------------------ teardown


@pytest.mark.parametrize(
    ("stamp", "journal", "expected"),
    [
        (990.0, False, 355.0),  # 10 s ago, no journal: the rest of the 365 s
        (600.0, False, 0.0),    # 400 s ago: nothing left
        (635.0, False, 0.0),    # exactly 365 s ago
        (900.0, False, 265.0),  # 100 s ago: a sync then does not shorten the window
        (None, False, 0.0),     # no stamp
        (990.0, True, 0.0),     # a journal: no tax
        (990.0, None, 0.0),     # unknown: no wait
        (5000.0, False, 365.0),  # from the future (clock set back): one window at most
    ],
)
def test_the_wait_decision(stamp: float | None, journal: bool | None, expected: float) -> None:
    assert teardown.wait_s(stamp, 1000.0, journal) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "{", "[]", '{"wall": "x"}', '{"wall": true}',
                                  '{"wall": NaN}', '{"at": 1}', "\x00\xff"])
def test_an_unreadable_stamp_is_no_stamp(tmp_path: Path, text: str) -> None:
    path = tmp_path / teardown.STAMP_NAME
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    assert teardown.read_stamp(path) is None


def test_a_young_stamp_waits_out_the_rest(tmp_path: Path) -> None:
    (tmp_path / teardown.STAMP_NAME).write_text(json.dumps({"wall": 980.0}))
    slept: list[float] = []
    out = teardown.wait_before_run(tmp_path, False, skip=False, sleep=slept.append,
                                   now=lambda: 1000.0)
    assert slept == [pytest.approx(345.0)]
    assert out["needed_s"] == 345.0 and out["last_teardown_age_s"] == 20.0
    assert out["skipped"] is False


def test_no_wait_when_skipped_or_journaled_or_old(tmp_path: Path) -> None:
    (tmp_path / teardown.STAMP_NAME).write_text(json.dumps({"wall": 980.0}))
    slept: list[float] = []
    skipped = teardown.wait_before_run(tmp_path, False, skip=True, sleep=slept.append,
                                       now=lambda: 1000.0)
    assert skipped["skipped"] is True and skipped["needed_s"] == 345.0
    teardown.wait_before_run(tmp_path, True, skip=False, sleep=slept.append, now=lambda: 1000.0)
    old = teardown.wait_before_run(tmp_path, False, skip=False, sleep=slept.append,
                                   now=lambda: 2000.0)
    assert slept == [] and old["needed_s"] == 0.0 and old["skipped"] is False


def test_finish_removes_syncs_and_stamps_in_place(tmp_path: Path) -> None:
    tree = tmp_path / "promoter-bench-x"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_bytes(b"x")
    out = teardown.finish(tree, tmp_path, keep=False)
    assert not tree.exists() and out["removed"] is True and "stamp_error" not in out
    stamp = tmp_path / teardown.STAMP_NAME
    first = teardown.read_stamp(stamp)
    assert first is not None and math.isfinite(first)
    inode = stamp.stat().st_ino
    tree.mkdir()
    out = teardown.finish(tree, tmp_path, keep=True)
    assert tree.exists() and out["removed"] is False
    second = teardown.read_stamp(stamp)
    assert second is not None and second >= first
    assert stamp.stat().st_ino == inode  # rewritten in place: no inode freed by a rename


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / teardown.STAMP_NAME).symlink_to(victim)
    out = teardown.finish(tmp_path / "gone", tmp_path, keep=False)
    assert "stamp_error" in out and victim.read_text() == "keep"
