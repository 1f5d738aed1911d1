"""`GET /runtime/artifacts` of `promoter serve` over a bucket (DESIGN §9, §10).

    .venv/bin/python -m bench.bucket_bench [--runs 1000] [--files 10] [--duration 10]
        [--local] [--keep]

Starts one SeaweedFS on loopback (tests/s3_server.py), writes `runs` runs of
`files` 4 KiB objects each through promoter's object layer (each object with
its sha256, then the run's `meta/<run_id>.json`, the backend's order), starts
`promoter serve` with `storage.backend = "s3"` on that bucket, and measures with one keep-alive
connection, one request at a time (a Python client: its own cost is in the
figures, so they are an upper bound):

- list: `GET /runtime/artifacts`, warm (after a warm-up that fills the run
  cache), p50/p90/p99 over `duration` seconds. The server re-lists `meta/`
  (one page of 1,000 keys) whenever its cache is older than 0.5 s, so the
  figures include those refreshes.
- list 304: the page's poll, with `If-None-Match`.
- cold: the first listing after start (one listing, every run read).
- one change: the first listing after one run's metadata is rewritten.
- file: `GET` of one 4 KiB artifact (a HEAD and a GET If-Match on the bucket).

With `--local`, the same runs are promoted into local folders and served the
same way, measured by the same client in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.http_bench import build_store, child, free_port, machine, wait_http
from promoter.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import S3Server, running_server  # noqa: E402

FILE_BYTES = 4096
TARGET_P50_MS = 50.0
BUCKET = "promoter-bench"
PREFIX = "bench/"


def _settings(server: S3Server) -> Any:
    from promoter.s3layout import S3Settings

    return S3Settings(bucket=BUCKET, prefix=PREFIX, endpoint=server.endpoint,
                      region=server.region, allow_http=True)


def _env(server: S3Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROMOTER_") and "proxy" not in k.lower()}
    env.update({"AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    return env


def fill_bucket(server: S3Server, runs: int, files: int) -> None:
    """`runs` runs of `files` objects each, objects first, then each run's metadata."""
    import boto3

    from promoter.metadata import ArtifactEntry, RunMetadata
    from promoter.objectstore import EntryFields, ObjectStore
    from promoter.s3layout import file_key, meta_key

    os.environ.update(_env(server))
    boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name=server.region).create_bucket(Bucket=BUCKET)
    objects = ObjectStore(_settings(server))
    payload = os.urandom(FILE_BYTES)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    with tempfile.TemporaryFile() as tmp:
        tmp.write(payload)
        tmp.flush()
        fd = tmp.fileno()

        def one(i: int) -> None:
            run_id = f"run-{i:05d}"
            when = base + timedelta(minutes=i)
            stamp = when.isoformat().replace("+00:00", "Z")
            entries = []
            for j in range(files):
                name = f"plots/plot_{j}.png" if j % 2 else f"table_{j}.csv"
                stored = objects.put_file(file_key(PREFIX, run_id, name), fd, FILE_BYTES,
                                          EntryFields(name, "agent-1", stamp))
                entries.append(ArtifactEntry(
                    filename=name, path=f"files/{name}", agent_id="agent-1", generated_at=when,
                    size_bytes=FILE_BYTES, sha256=stored.sha256,
                    content_type="image/png" if j % 2 else "text/csv"))
            meta = RunMetadata(run_id=run_id, workflow_id="data_analysis_v2",
                               user_directive=f"Analyze batch {i}", created_at=when,
                               updated_at=when, expires_at=when + timedelta(days=3650),
                               artifacts=entries)
            objects.put(meta_key(PREFIX, run_id), meta.to_json().encode())

        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(one, range(runs)))


def serve_config(base: Path, server: S3Server) -> Path:
    """A config file: the store in the bench bucket, under its prefix."""
    config = base / "config.toml"
    config.write_text(
        f'[storage]\nroot = "{base / "storage"}"\nbackend = "s3"\n\n[storage.s3]\n'
        f'bucket = "{BUCKET}"\nprefix = "{PREFIX}"\nendpoint = "{server.endpoint}"\n'
        f'region = "{server.region}"\nallow_http = true\n')
    return config


def timed(client: httpx.Client, url: str, seconds: float,
          headers: dict[str, str] | None = None) -> list[float]:
    """Latencies in ms of sequential GETs for `seconds`."""
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        answer = client.get(url, headers=headers)
        out.append((time.perf_counter() - t0) * 1000)
        if answer.status_code not in (200, 304):
            raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
    return out


