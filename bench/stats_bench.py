"""`GET /runtime/stats` at 1,000 runs x 10 files, warm (issue 16: under 50 ms).

    cd /work/wt/NAME && .venv/bin/python -m bench.stats_bench [--runs 1000] [--files 10]
        [--requests 200] [--spaced 60]

Writes a store of `runs` runs of `files` files each (5 agents, 8 workflows,
4 content types, files dated over 30 days, one run in ten kept), starts a real
`promoter serve` on it, warms it up (every metadata.json parsed once), then
times `requests` sequential GETs of `/runtime/stats` from one client on one
connection, and the same for `GET /runtime/artifacts` beside it. Back to back,
most answers are the one kept for 0.5 s (as the run list's are); `--spaced`
requests 0.6 s apart each compute the figures again (the run list's `stat`s,
then the merge of each run's kept sums): that is the figure that counts. Also
times `compute_stats` alone in this process with nothing memoized. Prints p50,
p90, p99 and max in milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.http_bench import child, free_port, wait_http
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.stats import compute_stats

AGENTS = ["visualization_agent", "data_processor", "document_writer", "web_scraper", "unknown"]
TYPES = [("png", "image/png"), ("csv", "text/csv"), ("json", "application/json"),
         ("md", "text/markdown")]
PAYLOAD = b"x" * 64


def build(root: Path, runs: int, files: int, now: datetime) -> list[RunMetadata]:
    """Runs written as the store keeps them (files/ and metadata.json), stamps in whole seconds."""
    artifacts = root / "artifacts"
    for sub in ("sessions", "library"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    out = []
    for i in range(runs):
        run_id = f"run-{i:05d}"
        created = (now - timedelta(minutes=43 * i)).replace(microsecond=0)
        folder = artifacts / run_id / "files"
        folder.mkdir(parents=True)
        stamp = int(created.timestamp()) * 1_000_000_000
        entries = []
        for j in range(files):
            ext, ctype = TYPES[(i + j) % len(TYPES)]
            name = f"out_{j}.{ext}"
            path = folder / name
            path.write_bytes(PAYLOAD)
            os.utime(path, ns=(stamp, stamp))
            entries.append(ArtifactEntry(filename=name, path=f"files/{name}",
                                         agent_id=AGENTS[(i * 3 + j) % len(AGENTS)],
                                         generated_at=created, size_bytes=len(PAYLOAD),
                                         content_type=ctype, sha256=digest))
        meta = RunMetadata(run_id=run_id, workflow_id=f"workflow_{i % 8}",
                           user_directive=f"batch {i}", created_at=created, updated_at=created,
                           expires_at=created + timedelta(days=7), keep=i % 10 == 0,
                           status="completed", artifacts=entries)
        (artifacts / run_id / "metadata.json").write_text(meta.to_json())
        out.append(meta)
    return out


def _summary(name: str, samples_s: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    if len(ms) < 2:
        return f"{name:<40} {ms[0]:7.2f} ms"
    q = statistics.quantiles(ms, n=100)
    return (f"{name:<40} p50 {statistics.median(ms):7.2f}  p90 {q[89]:7.2f}  "
            f"p99 {q[98]:7.2f}  max {ms[-1]:7.2f} ms  (n={len(ms)})")


def timed_gets(client: httpx.Client, url: str, n: int, gap_s: float = 0.0) -> list[float]:
    samples = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)  # past the answer's reuse time: each request recomputes
        started = time.perf_counter()
        res = client.get(url)
        samples.append(time.perf_counter() - started)
        if res.status_code != 200:
            raise RuntimeError(f"{url}: {res.status_code} {res.text[:200]}")
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stats_bench")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--spaced", type=int, default=60,
                   help="requests 0.6 s apart, each past the 0.5 s answer reuse")
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="promoter-stats-bench-"))
    try:
        now = datetime.now(UTC)
        runs = build(base / "store", args.runs, args.files, now)
        compute = []
        for _ in range(args.requests):
            started = time.perf_counter()
            compute_stats(runs, now, timedelta(days=30)).model_dump_json()
            compute.append(time.perf_counter() - started)
        print(_summary("compute_stats + JSON (in process)", compute))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
        argv_serve = [sys.executable, "-m", "promoter", "serve", "--root", str(base / "store"),
                      "--listen", f"127.0.0.1:{port}"]
        with child(argv_serve, base / "serve.log", env) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/healthz", proc)
            with httpx.Client(base_url=url, timeout=60) as client:
                cold = timed_gets(client, "/runtime/stats", 1)
                print(_summary("GET /runtime/stats, first (cold)", cold))
                timed_gets(client, "/runtime/stats", 20)  # warm-up
                body = client.get("/runtime/stats").json()
                assert body["totals"]["artifacts"] == args.runs * args.files or \
                    body["totals"]["runs"] < args.runs, body["totals"]
                print(_summary("GET /runtime/stats (warm, recomputed)",
                               timed_gets(client, "/runtime/stats", args.spaced, 0.6)))
                print(_summary("GET /runtime/stats (warm, back to back)",
                               timed_gets(client, "/runtime/stats", args.requests)))
                print(_summary("GET /runtime/stats?since=3650d (warm)",
                               timed_gets(client, "/runtime/stats?since=3650d",
                                          args.requests)))
                print(_summary("GET /runtime/artifacts (warm, beside it)",
                               timed_gets(client, "/runtime/artifacts", args.requests)))
        print(f"load average now {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
