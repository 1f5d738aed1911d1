"""A run as one zip: `GET .../archive` and `promoter export` (DESIGN §7, issue 14)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from promoter.archive import iter_zip
from promoter.cli import main
from promoter.metadata import ArtifactEntry, RunMetadata
from tests.daemon_helpers import wait_until
from tests.page_helpers import free_port, promoter_argv, running, wait_healthy
from tests.web_helpers import LogCapture, client_for, make_store, populate

FILES = {
    "report.html": b"<html><body>hi</body></html>" * 50,
    "plots/fig 1.png": b"\x89PNG\r\n\x1a\n" + bytes(3000),
    "plots/deep/data.csv": b"a,b\n1,2\n" * 400,
    "résumé/naïve-日本.txt": "unicode ✓\n".encode() * 20,
    "empty.txt": b"",
}
# Past 4 GiB a size needs ZIP64 in every reader (the point of the big test): 1 MiB over it
# proves that as 5 GiB did, for four fifths of the bytes to stream and check.
BIG = (4 << 30) + (1 << 20)
# sha256 of BIG zero bytes (hashlib over them; a fixed value)
ZERO_BIG_SHA256 = "829816e339ff597ec3ada4c30fc840d3f2298444169d242952a54bcf3fcd7747"
ZEROS = bytes(1 << 22)


def _check_zip(data_or_path: bytes | Path, meta: RunMetadata,
               zeros: str | None = None) -> zipfile.ZipFile:
    """Python's zipfile opens it, names are the entries', every member's sha256 is its entry's.
    The member named `zeros`, whose entry is the digest of size_bytes zero bytes, is checked
    as exactly that many zero bytes: the same proof without hashing gigabytes."""
    zf = zipfile.ZipFile(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes)
                         else data_or_path)
    assert sorted(zf.namelist()) == sorted(a.filename for a in meta.artifacts)
    for entry in meta.artifacts:
        digest = hashlib.sha256()
        size = 0
        with zf.open(entry.filename) as member:  # (zipfile checks each member's CRC-32 too)
            while chunk := member.read(len(ZEROS)):
                if entry.filename == zeros:
                    assert chunk == ZEROS[:len(chunk)], entry.filename
                    size += len(chunk)
                else:
                    digest.update(chunk)
        if entry.filename == zeros:
            assert size == entry.size_bytes and entry.sha256 == ZERO_BIG_SHA256, entry.filename
        else:
            assert digest.hexdigest() == entry.sha256, entry.filename
    return zf


def _unzip_t(path: Path) -> None:
    unzip = shutil.which("unzip")
    assert unzip is not None, "unzip is needed (.ci/run installs it)"
    proc = subprocess.run([unzip, "-t", str(path)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-2000:]
    assert b"No errors detected" in proc.stdout


def test_archive_route_names_digests_and_compression(tmp_path: Path) -> None:
    """The zip holds every file under its filename (subfolders, unicode), digests match, PNG is
    stored and text deflated, and `unzip -t` passes."""
    store = make_store(tmp_path)
    meta = populate(store, tmp_path, "r1", FILES)
    answer = client_for(store).get("/runtime/artifacts/r1/archive")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"] == \
        "attachment; filename=\"r1.zip\"; filename*=UTF-8''r1.zip"
    assert answer.headers["x-content-type-options"] == "nosniff"
    zf = _check_zip(answer.content, meta)
    kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds["plots/fig 1.png"] == zipfile.ZIP_STORED
    assert kinds["plots/deep/data.csv"] == zipfile.ZIP_DEFLATED
    assert kinds["report.html"] == zipfile.ZIP_DEFLATED
    assert all(i.flag_bits & 0x800 for i in zf.infolist() if not i.filename.isascii())
    path = tmp_path / "r1.zip"
    path.write_bytes(answer.content)
    _unzip_t(path)


def test_archive_missing_and_bad_run(tmp_path: Path) -> None:
    """A run that does not exist is 404, an invalid run id 400 or 404, as JSON."""
    store = make_store(tmp_path)
    client = client_for(store)
    assert client.get("/runtime/artifacts/nope/archive").status_code == 404
    bad = client.get("/runtime/artifacts/..%2Fx/archive")
    assert bad.status_code in (400, 404) and "detail" in bad.json()


def test_a_file_shrinking_mid_archive_breaks_the_download_with_one_log_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored file truncated in place while its archive streams: the download is cut off
    (never a short zip that looks whole) and the log says why in one warning, no traceback."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"big.bin": os.urandom(3 << 20)})
    stored = tmp_path / "artifacts" / "r1" / "files" / "big.bin"
    real_pread = os.pread

    def pread_after_truncation(fd: int, size: int, offset: int) -> bytes:
        if offset > 0 and stored.stat().st_size > 1000:
            os.truncate(stored, 1000)  # someone shortens the stored copy mid-stream
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread_after_truncation)
    app = client_for(store).app
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/runtime/artifacts/r1/archive", "raw_path": b"/runtime/artifacts/r1/archive",
             "query_string": b"", "root_path": "", "headers": [(b"host", b"localhost")],
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8730)}
    with LogCapture() as logs:
        anyio.run(app, scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies and all(m.get("more_body") for m in bodies)  # never finished: a cut download
    assert not logs.events("http.error")
    [broken] = logs.events("http.stream_broken")
    assert broken["reason"] == "big.bin shrank while being archived"


def test_archive_of_an_empty_run_is_a_valid_empty_zip(tmp_path: Path) -> None:
    """A run whose files were all removed gives an empty but valid zip."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    store.delete_artifact("r1", "a.txt")
    answer = client_for(store).get("/runtime/artifacts/r1/archive")
    assert answer.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(answer.content)).namelist() == []


