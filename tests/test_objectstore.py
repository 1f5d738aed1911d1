"""The object layer against a real SeaweedFS on loopback (DESIGN §10): no mock of S3."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from s3_helpers import admin_client, aws_env, settings_for
from s3_server import S3Server

from promoter import objectstore, stopcopy
from promoter.objectstore import EntryFields, ObjectStore
from promoter.s3errors import (
    ObjectNotFound,
    ObjectRefused,
    PreconditionFailed,
    S3ConfigError,
    SourceChanged,
    StoreUnavailable,
)
from promoter.s3layout import file_key, meta_key

pytest_plugins = ("s3_fixtures",)

FIELDS = EntryFields(
    filename="plots/ü a.png", agent_id="viz agent/1", generated_at="2026-11-30T04:00:00.123456Z"
)


def _write(path: Path, size: int) -> str:
    """Write `size` pseudo-random bytes; return their sha256."""
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        left, i = size, 0
        while left:
            chunk = (block[i % 7:] + block[: i % 7])[: min(left, len(block))]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            i += 1
    return digest.hexdigest()


def test_seaweedfs_honours_conditional_writes(s3_server: S3Server, s3_bucket: str) -> None:
    """SeaweedFS answers 412 to If-None-Match: * on an existing key and to a stale If-Match."""
    from botocore.exceptions import ClientError

    client = admin_client(s3_server)
    first = client.put_object(Bucket=s3_bucket, Key="k", Body=b"1", IfNoneMatch="*")
    for kwargs in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123"'}):
        with pytest.raises(ClientError) as info:
            client.put_object(Bucket=s3_bucket, Key="k", Body=b"2", **kwargs)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"3", IfMatch=first["ETag"])
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"3"


def test_probe_passes_and_leaves_nothing(objstore: ObjectStore) -> None:
    """The start-up probe accepts SeaweedFS and removes its probe key afterwards."""
    objstore.probe()
    assert [info for page in objstore.list_pages("") for info in page] == []


def test_create_race_one_winner(objstore: ObjectStore) -> None:
    """Two writers create one run: one wins; the loser gets PreconditionFailed, re-reads."""
    key = meta_key(objstore.prefix, "run-1")
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def writer(name: str) -> None:
        barrier.wait()
        try:
            outcome[name] = objstore.put_if(key, json.dumps([name]).encode(), etag=None)
        except PreconditionFailed as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=writer, args=(n,), name=f"w-{n}") for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    losers = [n for n, v in outcome.items() if isinstance(v, PreconditionFailed)]
    assert len(losers) == 1
    data, etag = objstore.get(key)
    objstore.put_if(key, json.dumps([*json.loads(data), losers[0]]).encode(), etag=etag)
    assert sorted(json.loads(objstore.get(key)[0])) == ["a", "b"]


def test_no_lost_update_under_contention(objstore: ObjectStore) -> None:
    """Four writers append five items each (read, conditional write, retry): all twenty survive."""
    key = meta_key(objstore.prefix, "busy")
    objstore.put_if(key, b"[]", etag=None)
    lost: list[int] = []

    def writer(w: int) -> None:
        for i in range(5):
            while True:
                data, etag = objstore.get(key)
                try:
                    objstore.put_if(key, json.dumps([*json.loads(data), f"{w}-{i}"]).encode(),
                                    etag=etag)
                    break
                except PreconditionFailed:
                    lost.append(w)

    threads = [threading.Thread(target=writer, args=(w,), name=f"app-{w}") for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    items = json.loads(objstore.get(key)[0])
    assert sorted(items) == sorted(f"{w}-{i}" for w in range(4) for i in range(5))
    assert lost, "the writers never raced: the test proved nothing"


def test_multipart_200_mib_with_sha256_and_fields(objstore: ObjectStore, tmp_path: Path) -> None:
    """A 200 MiB file goes up through multipart with its own sha256 and entry fields as metadata."""
    path = tmp_path / "big.bin"
    size = 200 * 1024 * 1024
    expected = _write(path, size)
    key = file_key(objstore.prefix, "run-big", "data/big.bin")
    fd = os.open(path, os.O_RDONLY)
    try:
        stored = objstore.put_file(key, fd, size, FIELDS)
    finally:
        os.close(fd)
    assert (stored.sha256, stored.size) == (expected, size)
    head = objstore.head(key)
    assert head.sha256 == expected and head.fields == FIELDS
    assert head.info.size == size and head.info.etag == stored.etag
    assert "-" in stored.etag, "a multipart ETag ends in -<parts>: this was one PUT"
    with path.open("rb") as f:
        f.seek(150 * 1024 * 1024 + 3)
        want = f.read(5 * 1024 * 1024)
    start = 150 * 1024 * 1024 + 3
    got = b"".join(objstore.stream(key, start, start + len(want)))
    assert got == want


def test_small_file_is_one_put_with_metadata(objstore: ObjectStore, tmp_path: Path) -> None:
    """A file under the threshold is one PUT whose metadata carries its sha256 and fields."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello world\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        stored = objstore.put_file(file_key(objstore.prefix, "r", "a.txt"), fd, 12, FIELDS)
    finally:
        os.close(fd)
    head = objstore.head(file_key(objstore.prefix, "r", "a.txt"))
    assert head.sha256 == hashlib.sha256(b"hello world\n").hexdigest() == stored.sha256
    assert head.fields == FIELDS and "-" not in stored.etag