def summary(name: str, ms: list[float]) -> dict[str, Any]:
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else ms * 99
    return {"workload": name, "requests": len(ms), "p50_ms": statistics.median(ms),
            "p90_ms": q[89], "p99_ms": q[98], "rps": len(ms) / (sum(ms) / 1000)}


def measure(url: str, duration: float, first_file: str,
            change: Callable[[], None] | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with httpx.Client(timeout=120) as client:
        t0 = time.perf_counter()
        cold = client.get(url + "/runtime/artifacts")
        rows.append({"workload": "list, cold (first after start)",
                     "p50_ms": (time.perf_counter() - t0) * 1000, "requests": 1,
                     "bytes": len(cold.content)})
        timed(client, url + "/runtime/artifacts", 3)  # warm-up
        rows.append(summary("list, warm", timed(client, url + "/runtime/artifacts", duration)))
        etag = client.get(url + "/runtime/artifacts").headers["etag"]
        rows.append(summary("list, If-None-Match (304)", timed(
            client, url + "/runtime/artifacts", duration, {"if-none-match": etag})))
        if change is not None:
            change()
            deadline = time.monotonic() + 30
            t0 = time.perf_counter()
            while client.get(url + "/runtime/artifacts").headers["etag"] == etag:
                if time.monotonic() > deadline:
                    raise RuntimeError("the change never showed")
            rows.append({"workload": "time until one changed run shows (cache TTL 0.5 s)",
                         "p50_ms": (time.perf_counter() - t0) * 1000, "requests": 1})
        timed(client, url + first_file, 2)
        rows.append(summary("4 KiB file", timed(client, url + first_file, duration)))
    return rows


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="promoter-bucket-bench-"))
    configure_logging("warning")  # the local build's promotion lines are not the figures
    results: dict[str, Any] = {"machine": machine(), "runs": args.runs, "files": args.files,
                               "load_before": os.getloadavg()[0]}
    first_file = "/runtime/artifacts/run-00000/files/table_0.csv"
    try:
        with running_server(base / "seaweedfs") as server:
            t0 = time.monotonic()
            fill_bucket(server, args.runs, args.files)
            results["fill_s"] = time.monotonic() - t0
            print(f"filled {args.runs} x {args.files} in {results['fill_s']:.1f} s",
                  file=sys.stderr)
            env = _env(server)
            port = free_port()
            argv = [sys.executable, "-m", "promoter", "serve", "--config",
                    str(serve_config(base, server)), "--listen", f"127.0.0.1:{port}"]
            with child(argv, base / "serve.log", env) as proc:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/healthz", proc, timeout=60)

                def change() -> None:
                    from promoter.objectstore import ObjectStore
                    from promoter.s3layout import meta_key

                    os.environ.update(_env(server))
                    objects = ObjectStore(_settings(server))
                    raw, _ = objects.get(meta_key(PREFIX, "run-00007"))
                    doc = json.loads(raw)
                    doc["keep"] = not doc["keep"]
                    objects.put(meta_key(PREFIX, "run-00007"), json.dumps(doc).encode())

                results["s3"] = measure(url, args.duration, first_file, change)
        if args.local:
            root = base / "local"
            build_store(root, args.runs, args.files)
            port = free_port()
            argv = [sys.executable, "-m", "promoter", "serve", "--root", str(root),
                    "--listen", f"127.0.0.1:{port}"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
            with child(argv, base / "serve-local.log", env) as proc:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/healthz", proc)
                results["local"] = measure(url, args.duration, first_file, None)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    report(results)
    return 0


def report(results: dict[str, Any]) -> None:
    print(f"\nMachine: {results['machine']}; {results['runs']} runs x {results['files']} "
          f"files; one connection, sequential; load average {results['load_before']:.2f} -> "
          f"{results['load_after']:.2f}.\n")
    print("| backend | workload | requests | p50 ms | p90 ms | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for backend in ("s3", "local"):
        for row in results.get(backend, []):
            cells = [f"{row[k]:.2f}" if k in row else "" for k in ("p50_ms", "p90_ms", "p99_ms")]
            print(f"| {backend} | {row['workload']} | {row['requests']:,} | " + " | ".join(cells)
                  + " |")
    warm = next(r for r in results["s3"] if r["workload"] == "list, warm")
    verdict = "met" if warm["p50_ms"] < TARGET_P50_MS else "MISSED"
    print(f"\nTarget (DESIGN §9): list p50 under {TARGET_P50_MS:.0f} ms warm over the bucket: "
          f"{warm['p50_ms']:.2f} ms ({verdict}).")
    print(json.dumps(results, default=str), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bucket_bench",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per figure")
    p.add_argument("--local", action="store_true", help="also serve the same from folders")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
