"""Markdown tables from the results, with DESIGN §9's targets and a verdict for promoter."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

Result = dict[str, Any]

IDLE_CPU_PCT = 0.1
IDLE_RSS_MIB = 80.0
CATCHUP_S = 5.0
LATENCY_SLACK_MS = 30.0
BIGFILE_FACTOR = 1.25
# a drain (writer's last close -> last file visible) under this share of the all-visible
# time: the shape timed the harness's writer, not the tool
WRITER_BOUND = 0.15


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_list(values: Sequence[float] | None, digits: int = 2) -> str:
    if not values:
        return "—"
    return " / ".join(fmt(v, digits) for v in values)


def verdict(ok: bool, miss_by: str = "") -> str:
    return "PASS" if ok else f"**MISS**{(' ' + miss_by) if miss_by else ''}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def error_row(r: Result, width: int) -> list[str]:
    row = [r["tool"]] + ["—"] * (width - 3)
    note = "not measured: " + str(r.get("error", "?")).splitlines()[0][:160]
    return [*row, "see note" if r.get("is_promoter") else "—", note]


def latency_table(results: Sequence[Result]) -> str:
    header = [
        "tool",
        "files",
        "missing",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "target",
        "verdict",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append(error_row(r, len(header)))
            continue
        target, ok_txt = "—", "—"
        if r.get("is_promoter"):
            limit = r["settle_ms"] + LATENCY_SLACK_MS
            target = f"p99 ≤ {limit:.0f} ms"
            ok = r["missing"] == 0 and r["p99_ms"] <= limit
            ok_txt = verdict(ok, f"(+{r['p99_ms'] - limit:.0f} ms)" if r["p99_ms"] > limit else "")
        rows.append(
            [
                r["tool"],
                fmt(r["files"]),
                fmt(r["missing"]),
                fmt(r["p50_ms"]),
                fmt(r["p90_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["max_ms"]),
                fmt(r["cpu_s"], 2),
                target,
                ok_txt,
            ]
        )
    return table(header, rows)


def drains(r: Result) -> tuple[list[tuple[float, float]], int]:
    """(drain s, all visible s) of each complete round, and the number of rounds. Results
    written before drain_s was recorded have it derived: all_visible_s - write_s. A result
    without rounds (bigrun) is its own single round."""
    rounds = r.get("rounds")
    if not isinstance(rounds, list):
        rounds = [r]
    out: list[tuple[float, float]] = []
    for x in rounds:
        seen, wrote = x.get("all_visible_s"), x.get("write_s")
        if not isinstance(seen, int | float) or not isinstance(wrote, int | float):
            continue
        drain = x.get("drain_s")
        out.append((drain if isinstance(drain, int | float) else max(0.0, seen - wrote), seen))
    return out, len(rounds)


def drain_median(r: Result) -> tuple[float | None, float | None, str]:
    """(median drain s, median all visible s, "" or " (k of n rounds)")."""
    found, n = drains(r)
    if not found:
        return None, None, ""
    partial = f" ({len(found)} of {n} rounds)" if len(found) < n else ""
    return (statistics.median(d for d, _ in found), statistics.median(s for _, s in found),
            partial)


def writer_bound(r: Result) -> bool:
    """The tool's last file came within WRITER_BOUND of its all-visible time after the
    writer's last close: its files/s is the writer's."""
    drain, seen, _ = drain_median(r)
    return drain is not None and seen is not None and seen > 0 and drain < WRITER_BOUND * seen


def short_name(r: Result) -> str:
    if r.get("is_promoter"):
        return "promoter"
    return str(r["tool"]).split()[0] + (" --fsync" if "--fsync" in str(r["tool"]) else "")


def writer_line(label: str, results: Sequence[Result]) -> str:
    """One line: each tool's writer time and drain (medians), and which are writer-bound."""
    items = []
    for r in results:
        drain, seen, partial = drain_median(r)
        if drain is None or seen is None or "error" in r:
            continue
        share = drain / seen * 100 if seen else math.nan
        bound = ": bound by the writer" if writer_bound(r) else ""
        items.append(f"{short_name(r)} write {fmt(r.get('write_s'), 2)} s, drain "
                     f"{drain:.3f} s ({share:.0f} % of all visible {seen:.2f} s{bound})"
                     f"{partial}")
    if not items:
        return ""
    return f"- {label}, writer's last close → tool's last file (medians): " + "; ".join(items)