def test_export_to_file_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`promoter export RUN -o FILE` writes the same zip the route serves; `-o -` to stdout;
    a missing run is exit 1 with nothing written."""
    store = make_store(tmp_path)
    meta = populate(store, tmp_path, "r1", FILES)
    out = tmp_path / "out.zip"
    assert main(["export", "r1", "-o", str(out), "--root", str(tmp_path)]) == 0
    _check_zip(out, meta)
    capsys.readouterr()
    assert main(["export", "nope", "-o", str(tmp_path / "n.zip"), "--root", str(tmp_path)]) == 1
    assert "no run nope" in capsys.readouterr().err
    assert not (tmp_path / "n.zip").exists()
    proc = subprocess.run([sys.executable, "-m", "promoter", "export", "r1", "-o", "-",
                           "--root", str(tmp_path)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    _check_zip(proc.stdout, meta)


def _sparse_run(root: Path) -> RunMetadata:
    """A run holding a sparse file over 4 GiB, a unicode name and a subfolder, written as the
    store keeps it (the big copy is made with truncate, never written)."""
    folder = root / "artifacts" / "big"
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    stamp = int(now.timestamp()) * 1_000_000_000
    entries = []
    for name, size, digest in [
        ("sparse/zeros.gz", BIG, ZERO_BIG_SHA256),
        ("ünïcode ✓.txt", 6, hashlib.sha256(b"hello\n").hexdigest()),
    ]:
        target = folder / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as fh:
            if size == BIG:
                fh.truncate(size)
            else:
                fh.write(b"hello\n")
        os.utime(target, ns=(stamp, stamp))
        entries.append(ArtifactEntry(filename=name, path=f"files/{name}", generated_at=now,
                                     size_bytes=size, sha256=digest))
    meta = RunMetadata(run_id="big", created_at=now, updated_at=now,
                       expires_at=now + timedelta(days=7), status="completed", artifacts=entries)
    (folder / "metadata.json").write_text(meta.to_json())
    (root / "sessions").mkdir(exist_ok=True)
    (root / "library").mkdir(exist_ok=True)
    return meta


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _download_sparse(url: str, out: Path) -> int:
    """GET `url` into `out`, its zero pieces left as holes (the big download costs no disk
    writes); the status. http.client reads the body straight into one buffer: the download
    took 11.5 s where httpx, parsing it piece by piece, took 34 s (same machine, loaded)."""
    buf = bytearray(len(ZEROS))
    view = memoryview(buf)
    with urllib.request.urlopen(url, timeout=120) as answer, out.open("wb") as fh:  # noqa: S310
        while size := answer.readinto(view):
            if (buf.count(0) == size) if size == len(buf) else view[:size] == ZEROS[:size]:
                fh.seek(size, os.SEEK_CUR)
            else:
                fh.write(view[:size])
        fh.truncate()
        status: int = answer.status
    return status


@pytest.fixture
def holes(tmp_path: Path) -> Iterator[Path]:
    """A folder for the 4 GiB sparse files: on tmpfs (/dev/shm) where there is one, else in
    tmp_path. A hole read from tmpfs is the shared zero page; from ext4 every 4 KiB of it is
    a page cache page filled with zeros: 8 of unzip's 30 CPU-seconds (measured), and 4 GiB
    of other programs' cache evicted, for each of the three readers."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        folder = Path(tempfile.mkdtemp(prefix="promoter-zip64-", dir=shm))
        try:
            yield folder
        finally:
            shutil.rmtree(folder)  # a shallow tree
    else:
        yield tmp_path


