"""A real `promoter serve` process over a real SeaweedFS bucket (DESIGN §7, §10): the routes
end to end with their headers, Range, ETag and 304, traversal refused, the zip, a deletion's
tombstone that a reconcile respects, an unreachable bucket (503), a missing one (exit 2)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
from s3_server import S3Server, free_port_pairs

from promoter.objectstore import ObjectStore
from promoter.s3errors import ObjectNotFound
from promoter.s3layout import meta_key, tombstone_key
from promoter.web.files import FILE_CSP
from tests.s3_store_helpers import s3_store, s3_toml
from tests.test_web_server import start, stop, wait_healthy
from tests.web_helpers import CSRF, populate

pytest_plugins = ("s3_fixtures",)

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)


def _config(tmp_path: Path, server: S3Server, bucket: str, prefix: str, **s3: str) -> Path:
    text = s3_toml(server, bucket, prefix, root=str(tmp_path / "root"))
    for key, value in s3.items():
        text = text.replace(f"{key} = ", f"# {key} = ", 1) + f'{key} = "{value}"\n'
    config = tmp_path / "config.toml"
    config.write_text(text)
    return config


def _gone(objects: ObjectStore, key: str) -> bool:
    try:
        objects.get(key)
    except ObjectNotFound:
        return True
    return False


def test_serve_over_the_bucket(tmp_path: Path, s3_server: S3Server, s3_bucket: str,
                               s3_prefix: str, objstore: ObjectStore) -> None:
    """Promoted by the store into the bucket, served by `promoter serve`: the list, the file
    answers' headers, Range, 304, HEAD, traversal refused, the zip; then DELETE writes the
    tombstone and a reconcile over the same sessions does not bring the run back."""
    root = tmp_path / "root"
    store = s3_store(root, s3_server, s3_bucket, s3_prefix)
    populate(store, root, "run-1", {"plots/a.png": PNG, "report.html": b"<h1>r</h1>"})
    populate(store, root, "run-2", {"t.csv": b"a,b\n1,2\n"})
    server, lines = start(_config(tmp_path, s3_server, s3_bucket, s3_prefix))
    try:
        wait_healthy(server, timeout=60)
        with httpx.Client(base_url=server.url, headers={"Host": "localhost"},
                          timeout=60) as client:
            listed = client.get("/runtime/artifacts").json()["artifacts"]
            assert sorted(a["run_id"] for a in listed) == ["run-1", "run-2"]
            url = "/runtime/artifacts/run-1/files/plots/a.png"
            got = client.get(url)
            assert got.status_code == 200 and got.content == PNG
            tag = f'"{hashlib.sha256(PNG).hexdigest()}"'
            assert got.headers["etag"] == tag
            assert got.headers["content-security-policy"] == FILE_CSP
            assert got.headers["x-content-type-options"] == "nosniff"
            assert got.headers["content-type"] == "image/png"
            assert client.get(url, headers={"if-none-match": tag}).status_code == 304
            part = client.get(url, headers={"range": "bytes=100000-100009"})
            assert part.status_code == 206 and part.content == PNG[100000:100010]
            assert part.headers["content-range"] == f"bytes 100000-100009/{len(PNG)}"
            head = client.head(url)
            assert head.content == b"" and head.headers["content-length"] == str(len(PNG))
            html = client.get("/runtime/artifacts/run-1/files/report.html")
            assert html.headers["content-disposition"].startswith("attachment;")
            for bad in ("/runtime/artifacts/run-1/files/%2e%2e/run-2/files/t.csv",
                        "/runtime/artifacts/run-1/files/plots/%2e%2e/%2e%2e/run-2/meta",
                        "/runtime/artifacts/%2e%2e/files/t.csv"):
                assert client.get(bad).status_code in (400, 404), bad
            with zipfile.ZipFile(io.BytesIO(
                    client.get("/runtime/artifacts/run-1/archive").content)) as zf:
                assert zf.read("plots/a.png") == PNG
            assert client.delete("/runtime/artifacts/run-1", headers=CSRF).status_code == 204
            assert [a["run_id"] for a in client.get("/runtime/artifacts").json()[
                "artifacts"]] == ["run-2"]
            assert client.get(url).status_code == 404
        assert not _gone(objstore, tombstone_key(s3_prefix, "run-1"))
        assert _gone(objstore, meta_key(s3_prefix, "run-1"))
        assert stop(server, lines) == 0
    finally:
        server.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
    done = subprocess.run([sys.executable, "-m", "promoter", "reconcile", "--config",
                           str(tmp_path / "config.toml")], env=env, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _gone(objstore, meta_key(s3_prefix, "run-1"))  # deleted stays deleted
    assert not _gone(objstore, meta_key(s3_prefix, "run-2"))


def test_serve_starts_on_an_unreachable_bucket_and_says_503(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    """A bucket nobody answers for is an outage, not a configuration error: the server
    starts, logs store.unavailable, and /healthz answers 503 (no credential in any line)."""
    dead = f"http://127.0.0.1:{free_port_pairs(1)[0]}"
    config = _config(tmp_path, s3_server, s3_bucket, s3_prefix, endpoint=dead)
    server, lines = start(config)
    try:
        with httpx.Client(base_url=server.url, headers={"Host": "localhost"},
                          timeout=60) as client:
            health = client.get("/healthz")
            assert health.status_code == 503
            assert health.json()["status"] == "unavailable"
            assert client.get("/runtime/artifacts").status_code == 503
        assert stop(server, lines) == 0
    finally:
        server.close()
    assert any(e["event"] == "store.unavailable" for e in server.lines)
    assert not any(s3_server.secret_key in str(e) for e in server.lines)


def test_serve_on_a_missing_bucket_exits_2(tmp_path: Path, s3_server: S3Server,
                                           s3_bucket: str, s3_prefix: str) -> None:
    """A bucket that does not exist is a configuration error: exit 2, one line naming it."""
    config = tmp_path / "config.toml"
    config.write_text(s3_toml(s3_server, "no-such-bucket-here", s3_prefix,
                              root=str(tmp_path / "root")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "promoter", "serve", "--config", str(config),
                           "--listen", "127.0.0.1:0"], env=env, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert b"no-such-bucket-here" in done.stderr
    assert b"Traceback" not in done.stderr
    assert time.monotonic() - started < 60
