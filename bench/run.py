"""promoter's benchmark harness (DESIGN §9): promoter beside lsyncd+rsync and an inotifywait+cp
loop, in the same run, on this machine.

    cd /work/main && /work/venv/bin/python -m bench.run [--only peers|promoter]
        [--workload latency|burst|bigfile|idle|catchup] ...

Prints markdown tables and writes the figures to bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import floor, fsjournal, report, shapes, teardown, workloads
from bench.procs import stop_all
from bench.tools import (
    LSYNCD_DELAY,
    ToolFactory,
    peer_factories,
    promoter_argv,
    promoter_factory,
)
from bench.workloads import Ctx, Result

WORKLOADS = ("latency", "burst", "bigfile", "idle", "catchup")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only",
        choices=("all", "peers", "promoter"),
        default="all",
        help="which tools to run (default: all, side by side)",
    )
    p.add_argument(
        "--durable-peer",
        action="store_true",
        help="add lsyncd with rsync --fsync beside the plain lsyncd: the peer that flushes "
        "every copy to disk as promoter does (DESIGN §2)",
    )
    p.add_argument(
        "--workload",
        choices=(*WORKLOADS, "all"),
        action="append",
        help="run only this workload (repeatable; default: all)",
    )
    p.add_argument(
        "--settle-ms",
        type=int,
        default=50,
        help="promoter's settle_ms for burst, bigfile, idle, catchup (default 50)",
    )
    p.add_argument(
        "--latency-settle-ms",
        default="50,300",
        help="promoter's settle_ms values for the latency workload (default 50,300)",
    )
    p.add_argument("--latency-files", type=int, default=200)
    p.add_argument("--latency-rate", type=float, default=20.0, help="files per second")
    p.add_argument("--latency-runs", type=int, default=4)
    p.add_argument(
        "--latency-poll-ms",
        type=float,
        default=1.0,
        help="how often the destination is polled for pending files",
    )
    p.add_argument(
        "--detector",
        choices=("inotify", "poll"),
        default="inotify",
        help="how a file is seen to be visible at the destination: inotify events on the "
        "destination (default) or polling the pending files",
    )
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=15.0,
        help="before each tool's part, wait until the machine is under this %% busy for a "
        "second (0: do not wait)",
    )
    p.add_argument("--quiet-wait", type=float, default=180.0, help="at most this many seconds")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the harness and every tool at this niceness (e.g. -10 as root, so that other "
        "work sharing the machine disturbs the figures less; the same for every tool)",
    )
    p.add_argument(
        "--burst-shape",
        choices=(*shapes.ALL, "all"),
        action="append",
        help="issue 15's shapes, each beside the peers with a summary row: FILESxSIZE/RUNS "
        "bursts, bigrun (100,000 empty files in one run), catchup; 'all' for every one. "
        "Replaces --workload",
    )
    p.add_argument("--bigrun-files", type=int, default=100_000)
    p.add_argument("--burst-files", type=int, default=5000)
    p.add_argument("--burst-runs", type=int, default=50)
    p.add_argument(
        "--burst-deadline",
        type=float,
        default=120.0,
        help="seconds after the last write before remaining files count as missing",
    )
    p.add_argument(
        "--burst-repeats", type=int, default=3, help="bursts per tool (median files/s reported)"
    )
    p.add_argument("--bigfile-mib", type=int, default=512)
    p.add_argument("--bigfile-repeats", type=int, default=3)
    p.add_argument("--idle-runs", type=int, default=1000)
    p.add_argument(
        "--idle-files", type=int, default=100,
        help="promoted files in each idle run (1 KiB each; default 100: 100,000 in all)",
    )
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--catchup-files", type=int, default=100_000)
    p.add_argument("--catchup-repeats", type=int, default=3)
    p.add_argument("--catchup-timeout", type=float, default=1800.0)
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy record promoter's daemon during each workload into DIR "
        "(collapsed stacks, all threads, idle included; needs py-spy)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary folders")
    p.add_argument(
        "--no-teardown-wait",
        action="store_true",
        help="on an ext4 without a journal, do not wait out the 365 s after the last run's "
        "teardown (every create is taxed meanwhile; teardown.py)",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    p.add_argument(
        "--tmp-dir", default="/tmp", help="where the temporary folders go (default /tmp)"
    )
    args = p.parse_args(argv)
    if args.burst_shape and "all" in args.burst_shape:
        args.burst_shape = list(shapes.ALL)
    if args.burst_shape:
        args.workload = []
    elif not args.workload or "all" in args.workload:
        args.workload = list(WORKLOADS)
    return args


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else f"exit {out.returncode}"


def machine_info(tmp_dir: str, tmp_fs: dict[str, Any] | None = None) -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    info = tmp_fs if tmp_fs is not None else fsjournal.describe(tmp_dir)
    fs = f"{info['fstype']} (mounted on {info['mount']})" if info.get("mount") else "?"
    repo = Path(__file__).resolve().parent.parent
    commit = tool_version(["git", "-C", str(repo), "log", "-1", "--format=%h %s"])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "tmp_fs": fs,
        # journal False: every create pays for the inodes freed in the last minute
        "tmp_journal": info,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "lsyncd": tool_version(["lsyncd", "--version"]),
        "rsync": tool_version(["rsync", "--version"]),
        "inotifywait": tool_version(["inotifywait", "--help"]),
        "openssl": tool_version(["openssl", "version"]),
        "promoter": " ".join(promoter_argv()),
        "promoter_commit": commit,
        "lsyncd_delay_s": LSYNCD_DELAY,
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
    }


def factories(args: argparse.Namespace, workload: str) -> list[ToolFactory]:
    out: list[ToolFactory] = []
    if args.only in ("all", "promoter"):
        if workload == "latency":
            settles = [int(x) for x in args.latency_settle_ms.split(",") if x.strip()]
        else:
            settles = [args.settle_ms]
        level = "info" if workload == "catchup" else "warning"  # catchup waits for daemon.ready
        out += [promoter_factory(s, level) for s in settles]
    if args.only in ("all", "peers"):
        out += peer_factories(args.durable_peer)
    return out


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [
        t for t in ("lsyncd", "rsync", "inotifywait", "openssl", "cp") if not shutil.which(t)
    ]
    if missing and args.only != "promoter":
        print(
            f"missing tools: {', '.join(missing)} (as root: bash bench/install-peers.sh, "
            "Debian's lsyncd, rsync, inotify-tools and openssl)",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    if args.nice:
        os.nice(args.nice)  # inherited by every tool started from here
    tmp_fs = fsjournal.describe(args.tmp_dir)
    print(fsjournal.line(tmp_fs), flush=True)
    waited = teardown.wait_before_run(args.tmp_dir, tmp_fs["journal"], args.no_teardown_wait)
    started = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="promoter-bench-", dir=args.tmp_dir))
    ctx = Ctx(
        tmp=tmp,
        keep_tmp=args.keep_tmp,
        latency_files=args.latency_files,
        latency_rate=args.latency_rate,
        latency_runs=args.latency_runs,
        latency_poll_ms=args.latency_poll_ms,
        burst_files=args.burst_files,
        burst_runs=args.burst_runs,
        burst_deadline_s=args.burst_deadline,
        burst_repeats=args.burst_repeats,
        bigfile_mib=args.bigfile_mib,
        bigfile_repeats=args.bigfile_repeats,
        idle_runs=args.idle_runs,
        idle_files=args.idle_files,
        idle_seconds=args.idle_seconds,
        catchup_files=args.catchup_files,
        catchup_repeats=args.catchup_repeats,
        catchup_timeout_s=args.catchup_timeout,
        detector=args.detector,
        quiet_pct=args.quiet_pct,
        quiet_wait_s=args.quiet_wait,
        profile_dir=Path(args.profile).resolve() if args.profile else None,
    )
    results: dict[str, list[Result]] = {}
    doc: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine_info(args.tmp_dir, tmp_fs),
        "teardown_wait": waited,
        "args": {k: v for k, v in vars(args).items()},
        "results": results,
    }
    print(json.dumps(doc["machine"], indent=2), flush=True)
    try:
        block = b""
        for name in args.workload:
            runner: Callable[[Ctx, ToolFactory], Result]
            if name == "bigfile":
                if not block:
                    block = os.urandom(64 * workloads.MIB)
                big = block

                def runner(c: Ctx, f: ToolFactory, big: bytes = big) -> Result:
                    return workloads.bigfile(c, f, big)
            else:
                runner = getattr(workloads, name)
            results[name] = []
            for factory in factories(args, name):
                results[name].append(runner(ctx, factory))
            print("\n" + report.render({name: results[name]}), flush=True)
        for shape in args.burst_shape or []:
            key = f"shape:{shape}"
            results[key] = []
            chosen = factories(args, "catchup" if shape == "catchup" else "burst")
            if shape == "bigrun":  # promoter only: the target is its own flat cost per file
                chosen = chosen[:1] if args.only != "peers" else []
            elif shape != "catchup":  # what a durable file of its size costs now (floor.py)
                size = shapes.SHAPES[shape][2]
                results[key].append(floor.durable_creates(tmp / f"floor-{len(results)}", size,
                                                          500 if size <= 65536 else 50))
            for factory in chosen:
                if shape == "catchup":
                    results[key].append(workloads.catchup(ctx, factory))
                elif shape == "bigrun":
                    results[key].append(shapes.bigrun(ctx, factory, args.bigrun_files))
                else:
                    results[key].append(shapes.run_shape(ctx, factory, shape))
            print(f"\n{shape}: " + json.dumps(_brief(results[key]), default=str), flush=True)
    finally:
        stop_all()
        # remove, sync and stamp: the next run waits out ext4's window (teardown.py)
        doc["teardown"] = teardown.finish(tmp, args.tmp_dir, args.keep_tmp)
        doc["finished"] = (
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        if not args.no_save and results:
            RESULTS_DIR.mkdir(exist_ok=True)
            out = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
            out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
            print(f"results: {out}", flush=True)
    print("\n" + report.render(results))
    print(shapes.summary(results))
    return 0


def _brief(items: list[Result]) -> list[dict[str, Any]]:
    keys = ("tool", "files_per_s", "files_per_s_each", "missing", "duplicates", "cpu_s",
            "cpu_ms_per_file", "tenths_files_per_s", "sigterm_exit_s", "sigterm_rc",
            "warm_reconcile_s", "daemon_ready_s", "warm_start_s", "loadavg_before", "error")
    return [{k: r[k] for k in keys if k in r} for r in items]


if __name__ == "__main__":
    raise SystemExit(main())