def burst_table(results: Sequence[Result]) -> str:
    header = [
        "tool",
        "files × rounds",
        "missing (all rounds)",
        "dups",
        "write s (median)",
        "all visible s (median)",
        "drain s (median)",
        "files/s (median)",
        "files/s each round",
        "CPU s (median)",
        "target",
        "verdict",
    ]
    lsyncd = next((r for r in results if r["tool"].startswith("lsyncd") and "error" not in r), None)
    peer_fps = lsyncd.get("files_per_s") if lsyncd else None
    rows = []
    for r in results:
        if "error" in r:
            rows.append(error_row(r, len(header)))
            continue
        target, ok_txt = "—", "—"
        if r.get("is_promoter"):
            fps = r.get("files_per_s")
            if peer_fps is None:
                target = "files/s ≥ lsyncd's (no lsyncd figure in this run), 0 missing, 0 dups"
                ok = r["missing"] == 0 and r.get("duplicates", 0) == 0
                ok_txt = "PASS (missing/dups only)" if ok else verdict(False)
            else:
                target = f"≥ {peer_fps:,.0f} files/s, 0 missing, 0 dups"
                ok = (
                    fps is not None
                    and fps >= peer_fps
                    and r["missing"] == 0
                    and r.get("duplicates", 0) == 0
                )
                by = f"({fps / peer_fps:.2f}× lsyncd)" if fps else ""
                ok_txt = verdict(ok, by)
        rows.append(
            [
                r["tool"],
                f"{fmt(r['files'])} × {len(r.get('rounds', [None]))}",
                fmt(r["missing"]),
                fmt(r.get("duplicates")),
                fmt(r["write_s"], 2),
                fmt(r.get("all_visible_s"), 2),
                fmt(drain_median(r)[0], 3) + drain_median(r)[2],
                fmt(r.get("files_per_s"), 0),
                " / ".join(fmt(x, 0) for x in r.get("files_per_s_each", [])) or "—",
                fmt(r["cpu_s"], 2),
                target,
                ok_txt,
            ]
        )
    bound = [r["tool"] for r in results if "error" not in r and writer_bound(r)]
    note = (f"\n\nBound by the writer (drain under {WRITER_BOUND:.0%} of all visible: files/s "
            f"measures the harness's writer, not the tool): {', '.join(bound)}." if bound else "")
    return table(header, rows) + note


