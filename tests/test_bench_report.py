"""The bench report's drain (issue 15, round 10): the time from the harness writer's last
close to a tool's last file visible, so a reader sees whether a shape timed the tool or
the writer (bench/report.py, bench/shapes.py). Old results files still render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report, shapes

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
OLD_HEADER = ["tool", "files × rounds", "missing (all rounds)", "dups", "write s (median)",
              "all visible s (median)", "files/s (median)", "files/s each round",
              "CPU s (median)", "target", "verdict"]


def burst_result(tool: str, rounds: list[tuple[float, float | None]], promoter: bool = False,
                 recorded: bool = True) -> dict[str, Any]:
    """A burst result of (write_s, all_visible_s or None for missing files) rounds."""
    items = []
    for write, seen in rounds:
        r: dict[str, Any] = {"write_s": write, "all_visible_s": seen, "missing": 0 if seen else 3,
                             "files_per_s": 200 / seen if seen else None}
        if recorded and seen is not None:
            r["drain_s"] = seen - write
        items.append(r)
    complete = [s for _, s in rounds if s is not None]
    return {"tool": tool, "is_promoter": promoter, "files": 200, "rounds": items,
            "missing": sum(x["missing"] for x in items), "duplicates": 0,
            "write_s": sorted(w for w, _ in rounds)[len(rounds) // 2],
            "all_visible_s": sorted(complete)[len(complete) // 2]
            if len(complete) == len(rounds) else None,
            "files_per_s": 200 / complete[0] if complete else None,
            "files_per_s_each": [x["files_per_s"] for x in items], "cpu_s": 0.3}


def test_a_writer_bound_tool_is_named_and_its_drain_shown() -> None:
    bound = burst_result("promoter (settle_ms 50)", [(0.90, 0.96), (0.88, 0.93), (0.91, 0.97)],
                         promoter=True)
    slow = burst_result("lsyncd + rsync (delay 0)", [(0.30, 1.30), (0.32, 1.40), (0.31, 1.35)])
    text = report.burst_table([bound, slow])
    header = text.splitlines()[0].strip("| ").split(" | ")
    assert [h for h in header if h in OLD_HEADER] == OLD_HEADER  # old columns, same order
    assert "drain s (median)" in header
    col = header.index("drain s (median)")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[2:]
            if line.startswith("| ")}
    assert rows["promoter (settle_ms 50)"][col] == "0.060"
    assert rows["lsyncd + rsync (delay 0)"][col] == "1.040"
    note = text.split("Bound by the writer", 1)[1]
    assert "promoter (settle_ms 50)" in note and "lsyncd" not in note


def test_the_drain_is_derived_when_an_old_result_lacks_it() -> None:
    old = burst_result("lsyncd + rsync (delay 0)", [(0.5, 0.55), (0.4, 1.4)], recorded=False)
    drain, seen, partial = report.drain_median(old)
    assert drain is not None and abs(drain - 0.525) < 1e-9 and seen == 0.975 and partial == ""
    assert not report.writer_bound(old)


def test_a_recorded_drain_is_the_one_shown() -> None:
    r = burst_result("promoter (settle_ms 50)", [(0.5, 0.55)], promoter=True)
    r["rounds"][0]["drain_s"] = 0.2  # as recorded (e.g. clamped): not recomputed
    assert report.drain_median(r)[0] == 0.2


def test_rounds_with_missing_files_are_left_out_and_counted() -> None:
    r = burst_result("inotifywait + cp loop", [(0.7, 0.71), (0.7, None), (0.6, None)])
    drain, _, partial = report.drain_median(r)
    assert drain is not None and abs(drain - 0.01) < 1e-9 and partial == " (1 of 3 rounds)"
    line = report.writer_line("200x1m/4", [r])
    assert "bound by the writer" in line and "(1 of 3 rounds)" in line
    none = burst_result("inotifywait + cp loop", [(0.7, None)])
    assert report.drain_median(none) == (None, None, "")
    assert report.writer_line("x", [none, {"tool": "floor", "files": 50}]) == ""


def test_the_shape_summary_has_a_writer_line_per_shape() -> None:
    results = {
        "shape:200x1m/4": [
            {"tool": "floor (durable create, fsync each)", "files": 50,
             "floor_ms_per_file": 0.6, "floor_sys_ms_per_file": 0.6},
            burst_result("promoter (settle_ms 50)", [(0.9, 0.96)], promoter=True),
            burst_result("lsyncd + rsync (delay 0)", [(0.5, 1.5)]),
        ],
        "shape:catchup": [{"tool": "promoter (settle_ms 50)", "is_promoter": True,
                           "daemon_ready_s": [1.0], "warm_reconcile_s": [1.1]}],
    }
    text = shapes.summary(results)
    lines = [x for x in text.splitlines() if "writer's last close" in x]
    assert len(lines) == 1 and lines[0].startswith("- 200x1m/4")
    assert "promoter write 0.90 s, drain 0.060 s (6 % of all visible 0.96 s: bound by the " \
           "writer)" in lines[0]
    assert "lsyncd write 0.50 s, drain 1.000 s (67 % of all visible 1.50 s)" in lines[0]


def test_an_old_results_file_still_renders() -> None:
    doc = json.loads((RESULTS / "20261201-045554.json").read_text())
    text = shapes.summary(doc["results"])
    assert "| 200x1m/4 | 655 |" in text  # the old table, as before
    line = next(x for x in text.splitlines() if x.startswith("- 200x1m/4, writer"))
    assert "promoter write 0.10 s, drain 0.205 s" in line
    assert "inotifywait" in line and "bound by the writer" in line
    burst = json.loads((RESULTS / "20261125-burst-batched-fsync.json").read_text())
    assert "drain s (median)" in report.render({"burst": burst["results"]["burst"]})
