"""HTTP benchmark of `promoter serve` beside nginx serving the same folder (DESIGN §9).

    cd /work/main && /work/venv/bin/python -m bench.http_bench [--runs 1000] [--files 10]
        [--duration 10] [--keep]

Workloads, each against a real `promoter serve` (default configuration: JSON
request log at info, to a file) and against nginx on another loopback port:

- list: `GET /runtime/artifacts` over 1,000 runs x 10 files, one connection,
  warm (after a warm-up); p50 and p99. nginx serves the same JSON body as a
  static file (the floor for sending those bytes) and, as a second peer, its
  JSON autoindex of artifacts/ (a directory listing, less work than ours).
  Also the page's poll: the same request with `If-None-Match` (304).
- file: `GET` of one 4 KiB artifact with 2 connections; requests/s and p99.
  nginx serves artifacts/ under the same URL shape.

The load generator is wrk (C, epoll) with --latency, given one thread for its
connections so that it takes as little as possible of the machine's 2 cores
from the server under test. Needs `nginx` and `wrk` (Debian packages).
Children run in process groups of their own and are always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from promoter.config import load_config
from promoter.logs import configure_logging
from promoter.store import Outcome, Store

FILE_BYTES = 4096
TARGET_LIST_P50_MS = 50.0
TARGET_FILE_RPS = 1500.0
TARGET_FILE_P99_MS = 20.0


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int

    def row(self, name: str) -> str:
        return (
            f"| {name} | {self.requests_per_s:,.0f} | {self.p50_ms:.2f} | {self.p99_ms:.2f} "
            f"| {self.requests:,} | {self.non_2xx} |"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the store ---------------------------------------------------------------------------


def build_store(root: Path, runs: int, files: int) -> Store:
    """`runs` runs of `files` files each, promoted through the real store (sha256, fsync)."""
    config = load_config(None, env={}, root=str(root))
    store = Store(config)
    store.ensure_folders()
    payload = os.urandom(FILE_BYTES)

    def one(i: int) -> None:
        run_id = f"run-{i:05d}"
        out = root / "sessions" / run_id / "output"
        (out / "plots").mkdir(parents=True)
        names = [f"plots/plot_{j}.png" if j % 2 else f"table_{j}.csv" for j in range(files)]
        for name in names:
            (out / name).write_bytes(payload)
        (root / "sessions" / run_id / "run.json").write_text(
            json.dumps({"workflow_id": "data_analysis_v2", "user_directive": f"Analyze batch {i}"})
        )
        results = store.promote_files(run_id, names)
        bad = [r for r in results if r.outcome is not Outcome.PROMOTED]
        if bad:
            raise RuntimeError(f"promotion failed: {bad[:2]}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(runs)))
    return store


# -- processes ---------------------------------------------------------------------------


@contextlib.contextmanager
def child(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in a process group of its own, stdout+stderr to `log`; always stopped."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.05)  # polling a server that is starting: a bounded wait, not a fixed sleep
    raise RuntimeError(f"{url} did not answer within {timeout} s")


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {base}/nginx-access.log;
    client_body_temp_path {base}/tmp-body;
    proxy_temp_path {base}/tmp-proxy;
    fastcgi_temp_path {base}/tmp-fastcgi;
    uwsgi_temp_path {base}/tmp-uwsgi;
    scgi_temp_path {base}/tmp-scgi;
    types {{ image/png png; text/csv csv; application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        location = /runtime/artifacts {{ default_type application/json; alias {base}/list.json; }}
        location = /autoindex/ {{ alias {artifacts}/; autoindex on; autoindex_format json; }}
        location /runtime/artifacts/ {{ alias {artifacts}/; etag on; }}
    }}
}}
"""


