"""The workloads of DESIGN §9, each run against one tool at a time.

Files are written as an agent writes them: open, write, close, into
sessions/<run_id>/output/; a file's close time is taken right after close().
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import Tracker, median, percentile
from bench.procs import (
    CLK_TCK,
    ToolFailed,
    group_cpu_split,
    group_cpu_ticks,
    group_mem,
    group_members,
    proc_mem,
    run_timed,
    wait_until,
)
from bench.tools import PromoterTool, Tool, ToolFactory, py_spy

Result = dict[str, Any]
MIB = 1024 * 1024


@dataclass
class Ctx:
    """Parameters shared by the workloads (set from the command line)."""

    tmp: Path
    keep_tmp: bool = False
    latency_files: int = 200
    latency_rate: float = 20.0
    latency_runs: int = 4
    latency_poll_ms: float = 1.0
    burst_files: int = 5000
    burst_runs: int = 50
    burst_deadline_s: float = 120.0
    burst_repeats: int = 3
    burst_size: int = 4096  # bytes a file (--burst-shape)
    bigfile_mib: int = 512
    bigfile_repeats: int = 3
    idle_runs: int = 1000
    idle_files: int = 100  # promoted files a run (1 KiB each): the store the daemon holds
    idle_seconds: float = 60.0
    catchup_files: int = 100_000
    catchup_files_per_run: int = 100
    catchup_repeats: int = 3
    catchup_timeout_s: float = 1800.0
    ready_timeout_s: float = 120.0
    detector: str = "inotify"  # how "visible" is seen: inotify | poll
    quiet_pct: float = 15.0  # wait for the machine to be under this % busy before a part
    quiet_wait_s: float = 180.0
    profile_dir: Path | None = None  # py-spy record promoter's daemon into this folder


# ---------------------------------------------------------------- helpers


def write_file(path: str, data: bytes | memoryview) -> int:
    """open, write, close; the monotonic time (ns) right after close()."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        for _ in range(len(view) + 1):  # bounded: each write moves at least one byte
            if not view:
                break
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return time.monotonic_ns()


