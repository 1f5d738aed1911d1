"""The store: promotion, metadata, context, recovery, deletion and the library (DESIGN §1-§2, §6).

The store works through descriptors (`dir_fd`, `O_NOFOLLOW`, `flock`), which
pyfakefs does not model, so these tests use real folders under tmp_path with an
injected clock; they are still fast and thread-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from promoter.clock import from_timestamp_ns
from promoter.errors import ConflictError, InvalidNameError, NotFoundError
from promoter.metadata import RunMetadata
from promoter.safeio import Refused, SourceChanged, copy_and_hash, open_dir, open_regular
from promoter.startup import prepare_store
from promoter.store import Outcome, Store
from promoter.sweep import sweep
from tests.store_helpers import FakeClock, make_store, write_session_file


def meta_of(root: Path, run_id: str) -> RunMetadata:
    raw = (root / "artifacts" / run_id / "metadata.json").read_text()
    return RunMetadata.model_validate_json(raw)


def outcomes(results: list) -> dict[str, Outcome]:  # type: ignore[type-arg]
    return {r.filename: r.outcome for r in results}


def test_promotes_with_every_metadata_field(tmp_path: Path) -> None:
    """A finished file becomes files/<name> with a complete, valid entry."""
    clock = FakeClock()
    store = make_store(tmp_path, clock, retention={"days": 2})
    src = write_session_file(tmp_path, "r1", "plot_r1_0.png", b"\x89PNG data")
    (tmp_path / "sessions/r1/run.json").write_text(json.dumps(
        {"workflow_id": "wf", "user_directive": "Analyze Q3", "status": "running"}))
    (tmp_path / "sessions/r1/attribution.jsonl").write_text(
        '{"filename": "plot_r1_0.png", "agent_id": "viz"}\n')
    [result] = store.promote_files("r1", ["plot_r1_0.png"])
    assert result.outcome is Outcome.PROMOTED
    meta = meta_of(tmp_path, "r1")
    assert (meta.run_id, meta.workflow_id, meta.user_directive) == ("r1", "wf", "Analyze Q3")
    assert meta.created_at == clock.now()
    assert (meta.expires_at - meta.created_at).days == 2
    assert meta.status == "active" and meta.keep is False and meta.removed == []
    [entry] = meta.artifacts
    assert entry.filename == "plot_r1_0.png" and entry.path == "files/plot_r1_0.png"
    assert entry.agent_id == "viz" and entry.content_type == "image/png"
    assert entry.size_bytes == 9
    assert entry.sha256 == hashlib.sha256(b"\x89PNG data").hexdigest()
    assert entry.generated_at == from_timestamp_ns(src.stat().st_mtime_ns)
    copy = tmp_path / "artifacts/r1/files/plot_r1_0.png"
    assert copy.read_bytes() == b"\x89PNG data"
    assert copy.stat().st_mtime_ns == src.stat().st_mtime_ns


def test_metadata_json_is_rfc3339_utc_with_z(tmp_path: Path) -> None:
    """Times in metadata.json are RFC 3339 UTC strings ending in Z."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    raw = json.loads((tmp_path / "artifacts/r1/metadata.json").read_text())
    for key in ("created_at", "updated_at", "expires_at"):
        assert raw[key].endswith("Z")
    assert raw["artifacts"][0]["generated_at"].endswith("Z")
    assert raw["schema_version"] == 1


def test_subfolders_are_kept(tmp_path: Path) -> None:
    """output/plots/a.png becomes files/plots/a.png named plots/a.png."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "plots/deep/a.png", b"a")
    store.promote_files("r1", ["plots/deep/a.png"])
    [entry] = meta_of(tmp_path, "r1").artifacts
    assert entry.filename == "plots/deep/a.png" and entry.path == "files/plots/deep/a.png"
    assert (tmp_path / "artifacts/r1/files/plots/deep/a.png").read_bytes() == b"a"


def test_agent_file_named_metadata_json_cannot_collide(tmp_path: Path) -> None:
    """An agent's metadata.json lives under files/ and leaves the run's metadata alone."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "metadata.json", b"{}")
    store.promote_files("r1", ["metadata.json"])
    assert meta_of(tmp_path, "r1").artifacts[0].path == "files/metadata.json"


