"""`promoter serve` over a bucket, in-process, on a real SeaweedFS (DESIGN §7, §10): the run
cache's one listing, the file answers' headers, Range, ETag from the object's own sha256,
304, traversal refused, archives from objects, health, and the event stream's source."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from bucket_helpers import put_object, put_run, run_meta
from s3_helpers import settings_for
from s3_server import S3Server, free_port_pairs

from promoter.changes import RUN_DELETED, RUN_UPDATED, Change
from promoter.objectstore import ObjectStore
from promoter.s3errors import PreconditionFailed, StoreUnavailable
from promoter.s3layout import file_key, meta_key, tombstone_key
from promoter.store import Store
from promoter.web import runcache
from promoter.web.bucket import Bucket, BucketChanges
from promoter.web.files import FILE_CSP
from promoter.web.runcache import RunCache
from tests.s3_store_helpers import s3_config
from tests.web_helpers import WebClient, client_for

pytest_plugins = ("s3_fixtures",)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MAX_META = 16 * 1024 * 1024


def _cache(objects: ObjectStore, ttl_s: float = 0.0) -> RunCache:
    return RunCache(objects, MAX_META, ttl_s=ttl_s)


def _store(root: Path, server: S3Server, bucket: str, prefix: str, **s3: str) -> Store:
    """A Store on the bucket as `promoter serve` opens it (no probe: tests of outages)."""
    extra = {f"PROMOTER_STORAGE__S3__{k.upper()}": f'"{v}"' for k, v in s3.items()}
    return Store(s3_config(root, server, bucket, prefix, **extra))


def _client_on(store: Store, ttl_s: float = 0.0, **kwargs: Any) -> tuple[WebClient, Bucket]:
    objects = store.disk.objects
    bucket = Bucket(store, objects, RunCache(objects, MAX_META, ttl_s=ttl_s))
    return client_for(store, bucket=bucket, **kwargs), bucket


@pytest.fixture
def s3store(tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> Store:
    """A Store on this test's prefix of the bucket (the same as `objstore`'s)."""
    return _store(tmp_path / "root", s3_server, s3_bucket, s3_prefix)


def _client(store: Store) -> tuple[WebClient, Bucket]:
    return _client_on(store)


@pytest.fixture
def served(s3store: Store, objstore: ObjectStore) -> tuple[WebClient, Bucket, ObjectStore]:
    """Two runs in the bucket and a client on an app serving them."""
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    put_run(objstore, "run-a", {"plot.png": PNG, "notes/readme.md": b"# hi\n",
                                "page.html": b"<script>alert(1)</script>"}, created=old)
    put_run(objstore, "run-b", {"data.csv": b"a,b\n1,2\n"})
    client, bucket = _client(s3store)
    return client, bucket, objstore


# -- the run cache -----------------------------------------------------------------------


def test_one_listing_reads_only_changed_runs(objstore: ObjectStore) -> None:
    """A refresh lists meta/ once and GETs only runs that are new or whose ETag changed."""
    for name in ("r1", "r2", "r3"):
        put_run(objstore, name, {"a.txt": name.encode()})
    cache = _cache(objstore)
    assert {m.run_id for m in cache.list_runs()} == {"r1", "r2", "r3"}
    assert (cache.lists, cache.reads) == (1, 3)
    first = cache.read_run("r1")
    assert cache.read_run("r1") is first  # unchanged: the same parsed object
    assert cache.reads == 3
    put_run(objstore, "r2", {"a.txt": b"again", "b.txt": b"more"})
    report = cache.refresh()
    assert [m.run_id for m in report.updated] == ["r2"] and report.deleted == []
    assert cache.reads == 4
    assert cache.read_run("r1") is first
    r2 = cache.read_run("r2")
    assert r2 is not None and len(r2.artifacts) == 2
    objstore.delete_many([meta_key(objstore.prefix, "r3")])
    report = cache.refresh()
    assert report.deleted == ["r3"] and report.updated == []
    assert cache.reads == 4
    assert cache.read_run("r3") is None  # not in the cache: looked for once, not there
    assert cache.reads == 5


def test_listing_is_paginated_and_newest_first(objstore: ObjectStore,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of the listing are followed to the end; runs come newest first."""
    monkeypatch.setattr(runcache, "PAGE_SIZE", 2)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        meta = run_meta(f"p{i}", [], created=base + timedelta(minutes=i))
        objstore.put(meta_key(objstore.prefix, meta.run_id), meta.to_json().encode())
    cache = _cache(objstore)
    assert [m.run_id for m in cache.list_runs()] == ["p4", "p3", "p2", "p1", "p0"]
    assert cache.lists == 1