def test_changed_source_aborts_the_upload(objstore: ObjectStore, tmp_path: Path) -> None:
    """Bytes that differ from the hashing pass abort the multipart upload: no object, no upload."""
    path = tmp_path / "f.bin"
    size = 12 * 1024 * 1024
    _write(path, size)
    key = file_key(objstore.prefix, "r", "f.bin")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SourceChanged):
            objstore._put_multipart(key, fd, size, "0" * 64, FIELDS)
    finally:
        os.close(fd)
    with pytest.raises(ObjectNotFound):
        objstore.head(key)
    client = admin_client_for(objstore)
    uploads = client.list_multipart_uploads(Bucket=objstore.settings.bucket).get("Uploads", [])
    assert uploads == []


def test_an_upload_gives_way_to_a_stop_old_enough(objstore: ObjectStore, tmp_path: Path) -> None:
    """The stop began GIVE_UP_S ago (stopcopy.py): the upload is given up at its first read,
    nothing stored."""
    path = tmp_path / "f.bin"
    _write(path, 3 * 1024 * 1024)
    key = file_key(objstore.prefix, "r", "f.bin")
    fd = os.open(path, os.O_RDONLY)
    stopcopy.watch(lambda: time.monotonic() - stopcopy.GIVE_UP_S)
    try:
        with pytest.raises(stopcopy.GivenUp):
            objstore.put_file(key, fd, 3 * 1024 * 1024, FIELDS)
    finally:
        stopcopy.watch(None)
        os.close(fd)
    with pytest.raises(ObjectNotFound):
        objstore.head(key)


def test_a_multipart_upload_given_up_midway_is_aborted(
        objstore: ObjectStore, tmp_path: Path) -> None:
    """Given up after its first part was read: GivenUp (not "changed"), no object, and no
    multipart upload left in the bucket."""
    path = tmp_path / "f.bin"
    size = 12 * 1024 * 1024
    _write(path, size)
    key = file_key(objstore.prefix, "r", "f.bin")
    reads: list[int] = []

    def look() -> None:
        reads.append(1)
        if len(reads) > 6:  # past the first part's reads (5 MiB parts, 1 MiB reads)
            raise stopcopy.GivenUp("still copying 5.0 s into the stop")

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(stopcopy.GivenUp):
            objstore._put_multipart(key, fd, size, hashlib.sha256(path.read_bytes())
                                    .hexdigest(), FIELDS, look)
    finally:
        os.close(fd)
    assert len(reads) == 7
    with pytest.raises(ObjectNotFound):
        objstore.head(key)
    client = admin_client_for(objstore)
    uploads = client.list_multipart_uploads(Bucket=objstore.settings.bucket).get("Uploads", [])
    assert uploads == []


def test_shrunk_file_is_refused(objstore: ObjectStore, tmp_path: Path) -> None:
    """A file shorter than the size it was announced with is refused, not stored short."""
    path = tmp_path / "s.bin"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SourceChanged):
            objstore.put_file(file_key(objstore.prefix, "r", "s.bin"), fd, 10, FIELDS)
    finally:
        os.close(fd)


def admin_client_for(store: ObjectStore) -> object:
    """The store's own boto3 client (list/abort of uploads are boto3 calls)."""
    return store._boto


def test_ranged_streaming_reads(objstore: ObjectStore) -> None:
    """Ranges stream the exact bytes, in several chunks when asked for small ones."""
    data = bytes(range(256)) * 1024
    key = file_key(objstore.prefix, "r", "range.bin")
    objstore.put(key, data)
    assert b"".join(objstore.stream(key)) == data
    assert b"".join(objstore.stream(key, 1000, 1010)) == data[1000:1010]
    assert b"".join(objstore.stream(key, 200_000)) == data[200_000:]
    chunks = list(objstore.stream(key, 0, None, chunk=16 * 1024))
    assert len(chunks) > 1 and b"".join(chunks) == data
    with pytest.raises(ObjectNotFound):
        next(iter(objstore.stream(file_key(objstore.prefix, "r", "missing"))))