def test_unchanged_file_is_not_copied_again(tmp_path: Path) -> None:
    """Same size and time: UNCHANGED, and metadata.json is not rewritten."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    before = (tmp_path / "artifacts/r1/metadata.json").stat().st_ino
    assert outcomes(store.promote_files("r1", ["a.txt"])) == {"a.txt": Outcome.UNCHANGED}
    assert (tmp_path / "artifacts/r1/metadata.json").stat().st_ino == before


def test_rewrite_replaces_copy_and_entry(tmp_path: Path) -> None:
    """A rewritten file replaces its copy and its single entry."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"one", age_s=20)
    store.promote_files("r1", ["a.txt"])
    write_session_file(tmp_path, "r1", "a.txt", b"second", age_s=5)
    store.promote_files("r1", ["a.txt"])
    [entry] = meta_of(tmp_path, "r1").artifacts
    assert entry.size_bytes == 6 and entry.sha256 == hashlib.sha256(b"second").hexdigest()
    assert (tmp_path / "artifacts/r1/files/a.txt").read_bytes() == b"second"


def test_batch_makes_one_metadata_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many files of one run promoted together cost one metadata write."""
    store = make_store(tmp_path)
    names = [f"f{i}.csv" for i in range(20)]
    for name in names:
        write_session_file(tmp_path, "r1", name, name.encode())
    writes = []
    original = Store.write_metadata
    monkeypatch.setattr(Store, "write_metadata", lambda self, art, meta: (writes.append(1),
                                                                   original(self, art, meta)))
    results = store.promote_files("r1", names + names)
    assert len(writes) == 1
    assert len(results) == 20
    assert sorted(a.filename for a in meta_of(tmp_path, "r1").artifacts) == sorted(names)


def test_deleted_source_leaves_store_untouched(tmp_path: Path) -> None:
    """A file deleted from output/ stays in the store; a missing one is LOST."""
    store = make_store(tmp_path)
    src = write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    src.unlink()
    assert outcomes(store.promote_files("r1", ["a.txt", "gone.txt"])) == {
        "a.txt": Outcome.LOST, "gone.txt": Outcome.LOST}
    assert [a.filename for a in meta_of(tmp_path, "r1").artifacts] == ["a.txt"]


def test_no_run_is_created_for_nothing(tmp_path: Path) -> None:
    """A batch that promotes nothing creates no run folder."""
    store = make_store(tmp_path)
    store.promote_files("r1", ["missing.txt"])
    assert not (tmp_path / "artifacts/r1").exists()


# -- untrusted input (DESIGN §6) -------------------------------------------------------------


def test_symlink_at_last_name_is_rejected(tmp_path: Path) -> None:
    """A symlink is never followed, even to a readable file; its refusal alone makes the run
    (DESIGN §2: `show` tells why the file is not there)."""
    store = make_store(tmp_path)
    out = tmp_path / "sessions/r1/output"
    out.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("secret")
    (out / "link.txt").symlink_to(secret)
    [r] = store.promote_files("r1", ["link.txt"])
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "symlink")
    meta = meta_of(tmp_path, "r1")
    assert meta.artifacts == [] and [(x.filename, x.reason) for x in meta.rejected] == [
        ("link.txt", "symlink")]
    assert not (tmp_path / "artifacts/r1/files").exists()


def test_symlinked_folder_on_the_way_is_rejected(tmp_path: Path) -> None:
    """A symlink to a folder anywhere on the path is refused."""
    store = make_store(tmp_path)
    out = tmp_path / "sessions/r1/output"
    out.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("secret")
    (out / "sub").symlink_to(outside)
    [r] = store.promote_files("r1", ["sub/a.txt"])
    assert r.outcome is Outcome.REJECTED and "symlink" in r.reason


def test_symlinked_output_folder_is_rejected(tmp_path: Path) -> None:
    """output/ itself as a link is refused."""
    store = make_store(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("secret")
    (tmp_path / "sessions/r1").mkdir(parents=True)
    (tmp_path / "sessions/r1/output").symlink_to(outside)
    [r] = store.promote_files("r1", ["a.txt"])
    assert r.outcome is Outcome.REJECTED


def test_fifo_socket_are_rejected_without_blocking(tmp_path: Path) -> None:
    """FIFOs and sockets are refused and never opened for reading."""
    store = make_store(tmp_path)
    out = tmp_path / "sessions/r1/output"
    out.mkdir(parents=True)
    os.mkfifo(out / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(out / "sock"))
        res = outcomes(store.promote_files("r1", ["pipe", "sock"]))
    finally:
        sock.close()
    assert res == {"pipe": Outcome.REJECTED, "sock": Outcome.REJECTED}


def test_hard_links_refused_unless_allowed(tmp_path: Path) -> None:
    """A file with two links is refused, unless promote.allow_hardlinks is set."""
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    write_session_file(tmp_path, "r1", "x", b"")
    link = tmp_path / "sessions/r1/output/hl.txt"
    os.link(outside, link)
    [r] = make_store(tmp_path).promote_files("r1", ["hl.txt"])
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "hard link")
    [r] = make_store(tmp_path, promote={"allow_hardlinks": True}).promote_files("r1", ["hl.txt"])
    assert r.outcome is Outcome.PROMOTED


def test_sparse_file_over_limit_is_rejected_unread(tmp_path: Path) -> None:
    """A file larger than max_file_bytes is refused from its size alone."""
    store = make_store(tmp_path, promote={"max_file_bytes": 1024})
    path = write_session_file(tmp_path, "r1", "big.bin", b"")
    with path.open("r+b") as fh:
        fh.truncate(1 << 40)
    [r] = store.promote_files("r1", ["big.bin"])
    assert r.outcome is Outcome.REJECTED and "max_file_bytes" in r.reason


def test_run_limit_is_enforced(tmp_path: Path) -> None:
    """Files that would push a run over max_run_bytes are refused."""
    store = make_store(tmp_path, promote={"max_run_bytes": 10})
    write_session_file(tmp_path, "r1", "a", b"123456")
    write_session_file(tmp_path, "r1", "b", b"123456")
    res = outcomes(store.promote_files("r1", ["a", "b"]))
    assert res == {"a": Outcome.PROMOTED, "b": Outcome.REJECTED}


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", ".promoter-x", ""])
def test_bad_names_are_rejected(tmp_path: Path, name: str) -> None:
    """Traversing names are refusals, never exceptions."""
    [r] = make_store(tmp_path).promote_files("r1", [name])
    assert r.outcome is Outcome.REJECTED


def test_invalid_run_id_raises(tmp_path: Path) -> None:
    """A run id that breaks DESIGN §1 is InvalidNameError before anything is touched."""
    with pytest.raises(InvalidNameError):
        make_store(tmp_path).promote_files("../etc", ["a"])


def test_source_changed_during_copy_leaves_nothing(tmp_path: Path) -> None:
    """A source whose size or times change during the copy is not renamed into place."""
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    dst = tmp_path / "dst"
    dst.mkdir()
    base = open_dir(tmp_path)
    dfd = open_dir(dst)
    fd, st = open_regular(base, "src", allow_hardlinks=False)
    try:
        with src.open("ab") as fh:
            fh.write(b"more")
        with pytest.raises(SourceChanged):
            copy_and_hash(fd, st, dfd, "out", checksum=True, max_bytes=1 << 20)
    finally:
        for x in (fd, base, dfd):
            os.close(x)
    assert list(dst.iterdir()) == []


def test_copy_over_limit_while_growing_is_refused(tmp_path: Path) -> None:
    """A file that grows past max_file_bytes during the copy is refused, nothing left."""
    src = tmp_path / "src"
    src.write_bytes(b"x" * 5000)
    dst = tmp_path / "dst"
    dst.mkdir()
    base, dfd = open_dir(tmp_path), open_dir(dst)
    fd, st = open_regular(base, "src", allow_hardlinks=False)
    try:
        with pytest.raises(Refused):
            copy_and_hash(fd, st, dfd, "out", checksum=True, max_bytes=100)
    finally:
        for x in (fd, base, dfd):
            os.close(x)
    assert list(dst.iterdir()) == []


# -- run context ---------------------------------------------------------------------------


def test_attribution_arriving_later_updates_entry(tmp_path: Path) -> None:
    """A file without a line is 'unknown' until its line arrives; a later line wins."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "plots/a.png", b"a")
    store.promote_files("r1", ["plots/a.png"])
    assert meta_of(tmp_path, "r1").artifacts[0].agent_id == "unknown"
    attribution = tmp_path / "sessions/r1/attribution.jsonl"
    attribution.write_text('{"filename": "plots/a.png", "agent_id": "first"}\nnot json\n'
                           '{"filename": "plots/a.png", "agent_id": "second"}\n')
    store.refresh_context("r1")
    assert meta_of(tmp_path, "r1").artifacts[0].agent_id == "second"
    with attribution.open("a") as fh:
        fh.write('{"filename": "a.png", "agent_id": "by-base-name"}\n')
    # the exact name still wins over the base name
    store.refresh_context("r1")
    assert meta_of(tmp_path, "r1").artifacts[0].agent_id == "second"