def test_invalid_metadata_is_left_out_and_not_read_again(objstore: ObjectStore) -> None:
    """Corrupt JSON, another run's metadata and stray keys are skipped, each read once."""
    put_run(objstore, "good", {"a.txt": b"1"})
    objstore.put(meta_key(objstore.prefix, "broken"), b"{not json")
    other = run_meta("elsewhere", [])
    objstore.put(meta_key(objstore.prefix, "liar"), other.to_json().encode())
    objstore.put(objstore.prefix + "meta/not-a-run.txt", b"x")
    objstore.put(objstore.prefix + "meta/..json", b"x")
    cache = _cache(objstore)
    assert [m.run_id for m in cache.list_runs()] == ["good"]
    reads = cache.reads
    assert reads == 3
    cache.refresh()
    assert cache.reads == reads


def test_oversized_metadata_is_left_out(objstore: ObjectStore) -> None:
    """A metadata object over the size limit is not read, and the others still list."""
    put_run(objstore, "small", {"a.txt": b"1"})
    objstore.put(meta_key(objstore.prefix, "huge"), b" " * 5000)
    cache = RunCache(objstore, 4096, ttl_s=0.0)
    assert [m.run_id for m in cache.list_runs()] == ["small"]


def test_ttl_spares_listings_and_invalidate_forces_one(objstore: ObjectStore) -> None:
    """Within the TTL readers share one listing; invalidate makes the next reader list."""
    put_run(objstore, "t1", {"a.txt": b"1"})
    now = [100.0]
    cache = RunCache(objstore, MAX_META, ttl_s=5.0, monotonic=lambda: now[0])
    for _ in range(5):
        cache.list_runs()
        assert cache.cached_run("t1") is not None
    assert cache.lists == 1
    cache.invalidate()
    assert cache.cached_run("t1") is None  # no I/O, and no stale answer
    cache.read_run("t1")
    assert cache.lists == 2


def test_an_old_cache_answers_at_once_and_refreshes_behind(objstore: ObjectStore) -> None:
    """Past the TTL a reader gets the cached runs without waiting; one background listing
    brings the new run for the next reader."""
    put_run(objstore, "s1", {"a.txt": b"1"})
    now = [100.0]
    cache = RunCache(objstore, MAX_META, ttl_s=5.0, monotonic=lambda: now[0])
    assert [m.run_id for m in cache.list_runs()] == ["s1"]
    put_run(objstore, "s2", {"a.txt": b"2"}, created=datetime.now(UTC) + timedelta(hours=1))
    now[0] += 6.0
    assert [m.run_id for m in cache.list_runs()] == ["s1"]  # served from memory
    _poll(lambda: cache.lists == 2)
    _poll(lambda: [m.run_id for m in cache.list_runs()] == ["s2", "s1"])


class _Switch:
    """The real object layer, or another pointed at an endpoint nobody answers on."""

    def __init__(self, up: ObjectStore, down: ObjectStore) -> None:
        self.up, self.down, self.broken = up, down, False
        self.prefix = up.prefix

    def _now(self) -> ObjectStore:
        return self.down if self.broken else self.up

    def list_pages(self, under: str = "", page_size: int = 1000) -> Any:
        return self._now().list_pages(under, page_size)

    def list_fast(self, under: str = "") -> Any:
        return self._now().list_fast(under)

    def get(self, key: str, max_bytes: int = MAX_META) -> tuple[bytes, str]:
        return self._now().get(key, max_bytes)


def _dead(s3_server: S3Server, bucket: str, session: Any, prefix: str) -> ObjectStore:
    port = free_port_pairs(1)[0]
    settings = settings_for(s3_server, bucket, endpoint=f"http://127.0.0.1:{port}",
                            prefix=prefix)
    return ObjectStore(settings, session=session, timeout_s=5)


