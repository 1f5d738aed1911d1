"""Many hosts, one bucket (DESIGN §10): real `promoter run` daemons on separate session roots,
a CLI and a `promoter serve` on a third, all on the shared SeaweedFS under one prefix; and two
hosts' sweepers at once. No change may be lost, no run kept a moment ago deleted."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_helpers import base_config, start_daemon, wait_until, write
from s3_server import S3Server
from s3_store_helpers import bucket_meta, bucket_names, s3_storage, s3_store, s3_toml

from promoter.errors import NotFoundError
from promoter.objectstore import ObjectStore
from promoter.s3layout import tombstone_key
from promoter.sweep import sweep
from tests.store_helpers import FakeClock, write_session_file

pytest_plugins = ("s3_fixtures",)

HEADERS = {"Host": "localhost", "X-Promoter-Request": "1"}


def _cli(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promoter", *argv, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, check=False)


class Serve:
    """`promoter serve` on an ephemeral port; its port read from its http.listening line."""

    def __init__(self, cfg: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "promoter", "serve", "--config",
                                      str(cfg), "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()
        self.port = 0
        while not self.port:
            raw = self.lines.get(timeout=60)
            if raw is None:
                raise AssertionError("promoter serve ended before listening")
            event = json.loads(raw)
            if event["event"] == "http.listening":
                self.port = event["port"]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self.lines.put(line)
        self.lines.put(None)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=HEADERS,
                            timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._pump.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def hosts(tmp_path: Path, s3_server: S3Server, s3_bucket: str,
          s3_prefix: str) -> Iterator[tuple[Any, Any, Path]]:
    """Daemons on host-a and host-b; host-c's config file (for the CLI and the server)."""
    a = start_daemon(tmp_path / "a" / "root",
                     base_config(storage=s3_storage(s3_server, s3_bucket, s3_prefix, "host-a")))
    b = start_daemon(tmp_path / "b" / "root",
                     base_config(storage=s3_storage(s3_server, s3_bucket, s3_prefix, "host-b")))
    cfg = tmp_path / "c.toml"
    (tmp_path / "c" / "sessions").mkdir(parents=True)
    cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(tmp_path / "c"),
                           host_id="host-c"))
    try:
        yield a, b, cfg
    finally:
        a.close()
        b.close()


def test_two_daemons_a_cli_and_a_server_share_one_bucket(
        hosts: tuple[Any, Any, Path], objstore: ObjectStore) -> None:
    """host-a and host-b promote into their own runs and into one run both have; host-c's CLI
    keeps, removes a file and deletes a run, its server removes a file and lists, all while
    both daemons keep writing into the shared run: every change survives, each run and
    tombstone names its host, and the server lists what the bucket holds."""
    a, b, cfg = hosts
    a.wait_ready(60)
    b.wait_ready(60)
    for i in range(5):
        write(a.sessions / "a1" / "output" / f"x{i}.txt", f"a1 {i}")
        write(b.sessions / "b1" / "output" / f"z{i}.txt", f"b1 {i}")
    write(a.sessions / "a2" / "output" / "y.txt", "a2")
    for i in range(10):
        write(a.sessions / "both" / "output" / f"from-a-{i}.txt", f"a {i}")
        write(b.sessions / "both" / "output" / f"from-b-{i}.txt", f"b {i}")
    first = {f"from-{h}-{i}.txt" for h in "ab" for i in range(10)}
    wait_until(lambda: bucket_names(objstore, "both") == first, 90,
               what="both hosts' files in one run")
    wait_until(lambda: len(bucket_names(objstore, "a1")) == 5
               and len(bucket_names(objstore, "b1")) == 5
               and bucket_names(objstore, "a2") == {"y.txt"}, 60, what="the hosts' own runs")
    serve = Serve(cfg)
    try:
        failures: list[str] = []

        def cli(*argv: str) -> None:
            proc = _cli(cfg, *argv)
            if proc.returncode != 0:
                failures.append(f"{argv}: {proc.stderr}")

        def server() -> None:
            with serve.client() as client:
                got = client.delete("/runtime/artifacts/both/files/from-a-0.txt")
                if got.status_code != 204:
                    failures.append(f"serve delete: {got.status_code} {got.text}")

        actors = [threading.Thread(target=cli, args=argv) for argv in
                  (("keep", "a1"), ("rm", "b1", "z0.txt"), ("rm", "a2"))]
        actors.append(threading.Thread(target=server))
        for t in actors:
            t.start()
        for i in range(10, 20):  # both daemons write on through the CLI's and server's changes
            write(a.sessions / "both" / "output" / f"from-a-{i}.txt", f"a {i}")
            write(b.sessions / "both" / "output" / f"from-b-{i}.txt", f"b {i}")
        for t in actors:
            t.join(300)
        assert not failures, failures
        want = {f"from-{h}-{i}.txt" for h in "ab" for i in range(20)} - {"from-a-0.txt"}
        wait_until(lambda: bucket_names(objstore, "both") == want, 90,
                   what="every change in 'both'")
        with serve.client() as client:
            def listed() -> set[str]:
                return {r["run_id"] for r in client.get("/runtime/artifacts").json()["artifacts"]}

            wait_until(lambda: listed() == {"a1", "b1", "both"}, 60,
                       what="the server listing the bucket's runs")
            run = client.get("/runtime/artifacts/both").json()
            assert {x["filename"] for x in run["artifacts"]} == want
        assert a.stop() == 0 and b.stop() == 0
    finally:
        serve.close()
    a1, b1, both = (bucket_meta(objstore, r) for r in ("a1", "b1", "both"))
    assert a1 is not None and a1["keep"] and a1["host"] == "host-a"
    assert b1 is not None and b1["host"] == "host-b"
    assert bucket_names(objstore, "b1") == {f"z{i}.txt" for i in range(1, 5)}
    assert {r["filename"] for r in b1["removed"]} == {"z0.txt"}
    assert both is not None and both["host"] in ("host-a", "host-b")
    assert {r["filename"] for r in both["removed"]} == {"from-a-0.txt"}
    assert bucket_meta(objstore, "a2") is None
    tomb, _ = objstore.get(tombstone_key(objstore.prefix, "a2"))
    assert json.loads(tomb)["host"] == "host-a"  # the run's host: only it drops the tombstone
    assert not [o for page in objstore.list_pages("files/a2/") for o in page]