def bigfile_table(results: Sequence[Result]) -> str:
    header = [
        "tool",
        "visible s (median / worst)",
        "cp s",
        "openssl sha256 s",
        "ratio to slower",
        "cp + fsync s (durable copy)",
        "ratio to it",
        "target",
        "verdict",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append(error_row(r, len(header)))
            continue
        vis, slower = r.get("visible_s_median"), r["slower_s_median"]
        ratio = f"{vis / slower:.2f}×" if vis else "—"
        durable = r.get("cp_fsync_s_median")
        target, ok_txt = "—", "—"
        if r.get("is_promoter"):
            limit = r["settle_ms"] / 1000 + BIGFILE_FACTOR * slower
            target = f"≤ {limit:.2f} s"
            ok = vis is not None and r["missing"] == 0 and vis <= limit
            ok_txt = verdict(ok, f"(+{vis - limit:.2f} s)" if vis and vis > limit else "")
        rows.append(
            [
                r["tool"],
                f"{fmt(vis, 2)} / {fmt(r.get('visible_s_max'), 2)}",
                fmt(r["cp_s_median"], 2),
                fmt(r["openssl_s_median"], 2),
                ratio,
                fmt(durable, 2),
                f"{vis / durable:.2f}×" if vis and durable else "—",
                target,
                ok_txt,
            ]
        )
    return table(header, rows)


def idle_table(results: Sequence[Result]) -> str:
    header = [
        "tool",
        "runs × files",
        "CPU % over window",
        "CPU s",
        "RSS MiB",
        "peak RSS MiB",
        "processes",
        "target",
        "verdict",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append(error_row(r, len(header)))
            continue
        target, ok_txt = "—", "—"
        if r.get("is_promoter"):
            target = f"CPU < {IDLE_CPU_PCT} %, RSS < {IDLE_RSS_MIB:.0f} MiB"
            misses = []
            if r["cpu_pct"] >= IDLE_CPU_PCT:
                misses.append(f"CPU {r['cpu_pct']:.2f} %")
            if r["rss_mib"] >= IDLE_RSS_MIB:
                misses.append(f"RSS +{r['rss_mib'] - IDLE_RSS_MIB:.0f} MiB")
            ok_txt = verdict(not misses and r.get("all_promoted", False), ", ".join(misses))
        rows.append(
            [
                r["tool"],
                f"{fmt(r['runs'])} × {fmt(r.get('files_per_run', 1))}",
                f"{r['cpu_pct']:.3f} % ({r['window_s']:.0f} s)",
                fmt(r["cpu_s"], 2),
                fmt(r["rss_mib"]),
                fmt(r["hwm_mib"]),
                fmt(r["processes"]),
                target,
                ok_txt,
            ]
        )
    return table(header, rows)


def catchup_table(results: Sequence[Result]) -> str:
    header = [
        "tool",
        "files",
        "cold: empty store/mirror s",
        "already promoted/mirrored s (each)",
        "daemon start → ready s (each)",
        "target",
        "verdict",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append(error_row(r, len(header)))
            continue
        if r.get("is_promoter"):
            warm = r["warm_reconcile_s"]
            ready = r["daemon_ready_s"]
            worst = max([*warm, *ready])
            ok = worst < CATCHUP_S and r["duplicates"] == 0
            by = f"(worst {worst:.2f} s, {worst / CATCHUP_S:.1f}× the target)"
            ok_txt = verdict(ok, by if worst >= CATCHUP_S else "")
            ready_txt = fmt_list(ready)
            if "daemon_error" in r:
                ready_txt = "not measured: " + r["daemon_error"].splitlines()[0][:120]
                if ok:
                    ok_txt = "PASS (reconcile only; daemon not measured)"
            rows.append(
                [
                    r["tool"],
                    fmt(r["files"]),
                    fmt(r["cold_reconcile"]["seconds"], 2) + " (reconcile)",
                    fmt_list(warm) + " (reconcile)",
                    ready_txt,
                    f"< {CATCHUP_S:.0f} s",
                    ok_txt,
                ]
            )
        elif "cold_start_s" in r:
            rows.append(
                [
                    r["tool"],
                    fmt(r["files"]),
                    fmt(r["cold_start_s"], 2) + " (start-up rsync)",
                    fmt_list(r["warm_start_s"]) + " (start-up rsync)",
                    "(same)",
                    "—",
                    "—",
                ]
            )
        else:
            rows.append(
                [
                    r["tool"],
                    fmt(r["files"]),
                    "no catch-up",
                    "no catch-up",
                    fmt_list(r["watches_established_s"]) + " (watches set)",
                    "—",
                    "—",
                ]
            )
    return table(header, rows)


RENDERERS = {
    "latency": ("1. Latency, close → visible, at a steady rate", latency_table),
    "burst": ("2. Burst of 4 KiB files, written as fast as possible", burst_table),
    "bigfile": ("3. One big file", bigfile_table),
    "idle": ("4. Idle", idle_table),
    "catchup": ("5. Start-up catch-up", catchup_table),
}


def busy_line(results: Sequence[Result]) -> str:
    """How busy the whole machine was during each tool's part (every process counted)."""
    cores = os.cpu_count() or 1
    items = []
    for r in results:
        if r.get("wall_s") and "machine_busy_cpu_s" in r:
            pct = r["machine_busy_cpu_s"] / r["wall_s"] / cores * 100
            items.append(f"{r['tool']} {pct:.0f} % (load {r.get('loadavg_before', 0):.1f} before)")
    if not items:
        return ""
    return (
        f"Machine CPU busy during each part, all processes, % of {cores} cores: "
        + "; ".join(items)
        + ".\n"
    )


def render(results: dict[str, list[Result]]) -> str:
    parts = []
    for key, (title, renderer) in RENDERERS.items():
        if key in results:
            parts.append(f"### {title}\n\n{renderer(results[key])}\n\n{busy_line(results[key])}")
    return "\n".join(parts)