def write_big(path: str, block: bytes, size: int) -> int:
    """Write size bytes (block repeated) in 8 MiB writes; the time right after close()."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(block)
        chunk = 8 * MIB
        written = 0
        for _ in range(size // chunk + len(block) + 2):
            if written >= size:
                break
            start = written % len(block)
            n = min(chunk, size - written, len(block) - start)
            written += os.write(fd, view[start : start + n])
    finally:
        os.close(fd)
    return time.monotonic_ns()


def output_dir(tool: Tool, run_id: str) -> Path:
    return tool.sessions / run_id / "output"


def with_tool(
    ctx: Ctx, workload: str, factory: ToolFactory, body: Callable[[Tool], Result]
) -> Result:
    """Run body against a fresh tool in a folder of its own; always stop and clean up."""
    base = ctx.tmp / f"{workload}-{len(os.listdir(ctx.tmp))}"
    base.mkdir(parents=True)
    tool = factory(base)
    if ctx.profile_dir is not None and tool.is_promoter:
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        tool.profile_to = ctx.profile_dir / f"{workload}-{tool.slug}.txt"
    result: Result = {"tool": tool.name, "is_promoter": tool.is_promoter}
    if isinstance(tool, PromoterTool):
        result["settle_ms"] = tool.settle_ms
    if ctx.quiet_pct > 0:
        quiet = wait_machine_quiet(ctx.quiet_pct, ctx.quiet_wait_s)
        result["machine_quiet_wait"] = quiet
    print(f"[{workload}] {tool.name} ...", flush=True)
    t0 = time.monotonic()
    busy0, self0 = system_busy_s(), self_cpu_s()
    result["loadavg_before"] = os.getloadavg()[0]
    try:
        tool.prepare()
        result.update(body(tool))
    except (ToolFailed, OSError) as exc:
        result["error"] = str(exc)
        print(f"[{workload}] {tool.name}: ERROR {exc}", flush=True)
    finally:
        result["exit_code"] = tool.stop()
        if tool.proc is not None and "error" in result:
            result["log_tail"] = tool.proc.log_tail(1500)
        # the tree stays until the run's end (run.py removes ctx.tmp): on an ext4 without a
        # journal (this VM's) every new inode scans past the inodes freed in the last 60-360 s,
        # so a teardown here would tax the next tool's burst (r7-cpu: 0.38 -> 0.68 CPU ms a
        # file after 30,000 deletions)
    result["wall_s"] = round(time.monotonic() - t0, 2)
    # how busy the machine was meanwhile (other engineers' tests share these 2 cores)
    result["machine_busy_cpu_s"] = round(system_busy_s() - busy0, 2)
    result["harness_cpu_s"] = round(self_cpu_s() - self0, 2)
    return result


def flush_disk() -> float:
    """`sync` before a round, for every tool alike: the writeback of earlier rounds and
    shapes (sources, and the peers' unflushed mirrors) would otherwise land on this round's
    flushes, which only promoter makes. Returns how long it took."""
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0


def wait_machine_quiet(threshold_pct: float, max_wait_s: float) -> Result:
    """Wait (bounded) until the machine is less than threshold_pct busy over one second.

    The machine is shared (other engineers run test suites with a browser on the same two
    cores); starting a tool's part in a quiet second keeps their load out of the figures as
    far as we can. Gives up after max_wait_s and says so in the results.
    """
    cores = os.cpu_count() or 1
    t0 = time.monotonic()
    pct = 100.0
    for _ in range(int(max_wait_s) + 1):
        b0, w0 = system_busy_s(), time.monotonic()
        time.sleep(1.0)  # the sampling window of the measurement
        pct = (system_busy_s() - b0) / (time.monotonic() - w0) / cores * 100
        if pct < threshold_pct or time.monotonic() - t0 >= max_wait_s:
            break
    return {
        "busy_pct": round(pct, 1),
        "waited_s": round(time.monotonic() - t0, 1),
        "quiet": pct < threshold_pct,
    }


def system_busy_s() -> float:
    """CPU seconds spent busy by the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def self_cpu_s() -> float:
    """CPU seconds of this harness process (writer and tracker threads)."""
    t = os.times()
    return t.user + t.system


def tracker_for(ctx: Ctx, tool: Tool, poll_interval_s: float, max_life_s: float) -> Tracker:
    """A Tracker on the tool's destination: inotify events, or polling every poll_interval_s."""
    if ctx.detector == "poll":
        return Tracker(tool.destination(), poll_interval_s, max_life_s, mode="poll")
    return Tracker(tool.destination(), 0.05, max_life_s, mode="inotify")


def cpu_s(ticks: int) -> float:
    return ticks / CLK_TCK


def pgid(tool: Tool) -> int:
    assert tool.proc is not None
    return tool.proc.pid


def promoter_checks(tool: Tool, run_ids: list[str], result: Result) -> None:
    """Duplicates and unreadable metadata.json (after the daemon stopped)."""
    if not isinstance(tool, PromoterTool):
        return
    dest = tool.destination()
    dups, total = dest.duplicates(run_ids)
    result["duplicates"] = dups
    result["entries"] = total
    result["metadata_read_errors"] = dest.read_errors


# ---------------------------------------------------------------- 1. latency


def latency(ctx: Ctx, factory: ToolFactory) -> Result:
    def body(tool: Tool) -> Result:
        runs = [f"lat{i}" for i in range(ctx.latency_runs)]
        for run in runs:
            output_dir(tool, run).mkdir(parents=True)
        tool.start()
        ready_s = tool.wait_ready(ctx.ready_timeout_s)
        data = os.urandom(4096 * ctx.latency_files)
        cpu0 = group_cpu_ticks(pgid(tool))
        period = 1.0 / ctx.latency_rate
        max_life = ctx.latency_files * period + 120
        with tracker_for(ctx, tool, ctx.latency_poll_ms / 1000, max_life) as tracker:
            t0 = time.monotonic()
            for i in range(ctx.latency_files):
                delay = t0 + i * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the schedule of a steady rate, not a wait for a result
                run = runs[i % len(runs)]
                rel = f"f{i:05d}.bin"
                sample = tracker.add(run, rel, 4096)
                path = str(output_dir(tool, run) / rel)
                sample.t_close_ns = write_file(path, data[i * 4096 : (i + 1) * 4096])
            write_s = time.monotonic() - t0
            tracker.wait_all(30.0)
        cpu1 = group_cpu_ticks(pgid(tool))
        lats = [s.latency_ms for s in tracker.samples if s.latency_ms is not None]
        result: Result = {
            "ready_s": round(ready_s, 3),
            "files": ctx.latency_files,
            "rate_per_s": ctx.latency_rate,
            "write_s": round(write_s, 2),
            "visible": len(lats),
            "missing": ctx.latency_files - len(lats),
            "p50_ms": percentile(lats, 50),
            "p90_ms": percentile(lats, 90),
            "p99_ms": percentile(lats, 99),
            "max_ms": max(lats) if lats else None,
            "min_ms": min(lats) if lats else None,
            "cpu_s": cpu_s(cpu1 - cpu0),
            "tracker": tracker.summary(),
        }
        result["stop_exit_code"] = tool.stop()
        promoter_checks(tool, runs, result)
        return result

    return with_tool(ctx, "latency", factory, body)


# ---------------------------------------------------------------- 2. burst


def payload(data: bytes, i: int, size: int) -> bytes | memoryview:
    """File i's bytes: its own slice of `data` up to 64 KiB; above, `data` (one block of
    `size`) with the file's number in its first 8 bytes, so that no two files are alike."""
    if size <= 64 * 1024:
        return memoryview(data)[i * size : (i + 1) * size]
    return i.to_bytes(8, "big") + data[8:size]


def burst_data(ctx: Ctx) -> bytes:
    size = ctx.burst_size
    return os.urandom(size * ctx.burst_files if size <= 64 * 1024 else size)


def burst_round(ctx: Ctx, tool: Tool, prefix: str, data: bytes) -> Result:
    """One burst: burst_files files round-robin over burst_runs new runs, as fast as possible."""
    runs = [f"{prefix}{i:02d}" for i in range(ctx.burst_runs)]
    split0 = group_cpu_split(pgid(tool))
    cpu0 = group_cpu_ticks(pgid(tool))
    max_life = ctx.burst_deadline_s + 300
    with tracker_for(ctx, tool, 0.01, max_life) as tracker:
        made: set[str] = set()
        t_first = time.monotonic_ns()
        for i in range(ctx.burst_files):
            run = runs[i % len(runs)]
            out = output_dir(tool, run)
            if run not in made:
                # runs appear during the burst, as new sessions do
                out.mkdir(parents=True)
                made.add(run)
            rel = f"f{i:05d}.bin"
            sample = tracker.add(run, rel, ctx.burst_size)
            sample.t_close_ns = write_file(str(out / rel), payload(data, i, ctx.burst_size))
        t_last = time.monotonic_ns()
        all_visible = tracker.wait_all(ctx.burst_deadline_s)
    cpu1 = group_cpu_ticks(pgid(tool))
    split1 = group_cpu_split(pgid(tool))
    seen = [s.t_visible_ns for s in tracker.samples if s.t_visible_ns is not None]
    result: Result = {
        "runs_ids": runs,
        "write_s": (t_last - t_first) / 1e9,
        "visible": len(seen),
        "missing": ctx.burst_files - len(seen),
        "cpu_s": cpu_s(cpu1 - cpu0),
        "cpu_user_s": cpu_s(split1[0] - split0[0]),
        "cpu_sys_s": cpu_s(split1[1] - split0[1]),
        "tracker": tracker.summary(),
        "all_visible_s": None,
        "files_per_s": None,
    }
    if all_visible and seen:
        elapsed = (max(seen) - t_first) / 1e9
        result["all_visible_s"] = elapsed
        result["files_per_s"] = ctx.burst_files / elapsed
        # the writer's last close to the last file visible: what the tool added after the
        # writer (small: the shape measured the writer); an event read a few µs before the
        # writer read its clock would make it negative
        result["drain_s"] = max(0.0, elapsed - result["write_s"])
    elif seen:
        result["last_visible_s"] = (max(seen) - t_first) / 1e9
    return result


def burst(ctx: Ctx, factory: ToolFactory) -> Result:
    def body(tool: Tool) -> Result:
        data = burst_data(ctx)
        tool.start()
        ready_s = tool.wait_ready(ctx.ready_timeout_s)
        rounds: list[Result] = []
        for k in range(ctx.burst_repeats):
            if k and ctx.quiet_pct > 0:
                wait_machine_quiet(ctx.quiet_pct, ctx.quiet_wait_s)
            synced_s = flush_disk()
            rounds.append(burst_round(ctx, tool, f"burst{k}x", data))
            r = rounds[-1]
            r["sync_before_s"] = round(synced_s, 3)
            drain = "—" if r.get("drain_s") is None else f"{r['drain_s']:.3f}"
            print(f"    round {k}: files/s {r['files_per_s']}, missing {r['missing']}, "
                  f"write {r['write_s']:.3f} s, drain {drain} s, "
                  f"sync before {synced_s:.2f} s, cpu user {r['cpu_user_s']:.3f} s "
                  f"sys {r['cpu_sys_s']:.3f} s", flush=True)
        fps = [r["files_per_s"] for r in rounds]
        complete = [x for x in fps if x is not None]
        result: Result = {
            "ready_s": round(ready_s, 3),
            "files": ctx.burst_files,
            "runs": ctx.burst_runs,
            "size_bytes": ctx.burst_size,
            "rounds": rounds,
            "deadline_s": ctx.burst_deadline_s,
            "missing": sum(r["missing"] for r in rounds),
            "files_total": ctx.burst_files * len(rounds),
            "write_s": median([r["write_s"] for r in rounds]),
            "cpu_s": median([r["cpu_s"] for r in rounds]),
            # a round with missing files has no throughput: it counts as the worst
            "files_per_s": median([x if x is not None else 0.0 for x in fps]),
            "files_per_s_each": fps,
            "all_visible_s": median([r["all_visible_s"] for r in rounds])
            if len(complete) == len(rounds)
            else None,
            "drain_s": median([r["drain_s"] for r in rounds])
            if len(complete) == len(rounds)
            else None,
        }
        if not complete:
            result["files_per_s"] = None
        result["stop_exit_code"] = tool.stop()
        promoter_checks(tool, [run for r in rounds for run in r.pop("runs_ids")], result)
        return result

    return with_tool(ctx, "burst", factory, body)


# ---------------------------------------------------------------- 3. big file


def bigfile(ctx: Ctx, factory: ToolFactory, block: bytes) -> Result:
    size = ctx.bigfile_mib * MIB

    def body(tool: Tool) -> Result:
        runs = [f"big{k}" for k in range(ctx.bigfile_repeats)]
        for run in runs:
            output_dir(tool, run).mkdir(parents=True)
        tool.start()
        ready_s = tool.wait_ready(ctx.ready_timeout_s)
        iterations: list[Result] = []
        for run in runs:
            src = output_dir(tool, run) / "big.bin"
            os.sync()
            with tracker_for(ctx, tool, 0.002, 600) as tracker:
                sample = tracker.add(run, "big.bin", size)
                t_open = time.monotonic_ns()
                t_close = sample.t_close_ns = write_big(str(src), block, size)
                ok = tracker.wait_all(180.0)
            it: Result = {"write_s": (t_close - t_open) / 1e9}
            it["visible_s"] = (sample.latency_ms / 1000) if ok and sample.latency_ms else None
            # the floor, on the same file in the same run: page cache warm, same filesystem
            os.sync()
            copy = tool.base / "cp-baseline.bin"
            rc, it["cp_s"] = run_timed(["cp", str(src), str(copy)], tool.base / "cp.out", 120)
            # a durable copy, as promoter must make one (§2: an entry appears only once its
            # copy is on disk): the same cp, then fsync of the copy (coreutils `sync FILE`)
            rc3, it["fsync_s"] = run_timed(["sync", str(copy)], tool.base / "sync.out", 120)
            it["cp_fsync_s"] = it["cp_s"] + it["fsync_s"]
            copy.unlink(missing_ok=True)
            os.sync()
            rc2, it["openssl_s"] = run_timed(
                ["openssl", "dgst", "-sha256", str(src)], tool.base / "openssl.out", 120
            )
            if rc or rc2 or rc3:
                raise ToolFailed(f"baseline failed: cp rc={rc}, openssl rc={rc2}, sync rc={rc3}")
            it["slower_s"] = max(it["cp_s"], it["openssl_s"])
            iterations.append(it)
            print(f"    {run}: {it}", flush=True)
        vis = [it["visible_s"] for it in iterations if it["visible_s"] is not None]
        result: Result = {
            "ready_s": round(ready_s, 3),
            "size_mib": ctx.bigfile_mib,
            "iterations": iterations,
            "missing": len(iterations) - len(vis),
            "visible_s_median": median(vis) if vis else None,
            "visible_s_max": max(vis) if vis else None,
            "cp_s_median": median([it["cp_s"] for it in iterations]),
            "openssl_s_median": median([it["openssl_s"] for it in iterations]),
            "slower_s_median": median([it["slower_s"] for it in iterations]),
            "cp_fsync_s_median": median([it["cp_fsync_s"] for it in iterations]),
        }
        result["stop_exit_code"] = tool.stop()
        return result

    return with_tool(ctx, "bigfile", factory, body)


# ---------------------------------------------------------------- 4. idle


def wait_quiet(pg: int, timeout_s: float, quiet_s: float = 2.0) -> float:
    """Poll the group's CPU ticks until unchanged for quiet_s; seconds waited."""
    last = [group_cpu_ticks(pg), time.monotonic()]

    def quiet() -> bool:
        now_ticks = group_cpu_ticks(pg)
        if now_ticks != last[0]:
            last[0] = now_ticks
            last[1] = time.monotonic()
            return False
        return time.monotonic() - last[1] >= quiet_s

    return wait_until(quiet, timeout_s, interval_s=0.25, what="the tool to go quiet")


def idle(ctx: Ctx, factory: ToolFactory) -> Result:
    def body(tool: Tool) -> Result:
        runs = [f"idle{i:04d}" for i in range(ctx.idle_runs)]
        # every run holds idle_files promoted files, as a store in use does: the daemon's
        # memory grows with what it has promoted, not with the runs alone (DESIGN §9)
        names = [f"file{j:04d}.bin" for j in range(max(1, ctx.idle_files))]
        data = os.urandom(1024)
        for run in runs:
            out = output_dir(tool, run)
            out.mkdir(parents=True)
            for name in names:
                write_file(str(out / name), data)
        result: Result = {"runs": ctx.idle_runs, "files_per_run": len(names),
                          "window_s": ctx.idle_seconds}
        # "all already promoted": promoter reconcile, or an rsync for the peers' mirror
        if isinstance(tool, PromoterTool):
            (tool.storage / "artifacts").mkdir(parents=True, exist_ok=True)
            rc, secs = run_timed(tool.cli("reconcile"), tool.base / "reconcile.out", 900)
        else:
            mirror = getattr(tool, "mirror")  # noqa: B009 - the peers all have one
            rc, secs = run_timed(
                ["rsync", "-a", f"{tool.sessions}/", f"{mirror}/"], tool.base / "rsync.out", 900
            )
        result["prepopulate"] = {"rc": rc, "seconds": round(secs, 2)}
        tool.start()
        result["ready_s"] = round(tool.wait_ready(ctx.ready_timeout_s), 3)
        with tracker_for(ctx, tool, 0.05, 600) as tracker:
            now = time.monotonic_ns()
            for run in runs:
                for name in names:
                    tracker.add(run, name, len(data), now)
            result["all_promoted"] = tracker.wait_all(300.0)
            result["missing"] = tracker.pending_count()
        pg = pgid(tool)
        result["quiet_after_s"] = round(wait_quiet(pg, 120.0), 2)
        rss_max = 0
        cpu0, t0 = group_cpu_ticks(pg), time.monotonic()
        seconds = max(1, round(ctx.idle_seconds))
        for k in range(1, seconds + 1):
            # the measurement window: sample memory once a second
            time.sleep(max(0.0, t0 + k - time.monotonic()))
            assert tool.proc is not None
            if not tool.proc.alive():
                raise ToolFailed(f"{tool.name} died during the idle window: {tool.proc.log_tail()}")
            rss_max = max(rss_max, group_mem(pg).rss_kib)
        cpu1, t1 = group_cpu_ticks(pg), time.monotonic()
        mem = group_mem(pg)
        main = proc_mem(pg)
        window = t1 - t0
        result.update(
            {
                "window_s": round(window, 2),
                "cpu_s": cpu_s(cpu1 - cpu0),
                "cpu_pct": cpu_s(cpu1 - cpu0) / window * 100,
                "cpu_tick_s": 1 / CLK_TCK,
                "rss_mib": mem.rss_kib / 1024,
                "rss_max_mib": rss_max / 1024,
                "hwm_mib": mem.hwm_kib / 1024,
                "main_rss_mib": main.rss_kib / 1024,
                "main_hwm_mib": main.hwm_kib / 1024,
                "processes": len(group_members(pg)),
            }
        )
        result["stop_exit_code"] = tool.stop()
        return result

    return with_tool(ctx, "idle", factory, body)


# ---------------------------------------------------------------- 5. start-up catch-up


def build_tree(tool: Tool, n_files: int, per_run: int) -> list[str]:
    block = os.urandom(1024)
    runs: list[str] = []
    for i in range((n_files + per_run - 1) // per_run):
        run = f"catch{i:05d}"
        runs.append(run)
        out = output_dir(tool, run)
        out.mkdir(parents=True)
        for j in range(min(per_run, n_files - i * per_run)):
            write_file(str(out / f"f{j:04d}.txt"), f"{run}/{j}\n".encode() + block)
    return runs


def read_chars(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def catchup(ctx: Ctx, factory: ToolFactory) -> Result:
    def body(tool: Tool) -> Result:
        t0 = time.monotonic()
        runs = build_tree(tool, ctx.catchup_files, ctx.catchup_files_per_run)
        result: Result = {
            "files": ctx.catchup_files,
            "runs": len(runs),
            "build_s": round(time.monotonic() - t0, 2),
        }
        print(f"    tree of {ctx.catchup_files} files built in {result['build_s']} s", flush=True)
        if isinstance(tool, PromoterTool):
            catchup_promoter(ctx, tool, runs, result)
        else:
            catchup_peer(ctx, tool, result)
        return result

    return with_tool(ctx, "catchup", factory, body)


def catchup_promoter(ctx: Ctx, tool: PromoterTool, runs: list[str], result: Result) -> None:
    # cold: the store is empty, every file is copied and hashed (only `promoter run` creates
    # a store: an empty artifacts/ is the store before its first promotion)
    (tool.storage / "artifacts").mkdir(parents=True, exist_ok=True)
    rc, secs = run_timed(
        tool.cli("reconcile"), tool.base / "reconcile-cold.out", ctx.catchup_timeout_s
    )
    result["cold_reconcile"] = {"rc": rc, "seconds": secs}
    print(f"    cold reconcile: rc={rc} {secs:.2f} s", flush=True)
    if rc != 0:
        raise ToolFailed(
            f"promoter reconcile exited {rc}: {(tool.base / 'reconcile-cold.out').read_text()[-1500:]}"
        )
    dest = tool.destination()
    dups, total = dest.duplicates(runs)
    result["entries_after_cold"] = total
    result["duplicates"] = dups
    # warm: everything already promoted; the figure the target is about
    warm: list[float] = []
    for k in range(ctx.catchup_repeats):
        rc, secs = run_timed(
            tool.cli("reconcile"), tool.base / f"reconcile-warm{k}.out", ctx.catchup_timeout_s
        )
        if rc != 0:
            raise ToolFailed(f"warm promoter reconcile exited {rc}")
        warm.append(secs)
        print(f"    warm reconcile {k}: {secs:.2f} s", flush=True)
    result["warm_reconcile_s"] = warm
    if tool.profile_to is not None:
        # one more warm pass under py-spy (not counted in the figures)
        out = tool.profile_to.with_name(tool.profile_to.stem + "-warm-reconcile.txt")
        argv = [
            py_spy(),
            "record",
            "--idle",
            "--threads",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--",
            *tool.cli("reconcile"),
        ]
        rc, secs = run_timed(argv, out.with_suffix(".log"), ctx.catchup_timeout_s)
        result["profiled_warm_reconcile"] = {"rc": rc, "seconds": secs, "profile": str(out)}
    # the daemon: spawn until daemon.ready (its start-up catch-up comes before it, §5)
    starts: list[float] = []
    rchars: list[int | None] = []
    result["daemon_ready_s"] = starts
    result["daemon_rchar_at_ready"] = rchars
    for k in range(ctx.catchup_repeats):
        proc = tool.start()
        try:
            secs = tool.wait_started(ctx.catchup_timeout_s)
            rchars.append(read_chars(proc.pid))
        except ToolFailed as exc:
            # keep the reconcile figures; say plainly that the daemon part is missing
            result["daemon_error"] = str(exc)
            print(f"    daemon: ERROR {exc}", flush=True)
            break
        finally:
            tool.stop()
            tool.proc = None
        starts.append(secs)
        print(f"    daemon start to daemon.ready {k}: {secs:.2f} s", flush=True)
    _, total_after = dest.duplicates(runs)
    result["entries_after"] = total_after


def catchup_peer(ctx: Ctx, tool: Tool, result: Result) -> None:
    repeats = ctx.catchup_repeats if tool.slug == "lsyncd" else 1
    starts: list[float] = []
    for k in range(repeats + (1 if tool.slug == "lsyncd" else 0)):
        tool.start()
        try:
            secs = tool.wait_started(ctx.catchup_timeout_s)
        finally:
            tool.stop()
            tool.proc = None
        starts.append(secs)
        print(f"    start {k}: {secs:.2f} s", flush=True)
    if tool.slug == "lsyncd":
        # first start: empty mirror (everything copied); later: mirror already up to date
        result["cold_start_s"] = starts[0]
        result["warm_start_s"] = starts[1:]
        mirror = getattr(tool, "mirror")  # noqa: B009 - the peers all have one
        result["mirrored_files"] = sum(
            len(files) for folder, _, files in os.walk(mirror) if "/catch" in folder
        )
    else:
        result["watches_established_s"] = starts
        result["note"] = "no catch-up: files written while it was down are never copied"