# The big member is a .gz (stored, as already-compressed types are): deflating 4 GiB
# would cost the suite a minute and prove nothing the small deflated members do not.
@pytest.mark.timeout(600)
def test_archive_5gib_sparse_zip64_bounded_rss(tmp_path: Path, holes: Path) -> None:
    """A file over 4 GiB streams as ZIP64 through the real server, whose RSS does not grow with it;
    unzip -t and zipfile accept the result and its digests match the entries'."""
    root = holes / "root"
    meta = _sparse_run(root)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    argv = promoter_argv("serve", "--root", str(root), "--listen", f"127.0.0.1:{port}")
    with running(argv, log) as proc:
        wait_healthy(base, proc, log, timeout=60)
        httpx.get(f"{base}/runtime/artifacts", timeout=30)  # warm: imports, first answers
        before = _rss_kib(proc.pid)
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, _rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, name="rss-sampler")
        sampler.start()
        out = holes / "big.zip"
        try:
            assert _download_sparse(f"{base}/runtime/artifacts/big/archive", out) == 200
        finally:
            done.set()
            sampler.join(5)
    growth_mib = (peak - before) / 1024
    (tmp_path / "rss.json").write_text(json.dumps({"before_kib": before, "peak_kib": peak}))
    print(f"serve RSS before {before} KiB, peak {peak} KiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 48, f"RSS grew by {growth_mib:.1f} MiB while streaming 4 GiB"
    unzip = shutil.which("unzip")
    assert unzip is not None, "unzip is needed (.ci/run installs it)"
    # unzip -t on the other core while zipfile checks the members: each reads 4 GiB
    with subprocess.Popen([unzip, "-t", str(out)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as tester:
        zf = _check_zip(out, meta, zeros="sparse/zeros.gz")
        info = zf.getinfo("sparse/zeros.gz")
        assert info.file_size == BIG and info.compress_type == zipfile.ZIP_STORED
        report, _ = tester.communicate(timeout=300)
    assert tester.returncode == 0 and b"No errors detected" in report, report[-2000:]


def _open_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def test_a_download_abandoned_midway_closes_its_file_at_once(tmp_path: Path) -> None:
    """A client that leaves during a 4 GiB archive stops the work and leaves no descriptor
    open on the stored file (DESIGN §7: no request leaves a descriptor open)."""
    root = tmp_path / "root"
    _sparse_run(root)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    config = tmp_path / "debug.toml"  # successful reads are logged at debug (DESIGN §7)
    config.write_text('[log]\nlevel = "debug"\n')
    argv = promoter_argv("serve", "--root", str(root), "--listen", f"127.0.0.1:{port}",
                         "--config", str(config))
    with running(argv, log) as proc:
        wait_healthy(base, proc, log, timeout=60)
        for _ in range(2):
            with httpx.stream("GET", f"{base}/runtime/artifacts/big/archive", timeout=30) as r:
                assert r.status_code == 200
                next(r.iter_raw())
        wait_until(lambda: not [p for p in _open_files(proc.pid) if p.endswith("zeros.gz")],
                   timeout=15, what="the stored file to be closed")
        done = wait_until(lambda: log.read_text().count('"route": "/runtime/artifacts/'
                                                        '{run_id}/archive"') >= 2,
                          timeout=15, what="both requests to end")
        assert done


def test_times_outside_the_zip_range_are_clamped(tmp_path: Path) -> None:
    """A file dated 1970 or 2200 (agents set mtimes at will) is archived with the nearest
    time the zip format can hold, never a broken archive."""
    store = make_store(tmp_path)
    for name, year in (("old.txt", 1970), ("future.txt", 2200)):
        path = tmp_path / "sessions/r1/output" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        stamp = datetime(year, 6, 1, tzinfo=UTC).timestamp()
        os.utime(path, (stamp, stamp))
    store.promote_files("r1", ["old.txt", "future.txt"])
    meta = store.get_run("r1")
    assert len(meta.artifacts) == 2
    zf = _check_zip(b"".join(iter_zip(store, "r1")), meta)
    assert zf.getinfo("old.txt").date_time == (1980, 1, 1, 0, 0, 0)
    assert zf.getinfo("future.txt").date_time == (2107, 12, 31, 23, 59, 58)


def test_export_never_writes_into_the_store(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`-o` onto an artifact, a run's metadata.json or into library/ is refused (exit 1),
    even through a symlink: an export must not overwrite what it exports."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", FILES)
    run = tmp_path / "artifacts" / "r1"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "link").symlink_to(run)
    for target in (run / "metadata.json", run / "new.zip", tmp_path / "link" / "x.zip",
                   tmp_path / "library" / "r1.zip", *before):
        assert main(["export", "r1", "-o", str(target), "--root", str(tmp_path)]) == 1
        assert "inside the store" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert list((tmp_path / "library").iterdir()) == []