def test_run_json_workflow_sets_retention_and_status(tmp_path: Path) -> None:
    """Workflow retention applies when it becomes known; completed/failed completes the run."""
    store = make_store(tmp_path, retention={"days": 7})
    store = Store(store.config.model_copy(update={"retention": store.config.retention.model_copy(
        update={"workflows": {"long": 30.0}})}), clock=store.clock)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    meta = meta_of(tmp_path, "r1")
    assert (meta.expires_at - meta.created_at).days == 7
    (tmp_path / "sessions/r1/run.json").write_text('{"workflow_id": "long", "status": "failed"}')
    store.refresh_context("r1")
    meta = meta_of(tmp_path, "r1")
    assert (meta.expires_at - meta.created_at).days == 30
    assert meta.status == "completed"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"workflow_id": 5}',
                                     '{"status": "exploded"}'])
def test_malformed_run_json_is_only_a_warning(tmp_path: Path, content: str) -> None:
    """A malformed run.json leaves the fields empty and promotion goes on."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    (tmp_path / "sessions/r1/run.json").write_text(content)
    [r] = store.promote_files("r1", ["a.txt"])
    assert r.outcome is Outcome.PROMOTED
    meta = meta_of(tmp_path, "r1")
    assert meta.workflow_id == "" and meta.status == "active"


def test_symlinked_run_json_is_not_followed(tmp_path: Path) -> None:
    """run.json as a link to a file elsewhere is ignored."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    evil = tmp_path / "evil.json"
    evil.write_text('{"workflow_id": "stolen"}')
    (tmp_path / "sessions/r1/run.json").symlink_to(evil)
    store.promote_files("r1", ["a.txt"])
    assert meta_of(tmp_path, "r1").workflow_id == ""


