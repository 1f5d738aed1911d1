"""The burst shapes of issue 15 and DESIGN §9, each beside the peers, from one command.

    python -m bench.run --burst-shape all          # every shape below, then one summary
    python -m bench.run --burst-shape 5000x4k/1 --burst-shape bigrun

A shape is FILES x SIZE / RUNS: FILES files of SIZE bytes written as fast as possible,
round-robin over RUNS new runs (the burst workload, `workloads.burst`). Two more:

- `bigrun`: 100,000 empty files in one run (promoter only: its cost per file must stay
  flat as the run grows, DESIGN §9), sampled as it grows, then SIGTERM during a batch
  of a further 20,000 to time the exit;
- `catchup`: the start-up catch-up over 100,000 already-promoted files beside lsyncd's
  start-up rsync (`workloads.catchup`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from bench import report
from bench.procs import group_cpu_ticks
from bench.tools import PromoterTool, Tool, ToolFactory
from bench.workloads import Ctx, Result, burst, cpu_s, output_dir, pgid, with_tool, write_file

SHAPES: dict[str, tuple[int, int, int]] = {  # name: (files, runs, bytes a file)
    "1000x4k/10": (1000, 10, 4096),
    "5000x4k/50": (5000, 50, 4096),
    "5000x4k/1": (5000, 1, 4096),
    "200x1m/4": (200, 4, 1024 * 1024),
}
EXTRA = ("bigrun", "catchup")
ALL = (*SHAPES, *EXTRA)


def shape_ctx(ctx: Ctx, shape: str) -> Ctx:
    files, runs, size = SHAPES[shape]
    return dataclasses.replace(ctx, burst_files=files, burst_runs=runs, burst_size=size)


def run_shape(ctx: Ctx, factory: ToolFactory, shape: str) -> Result:
    result = burst(shape_ctx(ctx, shape), factory)
    result["shape"] = shape
    files = result.get("files") or 0
    if files and result.get("cpu_s") is not None:
        result["cpu_ms_per_file"] = result["cpu_s"] / files * 1000
    return result


def _entries(path: str) -> int:
    """Entries in a metadata.json, counted without parsing it (it is tens of MB here, and
    the harness shares the daemon's two cores)."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b'"filename"')
    except FileNotFoundError:
        return 0


def bigrun(ctx: Ctx, factory: ToolFactory, files: int = 100_000, extra: int = 20_000) -> Result:
    """`files` empty files into one run; (seconds, entries) sampled every 0.25 s; then
    `extra` more and SIGTERM once a batch of them is in flight: seconds to exit."""

    def body(tool: Tool) -> Result:
        if not isinstance(tool, PromoterTool):
            return {"skipped": "promoter only"}
        run = "bigrun"
        out = output_dir(tool, run)
        out.mkdir(parents=True)
        tool.start()
        ready_s = tool.wait_ready(ctx.ready_timeout_s)
        meta = str(tool.storage / "artifacts" / run / "metadata.json")
        cpu0 = group_cpu_ticks(pgid(tool))
        t0 = time.monotonic()
        for i in range(files):
            write_file(f"{out}/e{i:06d}", b"")
        write_s = time.monotonic() - t0
        samples: list[tuple[float, int]] = []
        deadline = t0 + ctx.burst_deadline_s + files / 200
        count = 0
        while count < files and time.monotonic() < deadline:
            time.sleep(0.25)  # the sampling interval of the growth curve
            count = _entries(meta)
            samples.append((round(time.monotonic() - t0, 3), count))
        cpu1 = group_cpu_ticks(pgid(tool))
        result: Result = {
            "ready_s": round(ready_s, 3),
            "files": files,
            "write_s": round(write_s, 2),
            "visible": count,
            "missing": files - count,
            "all_visible_s": samples[-1][0] if count >= files else None,
            # writer's last close to the last entry (to within the 0.25 s sampling)
            "drain_s": round(samples[-1][0] - write_s, 3) if count >= files else None,
            "cpu_s": cpu_s(cpu1 - cpu0),
            "samples": samples,
            "tenths_files_per_s": tenths(samples, files),
        }
        if count >= files:
            result["files_per_s"] = files / samples[-1][0]
        result["cpu_ms_per_file"] = result["cpu_s"] / files * 1000
        result.update(sigterm_during_batch(tool, out, meta, files, extra))
        return result

    return with_tool(ctx, "bigrun", factory, body)


def tenths(samples: list[tuple[float, int]], files: int) -> list[float | None]:
    """files/s over each tenth of the run's growth (flat when the cost per file is); the
    moment a count was reached is interpolated between the two samples around it."""
    def reached(target: int) -> float | None:
        prev_t, prev_n = 0.0, 0
        for t, n in samples:
            if n >= target:
                return prev_t + (t - prev_t) * (target - prev_n) / max(n - prev_n, 1)
            prev_t, prev_n = t, n
        return None

    rates: list[float | None] = []
    for k in range(10):
        lo, hi = files * k // 10, files * (k + 1) // 10
        t_lo, t_hi = reached(lo), reached(hi)
        rates.append((hi - lo) / (t_hi - t_lo) if t_lo is not None and t_hi is not None
                     and t_hi > t_lo else None)
    return rates


def sigterm_during_batch(tool: Tool, out: Any, meta: str, before: int, extra: int) -> Result:
    for i in range(extra):
        write_file(f"{out}/x{i:06d}", b"")
    deadline = time.monotonic() + 120
    while _entries(meta) <= before and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first batch of them is written: the next is in flight
    assert tool.proc is not None
    t0 = time.monotonic()
    rc = tool.proc.stop(timeout_s=60.0)  # SIGTERM to the group; SIGKILL only past 60 s
    return {"sigterm_exit_s": round(time.monotonic() - t0, 2), "sigterm_rc": rc,
            "entries_at_exit": _entries(meta), "extra_written": extra}


def summary(results: dict[str, list[Result]]) -> str:
    """One row per shape: promoter beside lsyncd and the inotifywait loop."""
    head = ("| shape | promoter files/s | lsyncd files/s | inotifywait+cp files/s | promoter ÷ "
            "lsyncd | promoter CPU ms/file | missing (promoter) | dups | load before |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows: list[str] = []
    notes: list[str] = []
    extra: list[str] = []
    for key, items in results.items():
        if not key.startswith("shape:"):
            continue
        by: dict[str, Result] = {}
        for r in items:
            name = "promoter" if r.get("is_promoter") else r["tool"].split()[0]
            by.setdefault(name + ("-fsync" if "--fsync" in r["tool"] else ""), r)
        p, lsy = by.get("promoter", {}), by.get("lsyncd", {})
        durable = by.get("lsyncd-fsync", {}).get("files_per_s")
        ino = next((r for n, r in by.items() if n.startswith("inotifywait")), {})
        pf, lf = p.get("files_per_s"), lsy.get("files_per_s")
        rows.append(
            f"| {key[6:]} | {_n(pf)} | {_n(lf)} | {_n(ino.get('files_per_s'))} | "
            f"{(pf / lf) if pf and lf else float('nan'):.2f}× | "
            f"{_n(p.get('cpu_ms_per_file'), 3)} | {p.get('missing', '—')} | "
            f"{p.get('duplicates', '—')} | {p.get('loadavg_before', float('nan')):.1f} |")
        if (low := by.get("floor", {}).get("floor_ms_per_file")) is not None:
            cpu = p.get("cpu_ms_per_file")
            ratio = f"{cpu / low:.2f}×" if cpu is not None and low else "—"
            extra.append(f"- {key[6:]}: the harness's own durable creates of its size (one "
                         f"fsync each) just before: {low:.3f} ms CPU a file (kernel "
                         f"{by['floor'].get('floor_sys_ms_per_file', 0):.3f}); promoter's "
                         f"CPU a file ÷ that: {ratio}")
        if key == "shape:catchup":
            extra.append(_catchup_note(p, lsy))
        elif line := report.writer_line(key[6:], items):
            extra.append(line)
        if durable:
            notes.append(f"- {key[6:]}: lsyncd + rsync --fsync {_n(durable)} files/s; promoter ÷ "
                         f"that {(pf / durable) if pf else float('nan'):.2f}×")
    if notes:
        rows += ["", "Beside the peer that flushes its copies too (--durable-peer):", *notes]
    if extra:
        rows += ["", *extra]
    return head + "\n".join(rows) + "\n" if rows else ""


def _catchup_note(p: Result, lsy: Result) -> str:
    """The catch-up row's figures: start to READY beside lsyncd's warm start-up rsync."""
    ready, rsync = _median(p.get("daemon_ready_s")), _median(lsy.get("warm_start_s"))
    ratio = f"{ready / rsync:.2f}×" if ready and rsync else "—"
    return (f"- catchup: promoter start to READY {_n(ready, 2)} s (median), warm reconcile "
            f"{_n(_median(p.get('warm_reconcile_s')), 2)} s; lsyncd warm start-up rsync "
            f"{_n(rsync, 2)} s; promoter ÷ that {ratio}")


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _n(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"
