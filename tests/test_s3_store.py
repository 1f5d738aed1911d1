"""The Store over a real SeaweedFS bucket (DESIGN §10): the same rules as on folders, no lost
update between writers, §10's deletion order, adoption of orphans, digests never stale."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server
from s3_store_helpers import s3_store
from store_helpers import FakeClock, make_store, write_session_file

from promoter import backend as backend_mod
from promoter.errors import NotFoundError
from promoter.objectstore import EntryFields, ObjectStore
from promoter.reconcile import reconcile
from promoter.s3layout import file_key, meta_key, tombstone_key
from promoter.store import Outcome, Store
from promoter.sweep import sweep

pytest_plugins = ("s3_fixtures",)


@pytest.fixture
def store(tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> Store:
    """A Store on the bucket under this test's prefix, sessions under tmp_path."""
    return s3_store(tmp_path, s3_server, s3_bucket, s3_prefix,
                    PROMOTER_STORAGE__HOST_ID='"host-a"')


def _keys(objstore: ObjectStore, under: str = "") -> list[str]:
    return sorted(o.key[len(objstore.prefix):] for page in objstore.list_pages(under)
                  for o in page)


def test_promotion_lands_under_the_prefix_with_metadata_and_host(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """Promoted files are objects under <prefix>files/<run>/ and one metadata object names
    them, with the host; an unchanged file is not sent again."""
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    write_session_file(tmp_path, "r1", "sub/b.csv", b"x,y\n")
    results = store.promote_files("r1", ["a.txt", "sub/b.csv"])
    assert [r.outcome for r in results] == [Outcome.PROMOTED, Outcome.PROMOTED]
    assert _keys(objstore, "files/") == ["files/r1/a.txt", "files/r1/sub/b.csv"]
    raw, _ = objstore.get(meta_key(objstore.prefix, "r1"))
    meta = json.loads(raw)
    assert meta["host"] == "host-a" and [a["path"] for a in meta["artifacts"]] == [
        "files/a.txt", "files/sub/b.csv"]
    again = store.promote_files("r1", ["a.txt"])
    assert again[0].outcome is Outcome.UNCHANGED
    assert [m.run_id for m in store.list_runs()] == ["r1"]


def test_same_metadata_as_on_folders(tmp_path: Path, s3_server: S3Server, s3_bucket: str,
                                     s3_prefix: str) -> None:
    """The same session promoted into folders and into the bucket at the same clock gives the
    same metadata, field for field (the rules are the core's, not rewritten for S3)."""
    clock = FakeClock()
    for name, data in (("a.txt", b"alpha"), ("plots/p.png", b"png"), ("r.md", b"# r")):
        write_session_file(tmp_path / "s", "r1", name, data)
    local = make_store(tmp_path / "s", clock=clock, storage={"host_id": "h"})
    bucket = s3_store(tmp_path / "s", s3_server, s3_bucket, s3_prefix, clock=clock,
                      PROMOTER_STORAGE__HOST_ID='"h"')
    for st in (local, bucket):
        st.promote_files("r1", ["a.txt", "plots/p.png", "r.md"])
        st.set_keep("r1", True)
        st.delete_artifact("r1", "r.md")
    assert local.get_run("r1").model_dump(mode="json") == \
        bucket.get_run("r1").model_dump(mode="json")


def test_concurrent_removals_racing_additions_lose_nothing(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    """Writers on separate clients (as separate hosts): one adds 24 files in batches while two
    remove 12 others one by one from the same run; every addition and removal survives."""
    for i in range(12):
        write_session_file(tmp_path, "r1", f"old{i}.txt", f"old {i}".encode())
    first = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix)
    first.promote_files("r1", [f"old{i}.txt" for i in range(12)])
    for i in range(24):
        write_session_file(tmp_path, "r1", f"new{i}.txt", f"new {i}".encode())
    stores = [s3_store(tmp_path, s3_server, s3_bucket, s3_prefix) for _ in range(3)]
    races: list[int] = []
    original = backend_mod.LostRace.__init__

    def counted(self: Any, *args: Any) -> None:
        races.append(1)
        original(self, *args)

    errors: list[BaseException] = []

    def guard(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)
        return run

    def add() -> None:
        for b in range(0, 24, 3):
            stores[0].promote_files("r1", [f"new{i}.txt" for i in range(b, b + 3)])

    def remove(part: int) -> None:
        for i in range(part, 12, 2):
            stores[1 + part].delete_artifact("r1", f"old{i}.txt")

    backend_mod.LostRace.__init__ = counted  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=guard(add)),
                   threading.Thread(target=guard(lambda: remove(0))),
                   threading.Thread(target=guard(lambda: remove(1)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        backend_mod.LostRace.__init__ = original  # type: ignore[method-assign]
    assert not errors, errors
    meta = first.get_run("r1")
    assert {a.filename for a in meta.artifacts} == {f"new{i}.txt" for i in range(24)}
    assert {r.filename for r in meta.removed} == {f"old{i}.txt" for i in range(12)}
    assert races, "the writers never raced: the test proved nothing"


def test_deleted_run_stays_deleted_across_a_reconcile(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """rm writes a tombstone naming the host, removes the objects and the metadata; a catch-up
    over the still-present session does not bring the run back; a file written after does."""
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    store.promote_files("r1", ["a.txt"])
    report = store.delete_run("r1")
    assert (report.files, report.size_bytes) == (1, 5)
    assert _keys(objstore, "files/") == [] and _keys(objstore, "meta/") == []
    tomb, _ = objstore.get(tombstone_key(objstore.prefix, "r1"))
    assert json.loads(tomb)["host"] == "host-a"
    summary = reconcile(store).summary()
    assert summary["promoted"] == 0 and store.read_run("r1") is None
    write_session_file(tmp_path, "r1", "late.txt", b"late", age_s=-1)
    reconcile(store)
    assert [a.filename for a in store.get_run("r1").artifacts] == ["late.txt"]


def test_a_keep_racing_a_deletion_wins_and_the_tombstone_goes(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    """The sweeper reads an expired run; before its `deleting` mark another host keeps the run:
    the mark loses its race, the re-read sees `keep`, the run stays with its objects and the
    sweeper's tombstone is taken back (DESIGN §10)."""
    clock = FakeClock()
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    sweeper = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix, clock=clock)
    sweeper.promote_files("r1", ["a.txt"])
    clock.advance(days=8)
    other = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix)
    write_tombstone = sweeper.disk.write_tombstone

    def then_keep(handle: Any, run_id: str, data: bytes) -> None:
        write_tombstone(handle, run_id, data)
        if not other.get_run(run_id).keep:
            other.set_keep(run_id, True)

    sweeper.disk.write_tombstone = then_keep  # type: ignore[method-assign]
    report = sweep(sweeper)
    assert report.expired == []
    meta = other.get_run("r1")
    assert meta.keep and [a.filename for a in meta.artifacts] == ["a.txt"]
    assert other.read_tombstone("r1") is None


def test_a_deletion_cut_short_is_finished_by_the_next_sweep(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """A crash after the `deleting` mark (objects still there): readers no longer see the run,
    and the next sweep deletes its objects and metadata."""
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    store.promote_files("r1", ["a.txt"])

    def crash(handle: Any, run_id: str) -> None:
        raise RuntimeError("killed")

    store.disk.trash_run = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        store.delete_run("r1")
    del store.disk.trash_run
    assert json.loads(objstore.get(meta_key(objstore.prefix, "r1"))[0])["status"] == "deleting"
    assert store.read_run("r1") is None and store.list_runs() == []
    with pytest.raises(NotFoundError):
        store.set_keep("r1", True)
    sweep(store)
    assert _keys(objstore, "files/") == [] and _keys(objstore, "meta/") == []


def test_rewritten_file_never_shows_a_stale_digest(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """A rewrite replaces object then entry; an object replaced behind the entry's back (a
    crash between the two) is read with its own sha256, and a repair relists it."""
    path = write_session_file(tmp_path, "r1", "a.txt", b"version 1")
    store.promote_files("r1", ["a.txt"])
    path.write_bytes(b"version 2")
    os.utime(path, (path.stat().st_mtime + 5,) * 2)
    store.promote_files("r1", ["a.txt"])
    read, entry = store.read_artifact("r1", "a.txt")
    with read:
        assert read.sha256 == entry.sha256 == hashlib.sha256(b"version 2").hexdigest()
        assert b"".join(read.chunks()) == b"version 2"
    src = tmp_path / "v3"
    src.write_bytes(b"version 3")
    fd = os.open(src, os.O_RDONLY)
    try:  # the object replaced, its entry never written (a crash)
        objstore.put_file(file_key(objstore.prefix, "r1", "a.txt"), fd, 9,
                          EntryFields("a.txt", "agent-x", "2026-11-30T07:00:00Z"))
    finally:
        os.close(fd)
    read, entry = store.read_artifact("r1", "a.txt")
    with read:
        assert read.sha256 == hashlib.sha256(b"version 3").hexdigest() != entry.sha256
        assert b"".join(read.chunks()) == b"version 3"
    assert store.repair("r1")
    assert store.get_run("r1").artifacts[0].sha256 == hashlib.sha256(b"version 3").hexdigest()


def test_orphans_adopted_and_corrupt_metadata_rebuilt(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """Objects whose metadata was never written make a run again, entries from their own
    fields; corrupt metadata is set aside under .promoter/ and rebuilt."""
    src = tmp_path / "o"
    src.write_bytes(b"orphan")
    fd = os.open(src, os.O_RDONLY)
    try:
        objstore.put_file(file_key(objstore.prefix, "r9", "o.txt"), fd, 6,
                          EntryFields("o.txt", "maker", "2026-11-30T06:00:00Z"))
    finally:
        os.close(fd)
    meta = store.get_run("r9")
    [entry] = meta.artifacts
    assert (entry.agent_id, entry.size_bytes) == ("maker", 6)
    assert entry.sha256 == hashlib.sha256(b"orphan").hexdigest()
    objstore.put(meta_key(objstore.prefix, "r9"), b"{not json")
    assert [a.filename for a in store.get_run("r9").artifacts] == ["o.txt"]
    assert any(k.startswith(".promoter/corrupt/r9.json") for k in _keys(objstore, ".promoter/"))


def test_a_200_mib_file_goes_up_in_parts_with_its_sha256(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """Above multipart_threshold_bytes a file is a multipart upload; entry and object carry
    the sha256 of its bytes, computed while it was read."""
    path = tmp_path / "sessions" / "big" / "output" / "big.bin"
    path.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        for i in range(200):
            piece = block[i:] + block[:i]
            digest.update(piece)
            fh.write(piece)
    os.utime(path, (path.stat().st_mtime - 10,) * 2)
    [result] = store.promote_files("big", ["big.bin"])
    assert result.outcome is Outcome.PROMOTED, result.reason
    assert result.entry is not None and result.entry.sha256 == digest.hexdigest()
    head = objstore.head(file_key(objstore.prefix, "big", "big.bin"))
    assert head.sha256 == digest.hexdigest() and head.info.size == 200 << 20
    assert head.info.etag.strip('"').rsplit("-", 1)[-1].isdigit()  # a multipart ETag


def test_library_and_audit_journal_live_in_the_bucket(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """promote copies into <prefix>library/, refuses to overwrite unless asked; the audit
    journal is one object a batch under <prefix>audit/<day>/ and reads back in order."""
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    store.promote_files("r1", ["a.txt"])
    added = store.promote_to_library("r1", "a.txt")
    assert added.name == "a.txt" and added.size_bytes == 5
    assert [f.name for f in store.library.list()] == ["a.txt"]
    with pytest.raises(Exception, match="exists"):
        store.promote_to_library("r1", "a.txt")
    store.promote_to_library("r1", "a.txt", overwrite=True)
    read, item = store.library.read("a.txt")
    assert b"".join(read.chunks()) == b"alpha" and item.size_bytes == 5
    store.delete_library_file("a.txt")
    assert store.library.list() == []
    events = [e["event"] for e in store.read_journal(None, None)]
    assert events == ["artifact.promoted", "library.promoted", "library.promoted",
                      "library.deleted"]
    assert all(k.startswith("audit/") and k.endswith(".jsonl") for k in _keys(objstore, "audit/"))
    assert all(e["host"] == "host-a" for e in store.read_journal(None, "r1"))


def test_an_upload_that_raced_a_deletion_never_brings_it_back(
        tmp_path: Path, store: Store, objstore: ObjectStore) -> None:
    """An object stored around a run's deletion without an entry (a promotion that lost to
    the deletion) is neither rebuilt into the deleted run nor adopted when a later file
    starts the run afresh: the repair deletes it."""
    write_session_file(tmp_path, "r1", "a.txt", b"alpha")
    store.promote_files("r1", ["a.txt"])
    store.delete_run("r1")
    src = tmp_path / "raced"
    src.write_bytes(b"raced")
    fd = os.open(src, os.O_RDONLY)
    try:
        objstore.put_file(file_key(objstore.prefix, "r1", "raced.txt"), fd, 5,
                          EntryFields("raced.txt", "agent", "2026-11-30T06:00:00Z"))
    finally:
        os.close(fd)
    assert store.read_run("r1") is None  # not rebuilt from it: the run is tombstoned
    write_session_file(tmp_path, "r1", "late.txt", b"late", age_s=-1)
    reconcile(store)
    store.repair("r1")
    assert [a.filename for a in store.get_run("r1").artifacts] == ["late.txt"]
    assert _keys(objstore, "files/") == ["files/r1/late.txt"]


def test_a_batch_that_could_pass_max_run_bytes_is_judged_file_by_file(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    """Files of a batch go up in parallel only when all of them fit the run's limit; else
    each is judged after the ones before it, as on folders."""
    store = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix,
                     PROMOTER_PROMOTE__MAX_RUN_BYTES="10")
    for name in ("a", "b", "c"):
        write_session_file(tmp_path, "r1", name, b"1234")
    outcomes = [r.outcome for r in store.promote_files("r1", ["a", "b", "c"])]
    assert outcomes == [Outcome.PROMOTED, Outcome.PROMOTED, Outcome.REJECTED]
    assert _keys(objstore_of(store), "files/") == ["files/r1/a", "files/r1/b"]


def objstore_of(store: Store) -> ObjectStore:
    from promoter.s3backend import S3Backend

    assert isinstance(store.disk, S3Backend)
    return store.disk.objects


def test_the_upload_budget_bounds_bytes_in_flight() -> None:
    """ByteBudget lets uploads through while their bytes fit and makes the next wait."""
    from promoter.s3backend import ByteBudget

    budget = ByteBudget(10)
    entered = threading.Event()
    with budget.take(6):
        def second() -> None:
            with budget.take(6):
                entered.set()

        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(0.2) and budget.free == 4
    t.join(10)
    assert entered.is_set() and budget.free == 10
    with budget.take(50):  # larger than the whole budget: takes all of it, alone
        assert budget.free == 0