def test_session_gone_marks_run_completed(tmp_path: Path) -> None:
    """mark_completed sets status completed once."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    store.mark_completed("r1")
    assert meta_of(tmp_path, "r1").status == "completed"


# -- recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"", b"{trunc", b'{"run_id": "r1"}', b"\xff\xfe"])
def test_corrupt_metadata_is_rebuilt_not_emptied(tmp_path: Path, garbage: bytes) -> None:
    """A corrupt metadata.json is set aside and rebuilt from the stored files."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    write_session_file(tmp_path, "r1", "sub/b.txt", b"beta")
    store.promote_files("r1", ["a.txt", "sub/b.txt"])
    (tmp_path / "artifacts/r1/metadata.json").write_bytes(garbage)
    meta = store.get_run("r1")
    assert sorted(a.filename for a in meta.artifacts) == ["a.txt", "sub/b.txt"]
    b = meta.entry("sub/b.txt")
    assert b is not None and b.sha256 == hashlib.sha256(b"beta").hexdigest()
    assert list((tmp_path / "artifacts/r1").glob("metadata.json.corrupt-*"))
    meta_of(tmp_path, "r1")  # valid on disk again


@pytest.mark.parametrize("size", [2**64, 2**63 - 1, (1 << 50) + 1])
def test_an_entry_claiming_a_size_no_file_can_have_is_corrupt(tmp_path: Path, size: int) -> None:
    """An entry whose size_bytes is past any max_file_bytes (1 PiB) makes metadata.json
    corrupt, rebuilt from the stored copies: the run's next file is promoted, not rejected
    for a max_run_bytes the run never reached (probe r8-memory F1)."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    store.promote_files("r1", ["a.txt"])
    path = tmp_path / "artifacts/r1/metadata.json"
    doc = json.loads(path.read_text())
    doc["artifacts"][0]["size_bytes"] = size
    path.write_text(json.dumps(doc))
    write_session_file(tmp_path, "r1", "b.txt", b"beta")
    assert store.promote_files("r1", ["b.txt"])[0].outcome is Outcome.PROMOTED
    meta = meta_of(tmp_path, "r1")
    assert sorted((a.filename, a.size_bytes) for a in meta.artifacts) == [("a.txt", 5),
                                                                          ("b.txt", 4)]
    assert not meta.rejected and list(path.parent.glob("metadata.json.corrupt-*"))


def test_repair_after_crash_lists_orphans_and_removes_temps(tmp_path: Path) -> None:
    """After a crash every file under files/ is listed and no temp file is left."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    store.promote_files("r1", ["a.txt"])
    files = tmp_path / "artifacts/r1/files"
    (files / "orphan.txt").write_bytes(b"orphan")
    (files / ".promoter-123-copy").write_bytes(b"half")
    (tmp_path / "artifacts/r1/.promoter-9-metadata.json").write_bytes(b"{")
    (files / "a.txt").unlink()
    prepare_store(store.config)
    meta = meta_of(tmp_path, "r1")
    assert [a.filename for a in meta.artifacts] == ["orphan.txt"]
    assert not list(tmp_path.glob("artifacts/**/.promoter-*"))


