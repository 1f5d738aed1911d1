"""The store unreachable is a normal condition (DESIGN §10): the real daemon on real inotify,
its bucket on a SeaweedFS of this module's own that the tests stop and start again, so the
session's shared server is never disturbed. Polled with deadlines, never fixed sleeps."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, base_config, start_daemon, wait_until, write
from s3_helpers import admin_client, aws_env, settings_for
from s3_proxy import S3Proxy
from s3_server import S3Server, running_server
from s3_store_helpers import bucket_names, s3_config, s3_storage, s3_store

from promoter import s3backend
from promoter.objectstore import ObjectStore
from promoter.s3errors import StoreUnavailable
from promoter.s3layout import meta_key
from promoter.startup import prepare_store
from promoter.sweep import sweep

pytest_plugins = ("s3_fixtures",)

BUCKET = "promoter-outage"
SIZE = 4096


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS for this module alone: its tests stop it and start it again."""
    with running_server(tmp_path_factory.mktemp("seaweedfs-outage")) as server:
        admin_client(server).create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def server(own_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The module's server, running, with the AWS environment pointing at it."""
    if own_server.process is None:
        own_server.start()
    aws_env(monkeypatch, own_server)
    return own_server


def _names(objects: ObjectStore, run_id: str) -> set[str]:
    """A run's entries; none while the server is down."""
    try:
        return bucket_names(objects, run_id)
    except StoreUnavailable:
        return set()


def _metric(path: Path, name: str) -> float | None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _pings(daemon: Daemon, after: int = 0) -> int:
    daemon.notify._drain()
    return sum(1 for m in daemon.notify.messages[after:] if "WATCHDOG=1" in m.splitlines())


def _status_says(daemon: Daemon, text: str) -> bool:
    daemon.notify._drain()
    return any(line.startswith("STATUS=") and "store unavailable" in line and text in line
               for m in daemon.notify.messages for line in m.splitlines())


def _start(tmp_path: Path, server: S3Server, prefix: str) -> tuple[Daemon, Path]:
    metrics = tmp_path / "promoter.prom"
    config = base_config(storage=s3_storage(server, BUCKET, prefix),
                         metrics={"textfile": str(metrics), "interval_s": 0.2})
    # a ping every 0.1 s: the outage tests count pings, and the count, not the time, is the point
    return start_daemon(tmp_path / "root", config, env={"WATCHDOG_USEC": "200000"}), metrics


def test_the_store_stopped_under_a_burst_loses_nothing(tmp_path: Path, server: S3Server) -> None:
    """The server stopped under a burst: the daemon lives and pings its watchdog, parks the
    files (metrics and STATUS= say how many and how many bytes), says store.unavailable once,
    then, the server back, store.available once with the backlog, and every file is in the
    bucket; files removed meanwhile are each logged artifact.lost."""
    objects = ObjectStore(settings_for(server, BUCKET, prefix="burst/"))
    daemon, metrics = _start(tmp_path, server, "burst/")
    sessions = daemon.sessions
    try:
        daemon.wait_ready(60)
        write(sessions / "r1" / "output" / "before.txt", b"before")
        wait_until(lambda: _names(objects, "r1") == {"before.txt"}, 60, what="the first file")
        server.stop()
        want: dict[str, set[str]] = {"r1": {"before.txt"}, "r2": set(), "r3": set()}
        for i in range(20):
            for run_id in ("r1", "r2", "r3"):
                write(sessions / run_id / "output" / f"f{i:02d}.bin", bytes([i]) * SIZE)
                want[run_id].add(f"f{i:02d}.bin")
        write(sessions / "r1" / "output" / "doomed.txt", b"removed during the outage")
        write(sessions / "r4" / "output" / "x.txt", b"session removed")
        write(sessions / "r4" / "output" / "y.txt", b"session removed too")
        waiting_bytes = 60 * SIZE + 25 + 15 + 19
        daemon.wait_log("store.unavailable", 60)
        wait_until(lambda: _metric(metrics, "promoter_store_waiting_files") == 63, 60,
                   what="63 files waiting in the metrics")
        assert _metric(metrics, "promoter_store_waiting_bytes") == waiting_bytes
        assert _metric(metrics, "promoter_store_available") == 0
        daemon.notify.wait_for("STATUS=", 30)
        wait_until(lambda: _status_says(daemon, "63 files (240.1 KiB) waiting"), 30,
                   what="STATUS= naming the files waiting")
        (sessions / "r1" / "output" / "doomed.txt").unlink()
        shutil.rmtree(sessions / "r4")
        mark = len(daemon.notify.messages)
        # the outage lasts until the watchdog was pinged 12 more times (every 0.1 s)
        wait_until(lambda: _pings(daemon, mark) >= 12, 60, interval=0.2,
                   what="watchdog pings during the outage")
        assert daemon.proc.poll() is None
        assert _names(objects, "r2") == set()  # nothing got through meanwhile
        server.start()
        for run_id, names in want.items():
            wait_until(lambda r=run_id, n=names: _names(objects, r) == n, 120,  # type: ignore[misc]
                       what=f"every file of {run_id} in the bucket")
        back = daemon.wait_log("store.available", 30)
        assert back["files"] == 63 and back["size_bytes"] == waiting_bytes
        assert back["lost"] == 3 and back["runs"] == 4
        wait_until(lambda: _metric(metrics, "promoter_store_waiting_files") == 0, 30,
                   what="nothing waiting in the metrics")
        assert _metric(metrics, "promoter_store_available") == 1
        assert daemon.stop() == 0
    finally:
        daemon.close()
        if server.process is None:
            server.start()
    assert len(daemon.events("store.unavailable")) == 1
    assert len(daemon.events("store.available")) == 1
    lost = {(e["run_id"], e["filename"]) for e in daemon.events("artifact.lost")}
    assert lost == {("r1", "doomed.txt"), ("r4", "x.txt"), ("r4", "y.txt")}
    meta = json.loads(objects.get(meta_key("burst/", "r2"))[0])
    digests = {a["filename"]: a["sha256"] for a in meta["artifacts"]}
    assert digests["f07.bin"] == hashlib.sha256(bytes([7]) * SIZE).hexdigest()


def test_stopped_in_an_outage_then_started_while_it_lasts_delivers_everything(
        tmp_path: Path, server: S3Server) -> None:
    """SIGTERM during an outage: exit 0 and one line saying what waits. A daemon started while
    the server is still down is READY anyway (a store down at boot must not leave the host
    without its daemon), says store.unavailable, keeps what is written; once the server
    answers (a reload asks for a probe at once) it prepares the store, runs its start-up
    catch-up and delivers all of it."""
    objects = ObjectStore(settings_for(server, BUCKET, prefix="boot/"))
    first, metrics = _start(tmp_path, server, "boot/")
    sessions = first.sessions
    try:
        first.wait_ready(60)
        server.stop()
        for i in range(3):
            write(sessions / "r1" / "output" / f"w{i}.txt", f"waiting {i}".encode())
        wait_until(lambda: _metric(metrics, "promoter_store_waiting_files") == 3, 60,
                   what="three files waiting")
        assert first.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        first.close()
    left = first.events("store.backlog_deferred")
    assert len(left) == 1 and left[0]["files"] == 3
    metrics.unlink()
    daemon, metrics = _start(tmp_path, server, "boot/")  # the server still down
    try:
        daemon.wait_ready(90)
        daemon.wait_log("store.unavailable", 30)
        for i in range(5):
            write(sessions / "r2" / "output" / f"late{i}.txt", f"late {i}".encode())
        wait_until(lambda: _metric(metrics, "promoter_store_waiting_files") == 5, 60,
                   what="the files written meanwhile waiting")
        mark = len(daemon.notify.messages)
        wait_until(lambda: _pings(daemon, mark) >= 4, 30, interval=0.2,
                   what="watchdog pings while waiting")
        server.start()
        daemon.send(signal.SIGHUP)  # a reload probes at once, not at the backoff's next turn
        wait_until(lambda: _names(objects, "r1") == {f"w{i}.txt" for i in range(3)}, 120,
                   what="the files the first daemon left")
        wait_until(lambda: _names(objects, "r2") == {f"late{i}.txt" for i in range(5)}, 120,
                   what="the files written during the outage")
        assert daemon.wait_log("store.available", 30)["files"] == 5
        daemon.wait_log("reconcile.finished", 30, trigger="startup")
        assert daemon.stop() == 0
    finally:
        daemon.close()
        if server.process is None:
            server.start()
    assert len(daemon.events("store.unavailable")) == 1
    assert len(daemon.events("store.available")) == 1
    assert not daemon.events("daemon.failed")


def test_stopped_server_is_an_outage_then_recovers(server: S3Server, s3_session: Any) -> None:
    """A stopped server is StoreUnavailable, not a configuration error; restarted, all is back."""
    # (the object layer's own outage, on this module's server: one start of SeaweedFS fewer)
    prefix = "objects/"
    store = ObjectStore(settings_for(server, BUCKET, prefix=prefix), session=s3_session)
    etag = store.put_if(meta_key(prefix, "r"), b"{}", etag=None)
    try:
        server.stop()
        started = time.monotonic()
        for call in (lambda: store.get(meta_key(prefix, "r")), store.probe,
                     lambda: store.put_if(meta_key(prefix, "r"), b"[]", etag=etag)):
            with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1") as info:
                call()
            assert server.secret_key not in str(info.value)
        assert time.monotonic() - started < 15, "an outage must be reported, not waited out"
        server.start()

        def back() -> tuple[bytes, str] | None:
            # the S3 port answers before the volume server is back: retried, as the daemon will
            try:
                return store.get(meta_key(prefix, "r"))
            except StoreUnavailable:
                return None
        assert wait_until(back, 60, interval=0.2, what="the store to come back") == (b"{}", etag)
    finally:
        if server.process is None:
            server.start()


def test_stale_multipart_uploads_are_aborted_at_start_and_by_the_sweeper(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash's multipart uploads under the prefix: a start-up (`promoter run`'s preparation)
    and a sweep abort those older than an hour, and leave a younger one (an upload running)."""
    client = admin_client(s3_server)

    def upload(name: str) -> None:
        client.create_multipart_upload(Bucket=s3_bucket, Key=f"{s3_prefix}files/r1/{name}")

    def open_uploads() -> set[str]:
        found = client.list_multipart_uploads(Bucket=s3_bucket, Prefix=s3_prefix)
        return {u["Key"].rsplit("/", 1)[-1] for u in found.get("Uploads", [])}

    upload("young.bin")
    store = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix)  # as `promoter run` starts
    sweep(store)
    assert open_uploads() == {"young.bin"}  # younger than an hour: maybe an upload running
    monkeypatch.setattr(s3backend, "STALE_UPLOAD", dt.timedelta(0))  # now every one is stale
    sweep(store)
    assert open_uploads() == set()
    upload("crashed.bin")
    prepare_store(s3_config(tmp_path, s3_server, s3_bucket, s3_prefix))
    assert open_uploads() == set()


def test_a_store_refusing_writes_with_503_is_down_until_it_takes_them(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        objstore: ObjectStore) -> None:
    """Throttling (503 SlowDown) on every write while reads still pass, through a proxy in
    front of the real server: the copies fail, and so do the probe's conditional writes, so
    the store is down (said once) and the files wait; once writes pass, all are delivered."""
    with S3Proxy(s3_server.s3_port) as proxy:
        storage = s3_storage(s3_server, s3_bucket, s3_prefix)
        storage["s3"]["endpoint"] = proxy.endpoint
        metrics = tmp_path / "promoter.prom"
        daemon = start_daemon(tmp_path / "root", base_config(
            storage=storage, metrics={"textfile": str(metrics), "interval_s": 0.2}))
        try:
            daemon.wait_ready(60)
            write(daemon.sessions / "r1" / "output" / "first.txt", b"through")
            wait_until(lambda: _names(objstore, "r1") == {"first.txt"}, 60, what="first.txt")
            proxy.mode = "writes"
            for i in range(10):
                write(daemon.sessions / "r1" / "output" / f"t{i}.txt", f"throttled {i}".encode())
            assert "SlowDown" in daemon.wait_log("store.unavailable", 60)["reason"]
            wait_until(lambda: _metric(metrics, "promoter_store_waiting_files") == 10, 60,
                       what="ten files waiting")
            assert _names(objstore, "r1") == {"first.txt"}  # reads passed, nothing written
            proxy.mode = "pass"
            want = {"first.txt"} | {f"t{i}.txt" for i in range(10)}
            wait_until(lambda: _names(objstore, "r1") == want, 120, what="every file")
            assert daemon.wait_log("store.available", 30)["files"] == 10
            assert daemon.stop() == 0
        finally:
            daemon.close()
    assert proxy.refused > 0
    assert len(daemon.events("store.unavailable")) == 1
    assert len(daemon.events("store.available")) == 1