def test_a_failed_background_refresh_makes_the_next_reader_see_the_outage(
        s3_server: S3Server, s3_bucket: str, s3_session: Any, objstore: ObjectStore) -> None:
    """Stale runs are never served on and on over an outage: after a failed listing the next
    reader lists itself and gets StoreUnavailable; when the bucket is back, runs again."""
    put_run(objstore, "o1", {"a.txt": b"1"})
    switch = _Switch(objstore, _dead(s3_server, s3_bucket, s3_session, objstore.prefix))
    now = [100.0]
    cache = RunCache(switch, MAX_META, ttl_s=1.0, monotonic=lambda: now[0])
    assert len(cache.list_runs()) == 1
    switch.broken = True
    now[0] += 2.0
    assert len(cache.list_runs()) == 1  # the background listing is under way
    _poll(lambda: cache._must_wait)
    with pytest.raises(StoreUnavailable):
        cache.list_runs()
    switch.broken = False
    assert [m.run_id for m in cache.list_runs()] == ["o1"]


def _poll(check: Any, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


# -- the routes --------------------------------------------------------------------------


def test_list_and_run_answers(served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """The seed shape, newest first, the run's metadata, 404 for a missing run, 304 on the tag."""
    client, _, _ = served
    answer = client.get("/runtime/artifacts")
    assert answer.status_code == 200
    body = answer.json()
    assert [a["run_id"] for a in body["artifacts"]] == ["run-b", "run-a"]
    assert {e["filename"] for e in body["artifacts"][1]["metadata"]["artifacts"]} == {
        "plot.png", "notes/readme.md", "page.html"}
    again = client.get("/runtime/artifacts", headers={"if-none-match": answer.headers["etag"]})
    assert again.status_code == 304
    assert client.get("/runtime/artifacts/run-a").json()["run_id"] == "run-a"
    assert client.get("/runtime/artifacts/nope").status_code == 404
    assert client.get("/runtime/artifacts/.hidden").status_code in (400, 404)
    current = client.get("/runtime/artifacts", params={"filter": "current", "run_id": "run-a"})
    assert [a["run_id"] for a in current.json()["artifacts"]] == ["run-a"]
    recent = client.get("/runtime/artifacts", params={"filter": "recent"})
    assert len(recent.json()["artifacts"]) == 2


def test_file_headers_and_etag_is_the_objects_sha256(
        served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """Sandbox CSP, nosniff, type and disposition from the entry, ETag the sha256, not MD5."""
    client, _, _ = served
    answer = client.get("/runtime/artifacts/run-a/files/plot.png")
    assert answer.status_code == 200
    assert answer.content == PNG
    h = answer.headers
    assert h["content-security-policy"] == FILE_CSP
    assert h["x-content-type-options"] == "nosniff"
    assert h["content-type"] == "image/png"
    assert h["content-disposition"].startswith("inline;")
    assert h["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert h["content-length"] == str(len(PNG))
    assert h["accept-ranges"] == "bytes"
    assert h["cache-control"] == "no-cache"
    html = client.get("/runtime/artifacts/run-a/files/page.html")
    assert html.headers["content-disposition"].startswith("attachment;")
    assert html.headers["content-security-policy"] == FILE_CSP
    view = client.get("/runtime/artifacts/run-a/files/page.html?view=1")
    assert view.headers["content-disposition"].startswith("inline;")
    sub = client.get("/runtime/artifacts/run-a/files/notes/readme.md")
    assert sub.content == b"# hi\n"


def test_304_range_416_and_head(served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """If-None-Match gives 304; one Range gives 206 with its bytes; past the end 416; HEAD."""
    client, _, _ = served
    url = "/runtime/artifacts/run-a/files/plot.png"
    tag = f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert client.get(url, headers={"if-none-match": tag}).status_code == 304
    part = client.get(url, headers={"range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == PNG[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(PNG)}"
    suffix = client.get(url, headers={"range": "bytes=-7"})
    assert suffix.status_code == 206 and suffix.content == PNG[-7:]
    tail = client.get(url, headers={"range": f"bytes={len(PNG) - 3}-"})
    assert tail.content == PNG[-3:]
    past = client.get(url, headers={"range": f"bytes={len(PNG)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(PNG)}"
    other = client.get(url, headers={"range": "bytes=0-1", "if-range": '"other"'})
    assert other.status_code == 200 and other.content == PNG
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(PNG))
    assert head.headers["etag"] == tag


@pytest.mark.parametrize("path", [
    "/runtime/artifacts/run-a/files/../run-b/files/data.csv",
    "/runtime/artifacts/run-a/files/%2e%2e/run-b/files/data.csv",
    "/runtime/artifacts/run-a/files/notes/%2e%2e/plot.png",
    "/runtime/artifacts/run-a/files/.%2e/.%2e/meta/run-a.json",
    "/runtime/artifacts/run-a/files//plot.png",
    "/runtime/artifacts/run-a/files/a%5Cb",
    "/runtime/artifacts/..%2fmeta/files/x",
    "/runtime/artifacts/run-a/files/plot.png%00",
])
def test_traversal_and_odd_names_are_refused(served: tuple[WebClient, Bucket, ObjectStore],
                                             path: str) -> None:
    """No path reaches an object outside the run's files, nor one without an entry."""
    client, _, _ = served
    answer = client.get(path)
    assert answer.status_code in (400, 404), (path, answer.status_code)
    assert answer.headers["content-type"] == "application/json"


def test_an_object_without_an_entry_is_not_served(
        served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """Only files the run's metadata lists are served (an orphan waits for adoption)."""
    client, _, objects = served
    put_object(objects, "run-a", "orphan.txt", b"not listed")
    assert client.get("/runtime/artifacts/run-a/files/orphan.txt").status_code == 404


def test_a_missing_object_is_404(served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """An entry whose object is gone (a deletion under way) answers 404, not 500."""
    client, _, objects = served
    objects.delete_many([file_key(objects.prefix, "run-b", "data.csv")])
    answer = client.get("/runtime/artifacts/run-b/files/data.csv")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "No artifact data.csv in run run-b."


def test_a_rewritten_file_is_never_served_with_a_stale_digest(
        served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """The object is replaced before its entry (§10): the answer's ETag is the new bytes'."""
    client, _, objects = served
    new = b"a,b\n3,4\n5,6\n"
    put_object(objects, "run-b", "data.csv", new)  # the entry still says the old digest
    answer = client.get("/runtime/artifacts/run-b/files/data.csv")
    assert answer.content == new
    assert answer.headers["etag"] == f'"{hashlib.sha256(new).hexdigest()}"'
    assert answer.headers["content-length"] == str(len(new))


def test_bytes_are_read_only_from_the_object_the_head_saw(s3store: Store,
                                                          objstore: ObjectStore) -> None:
    """A GET after the HEAD carries If-Match: a replacement between them is a lost race."""
    put_object(objstore, "w1", "f.bin", b"one" * 100)
    body = s3store.disk.read_file("w1", "f.bin")
    assert b"".join(body.chunks(0, 10)) == (b"one" * 100)[:10]
    put_object(objstore, "w1", "f.bin", b"two" * 100)
    with pytest.raises(PreconditionFailed):
        b"".join(body.chunks(0, body.size))


def test_a_large_object_streams_whole_in_chunks(s3store: Store, objstore: ObjectStore) -> None:
    """A 3 MiB object passes through in 256 KiB pieces and arrives whole."""
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)
    put_run(objstore, "big", {"blob.bin": data})
    client, _ = _client(s3store)
    answer = client.get("/runtime/artifacts/big/files/blob.bin")
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(data).hexdigest()
    body = s3store.disk.read_file("big", "blob.bin")
    sizes = [len(c) for c in body.chunks(0, body.size)]
    assert len(sizes) > 4 and max(sizes) <= 1024 * 1024


def test_archive_streams_from_objects(served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """The run's zip holds every listed file's bytes under its name, from the objects."""
    client, _, _ = served
    answer = client.get("/runtime/artifacts/run-a/archive")
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == FILE_CSP
    assert "run-a.zip" in answer.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        assert sorted(zf.namelist()) == ["notes/readme.md", "page.html", "plot.png"]
        assert zf.read("plot.png") == PNG
        assert zf.read("notes/readme.md") == b"# hi\n"
    assert client.get("/runtime/artifacts/nope/archive").status_code == 404


def test_link_names_the_file(served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """A link is made for a listed file and refused (404) for an unlisted one."""
    client, _, _ = served
    headers = {"X-Promoter-Request": "1"}
    made = client.post("/runtime/artifacts/run-a/files/plot.png/link", headers=headers)
    assert made.status_code == 201
    assert client.get(made.json()["url"]).content == PNG
    missing = client.post("/runtime/artifacts/run-a/files/nope.png/link", headers=headers)
    assert missing.status_code == 404


def test_stats_and_metrics_count_the_bucket(
        served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """/runtime/stats and /metrics read the run cache, not the (empty) local folders."""
    client, _, _ = served
    stats = client.get("/runtime/stats").json()
    assert stats["totals"]["runs"] == 2 and stats["totals"]["artifacts"] == 4
    metrics = client.get("/metrics").text
    assert "promoter_store_runs 2.0" in metrics
    assert "promoter_store_artifacts 4.0" in metrics


def test_changes_through_the_server_are_seen_at_once(
        s3store: Store, objstore: ObjectStore) -> None:
    """With a long TTL, a change made by another host waits for it, but invalidate lists."""
    put_run(objstore, "c1", {"a.txt": b"1"})
    client, _ = _client_on(s3store, ttl_s=3600.0, list_ttl_s=3600.0)
    assert len(client.get("/runtime/artifacts").json()["artifacts"]) == 1
    put_run(objstore, "c2", {"a.txt": b"2"})
    assert len(client.get("/runtime/artifacts").json()["artifacts"]) == 1
    client.app.state.web.lister.invalidate()
    assert len(client.get("/runtime/artifacts").json()["artifacts"]) == 2


# -- health and the event stream ---------------------------------------------------------


def test_healthz_is_503_while_the_bucket_is_unreachable(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        s3store: Store) -> None:
    """An endpoint nobody answers on is a 503 with one sentence; the real one is 200."""
    client, _ = _client(s3store)
    assert client.get("/healthz").json() == {"status": "ok"}
    dead = free_port_pairs(1)[0]
    gone = _store(tmp_path / "other", s3_server, s3_bucket, s3_prefix,
                  endpoint=f"http://127.0.0.1:{dead}")
    down, _ = _client(gone)
    answer = down.get("/healthz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "detail": "The bucket is not reachable."}
    assert s3_server.secret_key not in answer.text
    listing = down.get("/runtime/artifacts")
    assert listing.status_code == 503
    assert s3_server.secret_key not in listing.text


def test_bucket_changes_become_events(objstore: ObjectStore) -> None:
    """The source's periodic listing turns a new run into run.updated and a gone one into
    run.deleted; the first fill emits nothing."""
    put_run(objstore, "e1", {"a.txt": b"1"})
    cache = _cache(objstore)
    seen: list[Change] = []

    async def scenario() -> None:
        source = BucketChanges(cache, every_s=0.05)
        task = asyncio.create_task(source.run(seen.append))
        try:
            await _until(lambda: cache.lists >= 1)
            assert seen == []
            await asyncio.to_thread(put_run, objstore, "e2", {"b.txt": b"2"})
            await _until(lambda: any(c.kind == RUN_UPDATED for c in seen))
            await asyncio.to_thread(objstore.delete_many, [meta_key(objstore.prefix, "e1")])
            await _until(lambda: any(c.kind == RUN_DELETED for c in seen))
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert cache.listeners == []

    asyncio.run(scenario())
    updated = [c.data for c in seen if c.kind == RUN_UPDATED]
    assert updated[0]["run_id"] == "e2" and updated[0]["updated_at"].endswith("Z")
    assert [c.data for c in seen if c.kind == RUN_DELETED] == [{"run_id": "e1"}]


async def _until(check: Any, deadline_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not check():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def test_odd_but_legal_names_are_served(s3store: Store, objstore: ObjectStore) -> None:
    """Spaces, percent signs, non-ASCII and deep subfolders round-trip through keys and URLs."""
    names = {"a b%20c.txt": b"1", "résumé/naïve ☃.md": b"2", "d/e/f/g/h.csv": b"3",
             "x+y=z&w.json": b"{}"}
    put_run(objstore, "odd", names)
    client, _ = _client(s3store)
    for name, data in names.items():
        answer = client.get("/runtime/artifacts/odd/files/" + quote(name))
        assert answer.status_code == 200, name
        assert answer.content == data
        assert quote(name.rsplit("/", 1)[-1], safe="!#$&+^`|") in \
            answer.headers["content-disposition"]


def test_concurrent_readers_during_refreshes(s3store: Store, objstore: ObjectStore) -> None:
    """Many readers at once while runs change and listings run behind them: every answer is
    a whole list, and every run written shows in the end."""
    put_run(objstore, "k0", {"a.txt": b"0"})
    cache = RunCache(objstore, MAX_META, ttl_s=0.05)
    bucket = Bucket(s3store, objstore, cache)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                runs = cache.list_runs()
                assert all(m.run_id.startswith("k") for m in runs)
                assert bucket.entry("k0", "a.txt").filename == "a.txt"
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 6):
            put_run(objstore, f"k{i}", {"a.txt": str(i).encode()})
    finally:
        _poll(lambda: len(cache.list_runs()) == 6 or bool(errors))
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert sorted(m.run_id for m in cache.list_runs()) == [f"k{i}" for i in range(6)]


# -- changes through the server ----------------------------------------------------------


def test_delete_keep_and_remove_through_the_server(
        served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """DELETE a run: 204, its tombstone in the bucket, gone from the list at once; PATCH keep
    and DELETE of one file show in the next answers (the cache is invalidated)."""
    client, _, objects = served
    headers = {"X-Promoter-Request": "1"}
    assert client.patch("/runtime/artifacts/run-a", json={"keep": True},
                        headers=headers).json()["keep"] is True
    assert client.get("/runtime/artifacts/run-a").json()["keep"] is True
    listed = client.get("/runtime/artifacts").json()["artifacts"]
    assert {a["run_id"]: a["metadata"]["keep"] for a in listed}["run-a"] is True
    assert client.delete("/runtime/artifacts/run-a/files/page.html",
                         headers=headers).status_code == 204
    assert client.get("/runtime/artifacts/run-a/files/page.html").status_code == 404
    names = {e["filename"] for e in client.get("/runtime/artifacts/run-a").json()["artifacts"]}
    assert names == {"plot.png", "notes/readme.md"}
    assert client.delete("/runtime/artifacts/run-b", headers=headers).status_code == 204
    assert [a["run_id"] for a in client.get("/runtime/artifacts").json()["artifacts"]] == [
        "run-a"]
    assert client.get("/runtime/artifacts/run-b").status_code == 404
    assert client.get("/runtime/artifacts/run-b/files/data.csv").status_code == 404
    raw, _ = objects.get(tombstone_key(objects.prefix, "run-b"))
    assert json.loads(raw)["reason"] == "rm"
    assert client.delete("/runtime/artifacts/run-b", headers=headers).status_code == 404


def test_library_over_the_bucket(served: tuple[WebClient, Bucket, ObjectStore]) -> None:
    """Promote into the library, list it, fetch it with the file headers, its ETag, Range and
    304, upload another, delete it."""
    client, _, _ = served
    headers = {"X-Promoter-Request": "1"}
    made = client.post("/runtime/artifacts/run-a/files/plot.png/promote?as=q3.png",
                       headers=headers)
    assert made.status_code == 201 and made.json()["size_bytes"] == len(PNG)
    assert [f["name"] for f in client.get("/runtime/library").json()["files"]] == ["q3.png"]
    got = client.get("/runtime/library/q3.png")
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-security-policy"] == FILE_CSP
    assert got.headers["x-content-type-options"] == "nosniff"
    tag = got.headers["etag"]
    assert tag.startswith('"lib-')  # the object's sha256 when it carries one
    assert client.get("/runtime/library/q3.png",
                      headers={"if-none-match": tag}).status_code == 304
    part = client.get("/runtime/library/q3.png", headers={"range": "bytes=1-3"})
    assert part.status_code == 206 and part.content == PNG[1:4]
    up = client.post("/runtime/library", headers=headers,
                     files={"file": ("notes.txt", b"hello", "text/plain")})
    assert up.status_code == 201
    assert client.get("/runtime/library/notes.txt").content == b"hello"
    assert client.delete("/runtime/library/notes.txt", headers=headers).status_code == 204
    assert client.get("/runtime/library/notes.txt").status_code == 404
    assert client.get("/runtime/library/..%2fmeta").status_code in (400, 404)


def test_a_run_or_file_newer_than_the_listing_is_found_at_once(
        s3store: Store, objstore: ObjectStore) -> None:
    """With a long TTL, a run made since the listing, and a file added to a listed run, are
    answered at once (one GET of that run's metadata), not 404 for the cache's age."""
    put_run(objstore, "n1", {"a.txt": b"1"})
    client, bucket = _client_on(s3store, ttl_s=3600.0, list_ttl_s=3600.0)
    assert len(client.get("/runtime/artifacts").json()["artifacts"]) == 1
    put_run(objstore, "n2", {"b.txt": b"2"})
    assert client.get("/runtime/artifacts/n2").json()["run_id"] == "n2"
    assert client.get("/runtime/artifacts/n2/files/b.txt").content == b"2"
    put_run(objstore, "n1", {"a.txt": b"1", "c.txt": b"3"})
    assert client.get("/runtime/artifacts/n1/files/c.txt").content == b"3"
    assert client.get("/runtime/artifacts/n3").status_code == 404
    assert bucket.runs.lists == 1
