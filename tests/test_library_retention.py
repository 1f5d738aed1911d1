"""The library's missing half, the retention levers and the `rejected` list (issue 13)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promoter.audit import AUDIT_DIR, read_journal
from promoter.cli import main
from promoter.store import Outcome
from tests.store_helpers import FakeClock
from tests.web_helpers import (
    CSRF,
    client_for,
    make_store,
    populate,
    tree_snapshot,
    write_session_file,
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def journal(root: Path) -> list[dict[str, object]]:
    return read_journal(root / "artifacts" / AUDIT_DIR)


def test_library_ls_and_rm_from_the_cli(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`library ls` lists, `library rm` deletes (journaled), `--dry-run` changes nothing,
    and a missing or bad name is exit 1."""
    make_store(tmp_path)
    (tmp_path / "library/a.csv").write_bytes(b"a,b\n")
    (tmp_path / "library/b.txt").write_bytes(b"b")
    root = str(tmp_path)
    code, out, _ = run_cli(capsys, "library", "ls", "--json", "--root", root)
    assert [f["name"] for f in json.loads(out)["files"]] == ["a.csv", "b.txt"]
    code, out, _ = run_cli(capsys, "library", "rm", "a.csv", "--dry-run", "--root", root)
    assert code == 0 and out == "would delete library/a.csv (4 B)\n"
    assert (tmp_path / "library/a.csv").exists()
    code, out, _ = run_cli(capsys, "library", "rm", "a.csv", "--json", "--root", root)
    assert code == 0 and json.loads(out)["name"] == "a.csv"
    assert not (tmp_path / "library/a.csv").exists()
    assert [(e["event"], e["name"]) for e in journal(tmp_path)] == [("library.deleted", "a.csv")]
    for bad in ("a.csv", "../etc", ".hidden"):
        code, _, err = run_cli(capsys, "library", "rm", bad, "--root", root)
        assert code == 1 and len(err.splitlines()) == 1
    code, out, _ = run_cli(capsys, "library", "--root", root)
    assert "b.txt" in out and "a.csv" not in out


def test_library_delete_route(tmp_path: Path) -> None:
    """DELETE /runtime/library/{name}: 204 and gone; 404 when missing; a link planted in the
    library is no library file (404, its target untouched); no CSRF header is 403."""
    store = make_store(tmp_path)
    (tmp_path / "library/report.pdf").write_bytes(b"%PDF")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (tmp_path / "library/link.txt").symlink_to(outside)
    client = client_for(store)
    assert client.delete("/runtime/library/report.pdf").status_code == 403
    assert client.delete("/runtime/library/report.pdf", headers=CSRF).status_code == 204
    assert not (tmp_path / "library/report.pdf").exists()
    assert client.delete("/runtime/library/report.pdf", headers=CSRF).status_code == 404
    assert client.delete("/runtime/library/link.txt", headers=CSRF).status_code == 404
    assert client.delete("/runtime/library/..", headers=CSRF).status_code in (400, 404)
    assert outside.read_text() == "keep me" and (tmp_path / "library/link.txt").is_symlink()
    assert [e["event"] for e in journal(tmp_path)] == ["library.deleted"]


