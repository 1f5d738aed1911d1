"""Event stream benchmark of `promoter serve` (DESIGN §9: "event stream").

    cd /work/wt/NAME && .venv/bin/python -m bench.events_bench [--writes 300] [--rate 20]
        [--clients 50] [--idle-s 60] [--out FILE]

Two figures, against a real `promoter serve` on a temporary store of 20 runs:

- latency: one client reads `GET /runtime/events`; this process replaces a
  run's metadata.json through the store (`Store.set_keep`, the same atomic
  write the daemon makes) `--writes` times at `--rate` per second, and notes
  the time right after each write returned; the event carrying that write's
  `updated_at` is timed when its last byte arrives at the client. p50, p99, max.
- idle: `--clients` clients connect and stay idle for `--idle-s` seconds; the
  server's CPU time (utime + stime from /proc/PID/stat) over that window, as a
  percentage of one core; its RSS before and after.

The load average is recorded beside the figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from promoter.clock import format_time
from promoter.config import load_config
from promoter.logs import configure_logging
from promoter.store import Store

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _seed(root: Path, runs: int) -> Store:
    for sub in ("sessions", "artifacts", "library"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    store = Store(load_config(None, {}, str(root)))
    store.ensure_folders()
    for i in range(runs):
        out = root / "sessions" / f"run{i:03d}" / "output"
        out.mkdir(parents=True)
        (out / "a.txt").write_bytes(b"x" * 100)
        store.promote_files(f"run{i:03d}", ["a.txt"])
    return store


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /runtime/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.setblocking(False)
    return sock


class Clients:
    """Many SSE connections read by one selector thread; arrival times of `updated_at`s."""

    def __init__(self, port: int, n: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.arrivals: dict[str, float] = {}
        self.bytes = 0
        self._stop = threading.Event()
        self.socks = [_connect(port) for _ in range(n)]
        self._buffers = {s.fileno(): b"" for s in self.socks}
        for sock in self.socks:
            self.selector.register(sock, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, name="bench-sse", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                now = time.monotonic()
                self.bytes += len(data)
                buf = self._buffers[sock.fileno()] + data
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    marker = b'"updated_at":"'
                    at = block.find(marker)
                    if at >= 0:
                        stamp = block[at + len(marker):].split(b'"', 1)[0].decode()
                        self.arrivals.setdefault(stamp, now)
                self._buffers[sock.fileno()] = buf

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _wait_clients(base: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=5).text
        if f"promoter_http_event_clients {float(n)}" in text:
            return
        threading.Event().wait(0.1)
    raise RuntimeError(f"{n} clients never showed as connected")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"loadavg_before": os.getloadavg(), "cpus": os.cpu_count(),
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="promoter-events-") as tmp:
        root = Path(tmp) / "root"
        store = _seed(root, 20)
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        number = port.getsockname()[1]
        port.close()
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PROMOTER_LOG__LEVEL": "warning"}
        proc = subprocess.Popen([sys.executable, "-m", "promoter", "serve", "--root", str(root),
                                 "--listen", f"127.0.0.1:{number}"], stdout=log, stderr=log,
                                env=env)
        base = f"http://127.0.0.1:{number}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("promoter serve did not start")
                threading.Event().wait(0.1)
            # latency
            one = Clients(number, 1)
            _wait_clients(base, 1)
            writes: dict[str, float] = {}
            gap = 1 / args.rate
            next_at = time.monotonic()
            for i in range(args.writes):
                threading.Event().wait(max(next_at - time.monotonic(), 0))
                next_at += gap
                run_id = f"run{i % 20:03d}"
                meta = store.set_keep(run_id, not store.get_run(run_id).keep)  # always a write
                writes[format_time(meta.updated_at)] = time.monotonic()
            deadline = time.monotonic() + 10
            while len(one.arrivals) < len(writes) and time.monotonic() < deadline:
                threading.Event().wait(0.05)
            one.close()
            lat = [(one.arrivals[k] - t) * 1000 for k, t in writes.items() if k in one.arrivals]
            result["latency_ms"] = {
                "writes": len(writes), "received": len(lat),
                "p50": round(_percentile(lat, 50), 2), "p99": round(_percentile(lat, 99), 2),
                "max": round(max(lat), 2)} if lat else {"writes": len(writes), "received": 0}
            # idle
            many = Clients(number, args.clients)
            _wait_clients(base, args.clients)
            rss0, cpu0, t0 = _rss_kib(proc.pid), _cpu_s(proc.pid), time.monotonic()
            threading.Event().wait(args.idle_s)
            cpu1, t1, rss1 = _cpu_s(proc.pid), time.monotonic(), _rss_kib(proc.pid)
            many.close()
            result["idle"] = {
                "clients": args.clients, "seconds": round(t1 - t0, 1),
                "cpu_s": round(cpu1 - cpu0, 3),
                "cpu_percent_of_a_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
                "keepalive_bytes": many.bytes, "rss_kib_before": rss0, "rss_kib_after": rss1}
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
    result["loadavg_after"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    configure_logging("warning")
    result = measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
