"""The real daemon promoting into a bucket (DESIGN §10): `promoter run` on local sessions with
real inotify, the store in a real SeaweedFS under a prefix, polled with deadlines."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

from daemon_helpers import base_config, start_daemon, wait_until, write
from s3_server import S3Server
from s3_store_helpers import bucket_meta, bucket_names, s3_storage

from promoter.objectstore import ObjectStore
from promoter.s3layout import file_key

pytest_plugins = ("s3_fixtures",)


def test_daemon_promotes_into_the_bucket_under_its_prefix(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        objstore: ObjectStore) -> None:
    """Files written into sessions/ appear as objects under <prefix>files/ with an entry in
    <prefix>meta/<run>.json (sha256 the object's own, host named), then the daemon stops
    cleanly; nothing is written outside the prefix or on the local artifacts folder."""
    root = tmp_path / "root"
    daemon = start_daemon(root, base_config(storage=s3_storage(s3_server, s3_bucket, s3_prefix)))
    try:
        daemon.wait_ready(60)
        write(root / "sessions" / "run-1" / "output" / "a.txt", b"alpha")
        write(root / "sessions" / "run-1" / "output" / "plots" / "b.png", b"\x89PNG beta")
        write(root / "sessions" / "run-2" / "output" / "c.md", b"# gamma")
        wait_until(lambda: bucket_names(objstore, "run-1") == {"a.txt", "plots/b.png"}, 60,
                   what="run-1's two entries in the bucket")
        wait_until(lambda: bucket_names(objstore, "run-2") == {"c.md"}, 60, what="run-2's entry")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    meta = bucket_meta(objstore, "run-1")
    assert meta is not None and meta["host"] == "host-a" and meta["status"] == "active"
    entry = {a["filename"]: a for a in meta["artifacts"]}["plots/b.png"]
    assert entry["sha256"] == hashlib.sha256(b"\x89PNG beta").hexdigest()
    assert entry["path"] == "files/plots/b.png" and entry["content_type"] == "image/png"
    head = objstore.head(file_key(s3_prefix, "run-1", "plots/b.png"))
    assert head.sha256 == entry["sha256"] and head.info.size == 9
    keys = [o.key for page in objstore.list_pages("") for o in page]
    assert keys and all(k.startswith(s3_prefix) for k in keys)
    assert not (root / "artifacts" / "run-1").exists()
    assert any(k.startswith(f"{s3_prefix}audit/") for k in keys)  # the journal, in the bucket


def _cli(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promoter", *argv, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_removals_racing_the_daemons_additions_all_survive(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        objstore: ObjectStore) -> None:
    """While the daemon promotes 20 new files into a run, two shells remove four of its old
    files with `promoter rm` (separate processes, separate clients): at the end every new
    file is listed and every removed one is gone, in `removed`, its object deleted."""
    root = tmp_path / "root"
    storage = s3_storage(s3_server, s3_bucket, s3_prefix)
    out = root / "sessions" / "r1" / "output"
    for i in range(4):
        write(out / f"old{i}.txt", f"old {i}")
    daemon = start_daemon(root, base_config(storage=storage))
    cfg = daemon.cfgfile
    try:
        daemon.wait_ready(60)
        wait_until(lambda: bucket_names(objstore, "r1") == {f"old{i}.txt" for i in range(4)}, 60,
                   what="the old files in the bucket")
        failures: list[str] = []

        def remove(part: int) -> None:
            for i in range(part, 4, 2):
                proc = _cli(cfg, "rm", "r1", f"old{i}.txt")
                if proc.returncode != 0:
                    failures.append(proc.stderr)

        shells = [threading.Thread(target=remove, args=(p,)) for p in (0, 1)]
        for t in shells:
            t.start()
        for i in range(20):
            write(out / f"new{i}.txt", f"new {i}")
            pause = threading.Event()
            pause.wait(0.05)  # the agent's pace: writes spread over the removals
        for t in shells:
            t.join(300)
        assert not failures, failures
        want = {f"new{i}.txt" for i in range(20)}
        wait_until(lambda: bucket_names(objstore, "r1") == want, 90, what="exactly the new files")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    meta = bucket_meta(objstore, "r1")
    assert meta is not None
    assert {r["filename"] for r in meta["removed"]} == {f"old{i}.txt" for i in range(4)}
    listed = {o.key.rsplit("/", 1)[-1] for page in objstore.list_pages("files/r1/")
              for o in page}
    assert listed == want


def test_kill_9_mid_burst_then_restart_lists_every_object(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        objstore: ObjectStore) -> None:
    """The daemon is killed (SIGKILL) while it promotes a burst; restarted, it promotes every
    file, and every object under files/ is named by an entry with its own sha256: objects a
    crash left without an entry are adopted, none is left an orphan."""
    root = tmp_path / "root"
    config = base_config(storage=s3_storage(s3_server, s3_bucket, s3_prefix))
    out = root / "sessions" / "r1" / "output"
    daemon = start_daemon(root, config)
    try:
        daemon.wait_ready(60)
        for i in range(60):
            write(out / f"f{i:02d}.bin", hashlib.sha256(str(i).encode()).digest() * 64)
        wait_until(lambda: len(bucket_names(objstore, "r1")) >= 1, 60, what="a first entry")
        daemon.proc.kill()
        daemon.proc.wait(30)
        assert len(bucket_names(objstore, "r1")) < 60, "the burst was over before the kill"
    finally:
        daemon.close()
    again = start_daemon(root, config)
    try:
        again.wait_ready(60)
        want = {f"f{i:02d}.bin" for i in range(60)}
        wait_until(lambda: bucket_names(objstore, "r1") == want, 90, what="all 60 entries")
        assert again.stop() == 0
    finally:
        again.close()
    meta = bucket_meta(objstore, "r1")
    assert meta is not None
    listed = {o.key[len(f"{s3_prefix}files/r1/"):] for page in objstore.list_pages("files/r1/")
              for o in page}
    assert listed == want
    for entry in meta["artifacts"]:
        head = objstore.head(file_key(s3_prefix, "r1", entry["filename"]))
        assert head.sha256 == entry["sha256"] and head.info.size == entry["size_bytes"]