# -- wrk ---------------------------------------------------------------------------------


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def measure(url: str, connections: int, duration: int, repeat: int,
            headers: Sequence[str] = ()) -> WrkResult:
    """`repeat` wrk runs; the one with the median requests/s (the machine is shared)."""
    runs = sorted((wrk(url, connections, duration, headers) for _ in range(repeat)),
                  key=lambda r: r.requests_per_s)
    return runs[len(runs) // 2]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, duration: int, headers: Sequence[str] = ()) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return WrkResult(rps, p50, p99, total, int(non2xx.group(1)) if non2xx else 0)


# -- the run -----------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _uvicorn_flavour() -> str:
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {http} + {loop}"


def run(args: argparse.Namespace) -> int:
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"http_bench: {tool} is missing (apt-get install -y {tool})", file=sys.stderr)
            return 2
    base = Path(tempfile.mkdtemp(prefix="promoter-http-bench-"))
    base.chmod(0o755)  # nginx's workers run as www-data when started by root
    configure_logging("warning")  # the build's own promotion lines are not the figures
    try:
        return _run(args, base)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _run(args: argparse.Namespace, base: Path) -> int:
    root = base / "storage"
    started = time.monotonic()
    store = build_store(root, args.runs, args.files)
    print(
        f"built {args.runs} runs x {args.files} files in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    first = store.list_runs()[-1]
    file_path = f"/runtime/artifacts/{first.run_id}/files/{first.artifacts[0].filename}"
    promoter_port, nginx_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
    serve = [
        sys.executable,
        "-m",
        "promoter",
        "serve",
        "--root",
        str(root),
        "--listen",
        f"127.0.0.1:{promoter_port}",
    ]
    results: dict[str, WrkResult] = {}
    cpu: dict[str, float] = {}
    d, n = args.duration, args.repeat
    load_before = os.getloadavg()
    with child(serve, base / "serve.log", env) as proc:
        url = f"http://127.0.0.1:{promoter_port}"
        wait_http(url + "/healthz", proc)
        listing = httpx.get(url + "/runtime/artifacts", timeout=60)
        (base / "list.json").write_bytes(listing.content)
        etag = listing.headers["etag"]
        if args.workload in ("all", "list"):
            wrk(url + "/runtime/artifacts", 1, 3)  # warm-up: every run parsed and rendered
            results["promoter list"] = measure(url + "/runtime/artifacts", 1, d, n)
            results["promoter list, If-None-Match (304)"] = measure(
                url + "/runtime/artifacts", 1, d, n, [f"If-None-Match: {etag}"])
        wrk(url + file_path, 2, 2)
        before = cpu_seconds(proc.pid)
        results["promoter 4 KiB file"] = measure(url + file_path, 2, d, n)
        cpu["promoter"] = (cpu_seconds(proc.pid) - before) / (n * d)
    nginx_conf = base / "nginx.conf"
    nginx_conf.write_text(NGINX_CONF.format(base=base, port=nginx_port,
                                            artifacts=root / "artifacts"))
    with child(["nginx", "-c", str(nginx_conf), "-p", str(base)], base / "nginx.log") as proc:
        url = f"http://127.0.0.1:{nginx_port}"
        wait_http(url + "/runtime/artifacts", proc)
        if args.workload in ("all", "list"):
            wrk(url + "/runtime/artifacts", 1, 2)
            results["nginx list (the same body, static)"] = measure(
                url + "/runtime/artifacts", 1, d, n)
            results["nginx autoindex of artifacts/ (JSON)"] = measure(
                url + "/autoindex/", 1, d, n)
        wrk(url + file_path, 2, 2)
        results["nginx 4 KiB file"] = measure(url + file_path, 2, d, n)
    per_request_ms = 1000 * cpu["promoter"] / max(results["promoter 4 KiB file"].requests_per_s, 1)
    print(f"\npromoter serve used {cpu['promoter']:.2f} CPU-seconds a second during the 4 KiB "
          f"file runs: about {per_request_ms:.2f} CPU-ms a request, so about "
          f"{1000 / per_request_ms:,.0f} requests/s per fully available core.")
    report(args, results, len(listing.content), (load_before, os.getloadavg()))
    return 0


def report(
    args: argparse.Namespace,
    results: dict[str, WrkResult],
    list_bytes: int,
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> None:
    print(
        f"\nMachine: {machine()}; {_uvicorn_flavour()}; wrk 1 thread, {args.duration} s "
        f"a run, median of {args.repeat} runs. List: {args.runs} runs x {args.files} files, "
        f"body {list_bytes:,} bytes; 1 connection. File: {FILE_BYTES} B, 2 connections. "
        f"Load average before/after: {loads[0][0]:.2f} / {loads[1][0]:.2f}.\n"
    )
    print("| workload | requests/s | p50 ms | p99 ms | requests | non-2xx/3xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, result in results.items():
        print(result.row(name))
    verdicts = []
    if "promoter list" in results:
        p50 = results["promoter list"].p50_ms
        verdicts.append(f"list p50 < {TARGET_LIST_P50_MS:.0f} ms: {p50:.2f} ms "
                        f"({'met' if p50 < TARGET_LIST_P50_MS else 'MISSED'})")
    f = results["promoter 4 KiB file"]
    met = f.requests_per_s >= TARGET_FILE_RPS and f.p99_ms < TARGET_FILE_P99_MS
    verdicts.append(f"4 KiB file >= {TARGET_FILE_RPS:,.0f} req/s with p99 < "
                    f"{TARGET_FILE_P99_MS:.0f} ms: {f.requests_per_s:,.0f} req/s, p99 "
                    f"{f.p99_ms:.2f} ms ({'met' if met else 'MISSED'})")
    print("\nTargets (DESIGN §9): " + "; ".join(verdicts) + ".")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--duration", type=int, default=10, help="seconds per figure")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is kept)")
    p.add_argument("--workload", choices=("all", "list", "file"), default="all")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