def test_listing_with_prefix_and_pages(
    objstore: ObjectStore, s3_server: S3Server, s3_session: Any
) -> None:
    """Listing sees only its prefix, in pages of the size asked, each key with its ETag."""
    pre = objstore.prefix
    keys = [meta_key(pre, f"run-{i:02d}") for i in range(25)]
    etags = {k: objstore.put(k, b"{}") for k in keys}
    sibling = pre[:-1] + "-other/"
    other = ObjectStore(settings_for(s3_server, objstore.settings.bucket, prefix=sibling),
                        session=s3_session)
    other.put(meta_key(sibling, "run-x"), b"{}")
    objstore.put(f"{pre}tombstones/run-00", b"{}")
    pages = list(objstore.list_pages("meta/", page_size=10))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert {i.key: i.etag for p in pages for i in p} == etags
    assert sum(len(p) for p in objstore.list_pages()) == 26


def test_batched_delete(objstore: ObjectStore) -> None:
    """Deleting in batches removes every key; missing keys are no error."""
    keys = [file_key(objstore.prefix, "r", f"d/{i}.txt") for i in range(20)]
    for k in keys:
        objstore.put(k, b"x")
    missing = file_key(objstore.prefix, "r", "never")
    assert objstore.delete_many([*keys, missing], batch_size=7) == 21
    assert sum(len(p) for p in objstore.list_pages()) == 0


def test_stale_multipart_uploads_aborted(objstore: ObjectStore, s3_server: S3Server) -> None:
    """Uploads under the prefix older than the age are aborted; newer ones and others stay."""
    client = admin_client(s3_server)
    bucket = objstore.settings.bucket
    pre, elsewhere = objstore.prefix, objstore.prefix[:-1] + "-elsewhere/c.bin"
    for key in (f"{pre}files/r/a.bin", f"{pre}files/r/b.bin", elsewhere):
        client.create_multipart_upload(Bucket=bucket, Key=key)
    assert objstore.abort_stale_uploads(dt.timedelta(hours=1)) == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    aborted = objstore.abort_stale_uploads(dt.timedelta(hours=1), now=later)
    assert sorted(aborted) == [f"{pre}files/r/a.bin", f"{pre}files/r/b.bin"]
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=pre[:-1])
    assert [u["Key"] for u in uploads.get("Uploads", [])] == [elsewhere]


def test_unicode_and_subfolder_keys(objstore: ObjectStore) -> None:
    """Unicode names and subfolders are stored and listed under exactly the key built for them."""
    names = ["plots/ü ñ.png", "日本語/データ.csv", "a/b/c/d.txt", "odd #?%41+&=.txt", "emoji 🎉.md"]
    for name in names:
        objstore.put(file_key(objstore.prefix, "run-u", name), name.encode())
    listed = sorted(i.key for p in objstore.list_pages("files/run-u/") for i in p)
    assert listed == sorted(file_key(objstore.prefix, "run-u", n) for n in names)
    for name in names:
        assert objstore.get(file_key(objstore.prefix, "run-u", name))[0] == name.encode()


def test_seaweedfs_folds_backslash_into_slash(objstore: ObjectStore) -> None:
    """Why the layout refuses '\\' in keys: SeaweedFS stores 'a\\b' as 'a/b', merging two names."""
    client = admin_client_for(objstore)
    client.put_object(Bucket=objstore.settings.bucket, Key=f"{objstore.prefix}x\\y", Body=b"1")  # type: ignore[attr-defined]
    keys = [i.key for p in objstore.list_pages() for i in p]
    assert keys == [f"{objstore.prefix}x/y"]