def test_a_copy_the_repair_lists_gets_its_promotion_in_the_journal(tmp_path: Path) -> None:
    """A copy placed by a process killed before its journal write is listed by the repair
    and journaled then, marked recovered (DESIGN §11: every change an audit event)."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    store.promote_files("r1", ["a.txt"])
    (tmp_path / "artifacts/r1/files/orphan.txt").write_bytes(b"orphan")
    prepare_store(store.config)
    lines = [json.loads(line) for day in (tmp_path / "artifacts/.audit").iterdir()
             for line in day.read_text().splitlines()]
    promoted = {e["filename"]: e for e in lines if e["event"] == "artifact.promoted"}
    assert set(promoted) == {"a.txt", "orphan.txt"}
    assert promoted["orphan.txt"]["recovered"] is True
    assert promoted["orphan.txt"]["sha256"] == hashlib.sha256(b"orphan").hexdigest()
    assert "recovered" not in promoted["a.txt"]
    prepare_store(store.config)  # a second repair finds nothing to list: no second event
    again = [json.loads(line) for day in (tmp_path / "artifacts/.audit").iterdir()
             for line in day.read_text().splitlines()]
    assert len(again) == len(lines)


def test_a_folder_planted_under_the_temp_prefix_keeps_no_other_temp(tmp_path: Path) -> None:
    """A `.promoter-*` folder is removed as a tree, and the temps listed after it go too
    (the loop once ended at the folder's unlink, r7 start probe 2)."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    store.promote_files("r1", ["a.txt"])
    run = tmp_path / "artifacts/r1"
    planted = run / ".promoter-zdir"
    (planted / "deep").mkdir(parents=True)
    (planted / "deep/x").write_bytes(b"x")
    for n in range(8):
        (run / f".promoter-{n}-metadata.json").write_bytes(b"{")
    prepare_store(store.config)
    assert not list(run.glob(".promoter-*"))
    assert [a.filename for a in meta_of(tmp_path, "r1").artifacts] == ["a.txt"]


# -- deletion, keep, sweep -------------------------------------------------------------------


def test_deleted_run_stays_deleted_until_newer_file(tmp_path: Path) -> None:
    """A tombstone keeps old files out; a newer file starts the run afresh."""
    clock = FakeClock()
    store = make_store(tmp_path, clock)
    write_session_file(tmp_path, "r1", "old.txt", b"old", age_s=60)
    store.promote_files("r1", ["old.txt"])
    first_created = meta_of(tmp_path, "r1").created_at
    report = store.delete_run("r1")
    assert report.files == 1
    assert not (tmp_path / "artifacts/r1").exists()
    tomb = json.loads((tmp_path / "artifacts/.tombstones/r1").read_text())
    assert tomb["reason"] == "rm" and tomb["run_id"] == "r1"
    assert outcomes(store.promote_files("r1", ["old.txt"])) == {"old.txt": Outcome.SKIPPED}
    assert not (tmp_path / "artifacts/r1").exists()
    clock.advance(seconds=120)
    write_session_file(tmp_path, "r1", "new.txt", b"new", age_s=-30)  # written after deletion
    store.promote_files("r1", ["old.txt", "new.txt"])
    meta = meta_of(tmp_path, "r1")
    assert [a.filename for a in meta.artifacts] == ["new.txt"]
    assert meta.created_at > first_created


def test_removed_artifact_stays_out_until_rewritten(tmp_path: Path) -> None:
    """rm RUN FILE adds a removed entry; a rewrite after it comes back and leaves the list."""
    clock = FakeClock()
    store = make_store(tmp_path, clock)
    write_session_file(tmp_path, "r1", "a.txt", b"a", age_s=60)
    write_session_file(tmp_path, "r1", "b.txt", b"b", age_s=60)
    store.promote_files("r1", ["a.txt", "b.txt"])
    store.delete_artifact("r1", "a.txt")
    meta = meta_of(tmp_path, "r1")
    assert [a.filename for a in meta.artifacts] == ["b.txt"]
    assert [r.filename for r in meta.removed] == ["a.txt"]
    assert not (tmp_path / "artifacts/r1/files/a.txt").exists()
    assert outcomes(store.promote_files("r1", ["a.txt"])) == {"a.txt": Outcome.SKIPPED}
    write_session_file(tmp_path, "r1", "a.txt", b"again", age_s=-30)
    store.promote_files("r1", ["a.txt"])
    meta = meta_of(tmp_path, "r1")
    assert sorted(a.filename for a in meta.artifacts) == ["a.txt", "b.txt"]
    assert meta.removed == []


def test_delete_missing_things_is_not_found(tmp_path: Path) -> None:
    """Deleting a run or artifact that does not exist is NotFoundError."""
    store = make_store(tmp_path)
    with pytest.raises(NotFoundError):
        store.delete_run("nope")
    with pytest.raises(NotFoundError):
        store.delete_artifact("nope", "a.txt")


def test_sweep_deletes_expired_not_kept(tmp_path: Path) -> None:
    """Expired runs go (tombstone reason expired); kept runs and fresh runs stay."""
    clock = FakeClock()
    store = make_store(tmp_path, clock, retention={"days": 1})
    for run in ("old", "kept"):
        write_session_file(tmp_path, run, "a.txt", b"a")
        store.promote_files(run, ["a.txt"])
    store.set_keep("kept", True)
    clock.advance(days=1)
    write_session_file(tmp_path, "fresh", "a.txt", b"a")
    store.promote_files("fresh", ["a.txt"])
    assert sweep(store, dry_run=True).expired == ["old"]
    assert (tmp_path / "artifacts/old").exists()
    report = sweep(store)
    assert report.expired == ["old"]
    assert sorted(store.run_ids()) == ["fresh", "kept"]
    assert json.loads((tmp_path / "artifacts/.tombstones/old").read_text())["reason"] == "expired"
    store.set_keep("kept", False)
    assert sweep(store).expired == ["kept"]


def test_sweep_skips_busy_runs_and_drops_stale_tombstones(tmp_path: Path) -> None:
    """A run still being written waits; a tombstone goes once its session folder is gone."""
    clock = FakeClock()
    store = make_store(tmp_path, clock, retention={"days": 1})
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    store.promote_files("r1", ["a.txt"])
    clock.advance(days=2)
    report = sweep(store, busy=lambda run: run == "r1")
    assert report.skipped_busy == ["r1"] and report.expired == []
    sweep(store)
    assert (tmp_path / "artifacts/.tombstones/r1").exists()
    import shutil

    shutil.rmtree(tmp_path / "sessions/r1")
    assert sweep(store).tombstones_dropped == ["r1"]
    assert not (tmp_path / "artifacts/.tombstones/r1").exists()


def test_keep_unknown_run_is_not_found(tmp_path: Path) -> None:
    """keep on a missing run is NotFoundError."""
    with pytest.raises(NotFoundError):
        make_store(tmp_path).set_keep("nope", True)


def test_list_runs_newest_first(tmp_path: Path) -> None:
    """list_runs orders by created_at, newest first."""
    clock = FakeClock()
    store = make_store(tmp_path, clock)
    for run in ("a", "b", "c"):
        write_session_file(tmp_path, run, "f", b"x")
        store.promote_files(run, ["f"])
        clock.advance(seconds=1)
    assert [m.run_id for m in store.list_runs()] == ["c", "b", "a"]


# -- library -------------------------------------------------------------------------------


def test_promote_to_library_names_and_conflicts(tmp_path: Path) -> None:
    """Default base name, --as, no overwrite without asking, overwrite when asked."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "plots/a.png", b"one")
    store.promote_files("r1", ["plots/a.png"])
    added = store.promote_to_library("r1", "plots/a.png")
    assert added.name == "a.png" and (tmp_path / "library/a.png").read_bytes() == b"one"
    with pytest.raises(ConflictError):
        store.promote_to_library("r1", "plots/a.png")
    store.promote_to_library("r1", "plots/a.png", as_name="b.png")
    (tmp_path / "library/a.png").write_bytes(b"changed")
    store.promote_to_library("r1", "plots/a.png", overwrite=True)
    assert (tmp_path / "library/a.png").read_bytes() == b"one"
    assert [f.name for f in store.library.list()] == ["a.png", "b.png"]
    assert not list((tmp_path / "library").glob(".promoter-*"))


def test_promote_to_library_on_another_file_system(tmp_path: Path) -> None:
    """library/ on tmpfs (/dev/shm), artifacts/ on the test's disk: the kernel's copy says
    EXDEV, and the bytes are read and written instead (probe r10-mark F3: it failed)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs /dev/shm on a file system of its own")
    library = Path(tempfile.mkdtemp(dir=shm))
    try:
        store = make_store(tmp_path, storage={"library": str(library)})
        data = os.urandom(3 << 20) + b"tail"
        write_session_file(tmp_path, "r1", "big.bin", data)
        store.promote_files("r1", ["big.bin"])
        added = store.promote_to_library("r1", "big.bin")
        assert (library / "big.bin").read_bytes() == data and added.size_bytes == len(data)
    finally:
        shutil.rmtree(library, ignore_errors=True)


@pytest.mark.parametrize("as_name", ["../escape", ".hidden", "a/b", "x\n"])
def test_promote_to_library_refuses_bad_names(tmp_path: Path, as_name: str) -> None:
    """A refused library name writes nothing."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    with pytest.raises(InvalidNameError):
        store.promote_to_library("r1", "a.txt", as_name=as_name)
    assert list((tmp_path / "library").iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_upload_over_limit_leaves_nothing(tmp_path: Path) -> None:
    """An upload past max bytes is refused whole."""
    import io

    from promoter.errors import TooLargeError

    store = make_store(tmp_path)
    with pytest.raises(TooLargeError):
        store.library.add_stream("big.bin", io.BytesIO(b"x" * 5000), False, 100)
    assert list((tmp_path / "library").iterdir()) == []
    store.library.add_stream("ok.bin", io.BytesIO(b"x" * 50), False, 100)
    assert (tmp_path / "library/ok.bin").read_bytes() == b"x" * 50


def test_open_artifact_never_follows_planted_symlink(tmp_path: Path) -> None:
    """A symlink planted inside the store is not served."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    store.promote_files("r1", ["a.txt"])
    copy = tmp_path / "artifacts/r1/files/a.txt"
    copy.unlink()
    copy.symlink_to("/etc/passwd")
    with pytest.raises(NotFoundError):
        store.open_artifact("r1", "a.txt")


def test_repair_keeps_known_agent_when_session_is_gone(tmp_path: Path) -> None:
    """A relisted copy keeps the agent its entry named, even with no session left."""
    import shutil

    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    (tmp_path / "sessions/r1/attribution.jsonl").write_text(
        '{"filename": "a.txt", "agent_id": "writer"}\n')
    store.promote_files("r1", ["a.txt"])
    shutil.rmtree(tmp_path / "sessions/r1")
    os.utime(tmp_path / "artifacts/r1/files/a.txt", (1, 1))  # copied without -p, say
    prepare_store(store.config)
    [entry] = meta_of(tmp_path, "r1").artifacts
    assert entry.agent_id == "writer" and entry.generated_at.year == 1970


def test_rebuild_salvages_agents_from_a_readable_corrupt_file(tmp_path: Path) -> None:
    """A schema-broken but readable metadata.json still lends its agent ids."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    (tmp_path / "sessions/r1/attribution.jsonl").write_text(
        '{"filename": "a.txt", "agent_id": "writer"}\n')
    store.promote_files("r1", ["a.txt"])
    (tmp_path / "sessions/r1/attribution.jsonl").unlink()
    fresh = make_store(tmp_path)  # no attribution cached
    path = tmp_path / "artifacts/r1/metadata.json"
    doc = json.loads(path.read_text())
    doc["schema_version"] = 99
    path.write_text(json.dumps(doc))
    assert fresh.get_run("r1").artifacts[0].agent_id == "writer"


def test_file_now_is_never_later_than_a_new_file_mtime(tmp_path: Path) -> None:
    """Deletion stamps come from the clock the kernel stamps files with (DESIGN §1)."""
    from promoter.clock import SystemClock

    clock = SystemClock()
    later = 0
    for i in range(200):
        stamp = clock.file_now()
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x")
        later += from_timestamp_ns(path.stat().st_mtime_ns) < stamp
    assert later == 0


def test_file_written_just_after_a_deletion_comes_back(tmp_path: Path) -> None:
    """With the real clock, a file written right after rm is newer than the tombstone."""
    store = Store(make_store(tmp_path).config)  # the system clock
    misses = 0
    for i in range(20):
        run = f"r{i}"
        write_session_file(tmp_path, run, "a.txt", b"old", age_s=5)
        store.promote_files(run, ["a.txt"])
        store.delete_run(run)
        (tmp_path / "sessions" / run / "output" / "new.txt").write_bytes(b"new")
        results = store.promote_files(run, ["a.txt", "new.txt"])
        misses += outcomes(results)["new.txt"] is not Outcome.PROMOTED
    assert misses == 0


@pytest.mark.parametrize("which", ["artifacts", "sessions"])
def test_a_store_folder_that_cannot_be_made_is_named(tmp_path: Path, which: str) -> None:
    """r6 probe 8: a file where the store's or the sessions folder should be fails the start
    with the path in the message (DESIGN §3: what failed and where), not a bare strerror."""
    from promoter.errors import StoreIOError
    from promoter.store import Store
    from tests.store_helpers import make_config

    config = make_config(tmp_path)
    (tmp_path / which).write_text("not a folder")
    with pytest.raises(StoreIOError, match=f"cannot create storage folder .*{which}"):
        Store(config).ensure_folders()


def test_without_checksums_an_entry_has_no_sha256_key(tmp_path: Path) -> None:
    """r6 probe: with `checksum = "none"` the entry leaves `sha256` out (DESIGN §2: absent
    only when checksums are off), not `null`; it reads back, and with checksums it is there."""
    for checksum, present in (("none", False), ("sha256", True)):
        root = tmp_path / checksum
        store = make_store(root, promote={"checksum": checksum})
        write_session_file(root, "r1", "a.txt", b"abc")
        store.promote_files("r1", ["a.txt"])
        raw = json.loads((root / "artifacts" / "r1" / "metadata.json").read_text())
        [entry] = raw["artifacts"]
        assert ("sha256" in entry) is present, entry
        if present:
            assert entry["sha256"] == hashlib.sha256(b"abc").hexdigest()
        assert RunMetadata.model_validate(raw).artifacts[0].size_bytes == 3