def test_two_hosts_sweeping_at_once_never_delete_a_kept_run_nor_twice(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        objstore: ObjectStore) -> None:
    """Two hosts sweep the same 12 expired runs at once while a third keeps four of them:
    each run is deleted by exactly one sweeper, and every keep that answered stays kept,
    with its objects (a keep that lost finds the run gone)."""
    clock = FakeClock()
    maker = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix, clock=clock,
                     PROMOTER_STORAGE__HOST_ID='"host-a"')
    runs = [f"r{i:02d}" for i in range(12)]
    for run_id in runs:
        write_session_file(tmp_path, run_id, "a.txt", run_id.encode())
        maker.promote_files(run_id, ["a.txt"])
    clock.advance(days=8)
    sweepers = [s3_store(tmp_path / h, s3_server, s3_bucket, s3_prefix, clock=clock,
                         PROMOTER_STORAGE__HOST_ID=f'"{h}"') for h in ("host-x", "host-y")]
    keeper = s3_store(tmp_path / "k", s3_server, s3_bucket, s3_prefix,
                      PROMOTER_STORAGE__HOST_ID='"host-k"')
    kept = runs[::3]
    reports: list[Any] = []
    kept_ok: list[str] = []
    errors: list[BaseException] = []
    go = threading.Barrier(3)

    def sweeping(i: int) -> None:
        go.wait()
        try:
            reports.append(sweep(sweepers[i]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def keeping() -> None:
        go.wait()
        for run_id in kept:
            try:
                keeper.set_keep(run_id, True)
                kept_ok.append(run_id)
            except NotFoundError:  # a sweeper took it first: allowed, checked below
                continue
            except Exception as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=sweeping, args=(i,)) for i in (0, 1)]
    threads.append(threading.Thread(target=keeping))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    deleted = [r for report in reports for r in report.expired]
    assert len(deleted) == len(set(deleted))  # never both sweepers on one run
    left = {r: bucket_meta(objstore, r) for r in runs}
    for run_id in runs:
        meta = left[run_id]
        if run_id in deleted:
            assert meta is None
            assert not [o for page in objstore.list_pages(f"files/{run_id}/") for o in page]
        else:  # not deleted: it must be one the keeper pinned in time
            assert meta is not None and meta["keep"] and run_id in kept, run_id
            assert bucket_names(objstore, run_id) == {"a.txt"}
    assert not set(kept_ok) & set(deleted)  # a keep that answered is never undone
    assert set(deleted) | set(kept_ok) == set(runs)