def test_missing_bucket_is_configuration_error(
    s3_server: S3Server, s3_bucket: str, s3_session: Any
) -> None:
    """The probe names a missing bucket as a configuration error and does not create it."""
    store = ObjectStore(settings_for(s3_server, "no-such-bucket-here"), session=s3_session)
    with pytest.raises(S3ConfigError, match="no such bucket 'no-such-bucket-here'"):
        store.probe()
    with pytest.raises(S3ConfigError):
        store.get("meta/x.json")
    names = [b["Name"] for b in admin_client(s3_server).list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in names


@pytest.mark.parametrize("which", ["secret", "key"])
def test_bad_credentials_are_configuration_errors(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """A wrong secret or an unknown key is a configuration error whose message has no credential."""
    secret = "wrong-secret-XYZ"
    aws_env(monkeypatch, s3_server, secret=secret if which == "secret" else None)
    if which == "key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN123")
    store = ObjectStore(settings_for(s3_server, s3_bucket))
    for call in (store.probe, lambda: store.get("meta/x.json"),
                 lambda: store.put_if("meta/x.json", b"{}", etag=None),
                 lambda: list(store.list_pages())):
        with pytest.raises(S3ConfigError, match="credentials refused") as info:
            call()
        text = str(info.value)
        for token in (secret, s3_server.secret_key, s3_server.access_key, "AKIDUNKNOWN123"):
            assert token not in text


def test_no_credentials_is_configuration_error(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials anywhere is a configuration error, found before any request."""
    aws_env(monkeypatch, s3_server)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3ConfigError, match="no AWS credentials"):
        ObjectStore(settings_for(s3_server, "any-bucket"))


def test_object_layer_imports_without_the_extra() -> None:
    """Importing the S3 modules loads neither obstore nor boto3 (a local install lacks them)."""
    code = ("import sys, promoter.objectstore, promoter.s3layout, promoter.s3errors;"
            "print([m for m in ('obstore', 'boto3', 'botocore') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_refused_requests_are_not_outages(objstore: ObjectStore) -> None:
    """A key or range the store refuses for good is ObjectRefused, never an outage to wait out."""
    with pytest.raises(ObjectRefused, match="KeyTooLongError"):
        objstore.put(objstore.prefix + "k" * 300, b"x")  # SeaweedFS: a name is at most 255 bytes
    key = file_key(objstore.prefix, "r", "ten")
    objstore.put(key, b"0123456789")
    with pytest.raises(ObjectRefused, match="InvalidRange"):
        b"".join(objstore.stream(key, 20, 30))
    assert b"".join(objstore.stream(key, 5, 50)) == b"56789"
    with pytest.raises(ObjectRefused, match="not metadata"):
        objstore.get(key, max_bytes=5)
    for start, end in ((5, 5), (5, 2), (-1, 3)):
        with pytest.raises(ValueError, match="bad byte range"):
            list(objstore.stream(key, start, end))


def test_oversized_fields_left_out_of_user_metadata(objstore: ObjectStore, tmp_path: Path) -> None:
    """Fields over S3's 2 KB of user metadata are left out; head falls back to key and unknown."""
    path = tmp_path / "z"
    path.write_bytes(b"z")
    long = EntryFields(filename="ü" * 120 + "/" + "é" * 120, agent_id="a" * 3000,
                       generated_at="2026-11-30T04:00:00Z")
    key = file_key(objstore.prefix, "r", long.filename)
    fd = os.open(path, os.O_RDONLY)
    try:
        objstore.put_file(key, fd, 1, long)
    finally:
        os.close(fd)
    head = objstore.head(key)
    assert head.fields == EntryFields(filename=long.filename, agent_id="unknown",
                                      generated_at=long.generated_at)
    assert head.sha256 == hashlib.sha256(b"z").hexdigest()


def test_etag_that_no_header_can_carry_is_refused(objstore: ObjectStore) -> None:
    """An ETag with a line break never reaches the client (obstore would panic on it)."""
    with pytest.raises(ValueError, match="ETag"):
        objstore.put_if(meta_key(objstore.prefix, "r"), b"{}", etag='"a"\r\nX-Evil: 1')


def test_credential_with_a_newline_is_configuration_error(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential a header cannot carry is a one-line configuration error, not a panic."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID\nINJECTED")
    store = ObjectStore(settings_for(s3_server, s3_bucket))
    with pytest.raises(S3ConfigError) as info:
        store.get(meta_key("", "r"))
    assert "INJECTED" not in str(info.value)


def test_silent_endpoint_is_an_outage_after_the_timeout(
    s3_server: S3Server, s3_bucket: str, s3_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections and never answers is an outage after the timeout."""
    # the probe's own read timeout, 8 s in service (two tries: 16 s), at 1 s here: what is
    # proven is that the probe has a bound of its own, not how long the bound is
    monkeypatch.setattr(objectstore, "PROBE_READ_S", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the kernel; nothing ever answers
        port = silent.getsockname()[1]
        settings = settings_for(s3_server, s3_bucket, endpoint=f"http://127.0.0.1:{port}")
        store = ObjectStore(settings, session=s3_session, timeout_s=1.0)
        started = time.monotonic()
        for call in (lambda: store.get(meta_key("", "r")), store.probe):
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
                call()
        assert time.monotonic() - started < 15