def test_sweep_older_than_and_dry_runs_one_run_a_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sweep --older-than 3d` also expires unkept runs created over 3 days ago (never a kept
    one); its --dry-run prints one run a line and changes nothing."""
    clock = FakeClock(datetime.now(UTC) - timedelta(days=4))
    store = make_store(tmp_path, clock)
    for run_id in ("old-1", "old-2", "old-kept"):
        populate(store, tmp_path, run_id, {"a.txt": b"a"})
    store.set_keep("old-kept", True)
    clock.advance(days=3)
    populate(store, tmp_path, "young", {"a.txt": b"a"})
    root = str(tmp_path)
    before = tree_snapshot(tmp_path / "artifacts")
    code, out, _ = run_cli(capsys, "sweep", "--older-than", "3d", "--dry-run", "--root", root)
    assert code == 0 and sorted(out.splitlines()) == ["would delete old-1", "would delete old-2"]
    assert tree_snapshot(tmp_path / "artifacts") == before
    code, out, _ = run_cli(capsys, "sweep", "--root", root)
    assert out == "no expired runs\n"
    code, out, _ = run_cli(capsys, "sweep", "--older-than", "3d", "--json", "--root", root)
    assert sorted(json.loads(out)["expired"]) == ["old-1", "old-2"]
    assert sorted(os.listdir(tmp_path / "artifacts")) == [
        ".audit", ".locks", ".tombstones", ".trash", "old-kept", "young"]
    expired = [e for e in journal(tmp_path) if e["event"] == "run.expired"]
    assert sorted(str(e["run_id"]) for e in expired) == ["old-1", "old-2"]
    code, _, err = run_cli(capsys, "sweep", "--older-than", "soon", "--root", root)
    assert code == 2 and "duration" in err


def test_rm_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rm --dry-run` says what would go, for a run and for one file, and touches nothing."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"aa", "b.txt": b"b"})
    before = tree_snapshot(tmp_path / "artifacts")
    code, out, _ = run_cli(capsys, "rm", "r1", "--dry-run", "--root", str(tmp_path))
    assert code == 0 and out == "would delete run r1 (2 files, 3 B)\n"
    code, out, _ = run_cli(capsys, "rm", "r1", "a.txt", "--dry-run", "--json",
                           "--root", str(tmp_path))
    assert json.loads(out) == {"run_id": "r1", "filename": "a.txt", "size_bytes": 2,
                               "dry_run": True}
    code, _, _ = run_cli(capsys, "rm", "r1", "zzz.txt", "--dry-run", "--root", str(tmp_path))
    assert code == 1
    assert tree_snapshot(tmp_path / "artifacts") == before


def test_refused_files_are_listed_in_the_run(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A file over max_file_bytes is in the run's `rejected` list with its size and reason,
    shown by `show`; the same refusal again writes nothing; promoted later, it leaves the list;
    a refusal alone creates its run (DESIGN §2: a person sees why), but not a deleted one."""
    store = make_store(tmp_path, promote={"max_file_bytes": 10})
    write_session_file(tmp_path, "r1", "ok.txt", b"fine")
    write_session_file(tmp_path, "r1", "huge.bin", b"x" * 50)
    store.promote_files("r1", ["ok.txt", "huge.bin"])
    meta = store.get_run("r1")
    assert [(r.filename, r.reason, r.size_bytes) for r in meta.rejected] == [
        ("huge.bin", "over the 10 B limit (max_file_bytes)", 50)]
    code, out, _ = run_cli(capsys, "show", "r1", "--root", str(tmp_path))
    assert code == 0 and "NOT KEPT" in out
    assert "huge.bin  over the 10 B limit (max_file_bytes)  50 B" in out
    stamp = (tmp_path / "artifacts/r1/metadata.json").stat().st_mtime_ns
    assert store.promote_files("r1", ["huge.bin"])[0].outcome is Outcome.REJECTED
    assert (tmp_path / "artifacts/r1/metadata.json").stat().st_mtime_ns == stamp
    write_session_file(tmp_path, "r1", "huge.bin", b"small now", age_s=1)
    store.promote_files("r1", ["huge.bin"])
    assert store.get_run("r1").rejected == []
    write_session_file(tmp_path, "r2", "huge.bin", b"x" * 50)
    assert store.promote_files("r2", ["huge.bin"])[0].outcome is Outcome.REJECTED
    assert [(r.filename, r.size_bytes) for r in store.get_run("r2").rejected] == [
        ("huge.bin", 50)]
    assert store.get_run("r2").artifacts == []
    code, out, _ = run_cli(capsys, "show", "r2", "--root", str(tmp_path))
    assert code == 0 and "huge.bin  over the 10 B limit (max_file_bytes)  50 B" in out
    store.delete_run("r2")
    assert store.promote_files("r2", ["huge.bin"])[0].outcome is Outcome.REJECTED
    assert not (tmp_path / "artifacts/r2").exists()


def test_a_large_copy_logs_its_start(tmp_path: Path) -> None:
    """A file over 64 MiB logs `artifact.copying` before its copy; a small one does not."""
    from tests.web_helpers import LogCapture

    store = make_store(tmp_path)
    big = write_session_file(tmp_path, "r1", "big.bin", b"")
    os.truncate(big, (64 << 20) + 1)  # sparse: cheap to write, read as zeros
    write_session_file(tmp_path, "r1", "small.txt", b"s")
    with LogCapture() as logs:
        store.promote_files("r1", ["big.bin", "small.txt"])
    names = [e["event"] for e in logs.lines() if e["event"].startswith("artifact.")]
    assert names.index("artifact.copying") < names.index("artifact.promoted")
    assert [e["filename"] for e in logs.events("artifact.copying")] == ["big.bin"]
