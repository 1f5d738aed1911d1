"""`promoter run` end to end: the real daemon in a subprocess, real inotify, a test notify
socket; assertions on metadata.json, the notify messages and the JSON log lines."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from promoter.clock import format_time, from_timestamp_ns
from tests.daemon_helpers import Daemon, base_config, start_daemon, wait_until, write

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the scenarios that need no configuration of their own (each test
    works in a run of its own), with the metrics file on."""
    root = tmp_path_factory.mktemp("shared") / "storage"
    metrics = root.parent / "promoter.prom"
    d = start_daemon(root, base_config(metrics={"textfile": str(metrics), "interval_s": 0.2}))
    d.metrics_path = metrics  # type: ignore[attr-defined]
    d.wait_ready()
    yield d
    assert d.stop() == 0


def output(d: Daemon, run_id: str) -> Path:
    return d.sessions / run_id / "output"


# -- promotion -------------------------------------------------------------------------


def test_basic_promotion_fills_every_metadata_field(shared: Daemon) -> None:
    """A file closed in output/ appears with every field of DESIGN §2, from run.json and
    attribution.jsonl, and the audit line carries run, file, agent, size, digest and type."""
    run = shared.sessions / "basic-1"
    write(run / "run.json", json.dumps({"workflow_id": "wf", "user_directive": "Do it",
                                        "status": "running"}))
    write(run / "attribution.jsonl", '{"filename": "plot.png", "agent_id": "viz"}\n')
    data = os.urandom(5000)
    src = write(run / "output" / "plot.png", data)
    entry = shared.wait_entry("basic-1", "plot.png")
    meta = shared.meta("basic-1")
    assert meta is not None
    assert meta["schema_version"] == 1 and meta["run_id"] == "basic-1"
    assert meta["workflow_id"] == "wf" and meta["user_directive"] == "Do it"
    assert meta["keep"] is False and meta["status"] == "active" and meta["removed"] == []
    for key in ("created_at", "updated_at", "expires_at"):
        assert RFC3339.match(meta[key]), meta[key]
    assert parse(meta["expires_at"]) - parse(meta["created_at"]) == timedelta(days=7)
    assert entry == {
        "filename": "plot.png", "path": "files/plot.png", "agent_id": "viz",
        "generated_at": format_time(from_timestamp_ns(src.stat().st_mtime_ns)),
        "size_bytes": 5000, "content_type": "image/png",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert (shared.artifacts / "basic-1" / "files" / "plot.png").read_bytes() == data
    line = shared.wait_log("artifact.promoted", run_id="basic-1", filename="plot.png")
    assert {k: line[k] for k in ("agent_id", "size_bytes", "sha256", "content_type")} == {
        "agent_id": "viz", "size_bytes": 5000, "sha256": entry["sha256"],
        "content_type": "image/png"}
    assert line["latency_ms"] >= 50
    shared.wait_log("run.created", run_id="basic-1")


def test_latency_from_close_to_entry_is_about_settle_ms(shared: Daemon) -> None:
    """At settle_ms 50 an entry appears within a fraction of a second of the close."""
    closed = time.monotonic()
    write(output(shared, "latency-1") / "a.txt", "x")
    shared.wait_entry("latency-1", "a.txt", timeout=5)
    assert time.monotonic() - closed < 2.0


def test_write_temp_then_rename_promotes_the_final_name_once(shared: Daemon) -> None:
    """A file written under an excluded temporary name and renamed is promoted once, whole,
    under its final name; the temporary name never reaches the store."""
    out = output(shared, "rename-1")
    body = "col\n" + "1\n" * 10_000
    write(out / "report.csv.tmp", body)
    os.rename(out / "report.csv.tmp", out / "report.csv")
    entry = shared.wait_entry("rename-1", "report.csv")
    assert entry["size_bytes"] == len(body)
    assert (shared.artifacts / "rename-1" / "files" / "report.csv").read_text() == body
    meta = shared.meta("rename-1")
    assert meta is not None and [a["filename"] for a in meta["artifacts"]] == ["report.csv"]
    assert len(shared.events("artifact.promoted", run_id="rename-1")) == 1


def test_rename_from_outside_output_counts_as_written(shared: Daemon) -> None:
    """A file moved into output/ from elsewhere in the run (no write event there) is promoted."""
    run = shared.sessions / "movein-1"
    write(run / "scratch" / "draft.md", "# hi")
    (run / "output").mkdir()
    os.rename(run / "scratch" / "draft.md", run / "output" / "final.md")
    assert shared.wait_entry("movein-1", "final.md")["size_bytes"] == 4


def test_rewrite_replaces_the_copy_and_its_entry(shared: Daemon) -> None:
    """A file rewritten with new content replaces its copy and keeps one entry."""
    path = write(output(shared, "rewrite-1") / "a.txt", "v1")
    shared.wait_entry("rewrite-1", "a.txt")
    os.utime(path, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))
    write(path, "version two")
    shared.wait_entry("rewrite-1", "a.txt", check=lambda e: e["size_bytes"] == 11)
    meta = shared.meta("rewrite-1")
    assert meta is not None and [a["filename"] for a in meta["artifacts"]] == ["a.txt"]
    assert (shared.artifacts / "rewrite-1" / "files" / "a.txt").read_text() == "version two"


def test_nested_folders_keep_their_path(shared: Daemon) -> None:
    """output/plots/2024/a.png becomes files/plots/2024/a.png, filename plots/2024/a.png."""
    write(output(shared, "nested-1") / "plots" / "2024" / "a.png", b"\x89PNG")
    entry = shared.wait_entry("nested-1", "plots/2024/a.png")
    assert entry["path"] == "files/plots/2024/a.png"
    assert (shared.artifacts / "nested-1" / "files" / "plots" / "2024" / "a.png").exists()


def test_files_written_at_once_into_a_new_folder(shared: Daemon) -> None:
    """Files written into a folder made a moment before (maybe before its watch exists)
    are all promoted."""
    folder = output(shared, "newdir-1") / "fresh" / "deeper"
    folder.mkdir(parents=True)
    for i in range(20):
        write(folder / f"f{i}.txt", str(i))
    for i in range(20):
        shared.wait_entry("newdir-1", f"fresh/deeper/f{i}.txt")


def test_folder_moved_in_whole_gets_only_synthetic_events(shared: Daemon) -> None:
    """A folder renamed into output/ with its files already closed yields no close events
    (watchdog synthesizes "created" ones): the quiet period alone decides, and all arrive."""
    staging = shared.root / "staging-movedir"
    for i in range(5):
        write(staging / "sub" / f"g{i}.txt", f"g{i}")
    out = output(shared, "movedir-1")
    out.mkdir(parents=True)
    os.rename(staging, out / "batch")
    for i in range(5):
        shared.wait_entry("movedir-1", f"batch/sub/g{i}.txt")


def test_a_run_created_whole_is_promoted(shared: Daemon) -> None:
    """A run folder that appears with its output/ already full (renamed in) is promoted."""
    staging = shared.root / "staging-run"
    write(staging / "output" / "x.txt", "x")
    write(staging / "run.json", json.dumps({"workflow_id": "whole"}))
    os.rename(staging, shared.sessions / "wholerun-1")
    shared.wait_entry("wholerun-1", "x.txt")
    wait_until(lambda: (shared.meta("wholerun-1") or {}).get("workflow_id") == "whole")


def test_input_and_excluded_names_are_not_promoted(shared: Daemon) -> None:
    """input/, excluded globs (dot files, *.tmp, *~) and files beside output/ stay out."""
    run = shared.sessions / "filter-1"
    write(run / "input" / "data.csv", "in")
    write(run / "notes.txt", "beside")
    for name in (".hidden", "x.tmp", "backup~", ".git/config", "ok/.cache/y"):
        write(run / "output" / name, "no")
    write(run / "output" / "last.txt", "yes")
    shared.wait_entry("filter-1", "last.txt")
    meta = shared.meta("filter-1")
    assert meta is not None and [a["filename"] for a in meta["artifacts"]] == ["last.txt"]


def test_invalid_run_ids_are_ignored_with_one_warning(shared: Daemon) -> None:
    """A folder under sessions/ that is not a valid run id is ignored, with one warning."""
    write(shared.sessions / "bad run!" / "output" / "a.txt", "a")
    write(shared.sessions / "bad run!" / "output" / "b.txt", "b")
    shared.wait_log("run.ignored", name="bad run!")
    write(output(shared, "after-bad-1") / "c.txt", "c")
    shared.wait_entry("after-bad-1", "c.txt")
    assert len(shared.events("run.ignored", name="bad run!")) == 1
    assert not (shared.artifacts / "bad run!").exists()


# -- context ---------------------------------------------------------------------------


def test_attribution_arriving_after_the_file_updates_its_entry(shared: Daemon) -> None:
    """A file promoted as agent "unknown" gets its agent when the attribution line comes."""
    run = shared.sessions / "attr-1"
    write(run / "output" / "chart.svg", "<svg/>")
    assert shared.wait_entry("attr-1", "chart.svg")["agent_id"] == "unknown"
    with (run / "attribution.jsonl").open("a") as fh:
        fh.write('{"filename": "chart.svg", "agent_id": "plotter"}\n')
    shared.wait_entry("attr-1", "chart.svg", check=lambda e: e["agent_id"] == "plotter")


def test_run_json_completed_marks_the_run_completed(shared: Daemon) -> None:
    """run.json saying completed turns the run's status to completed, with run.completed."""
    run = shared.sessions / "done-1"
    write(run / "output" / "a.txt", "a")
    shared.wait_entry("done-1", "a.txt")
    tmp = write(run / ".run.json.new", json.dumps({"status": "completed"}))
    os.rename(tmp, run / "run.json")
    wait_until(lambda: (shared.meta("done-1") or {}).get("status") == "completed",
               what="status completed")
    shared.wait_log("run.completed", run_id="done-1")


def test_session_folder_removed_marks_the_run_completed(shared: Daemon) -> None:
    """A session folder that disappears completes its run; its artifacts stay."""
    run = shared.sessions / "gone-1"
    write(run / "output" / "keep.txt", "k")
    shared.wait_entry("gone-1", "keep.txt")
    shutil.rmtree(run)
    wait_until(lambda: (shared.meta("gone-1") or {}).get("status") == "completed",
               what="status completed")
    line = shared.wait_log("run.completed", run_id="gone-1")
    assert line["reason"] == "session gone"
    assert (shared.artifacts / "gone-1" / "files" / "keep.txt").read_text() == "k"


def test_a_deleted_file_stays_in_the_store(shared: Daemon) -> None:
    """Artifacts outlive sessions: deleting the source does not remove the entry."""
    path = write(output(shared, "del-1") / "a.txt", "a")
    shared.wait_entry("del-1", "a.txt")
    path.unlink()
    write(output(shared, "del-1") / "b.txt", "b")
    shared.wait_entry("del-1", "b.txt")
    assert shared.entry("del-1", "a.txt") is not None


# -- systemd, metrics, logs ------------------------------------------------------------


def test_ready_comes_with_a_status_line(shared: Daemon) -> None:
    """READY=1 is sent with a STATUS= summary once watching."""
    i = shared.notify.wait_for("READY=1")
    status = [line for line in shared.notify.messages[i].splitlines()
              if line.startswith("STATUS=")]
    assert status and "watching" in status[0] and "files promoted" in status[0]


def test_metrics_file_has_the_daemon_figures(shared: Daemon) -> None:
    """The metrics text file is rewritten with files by result, bytes, latency, queue,
    runs watched, overflows, reconcile time and runs expired."""
    write(output(shared, "metrics-1") / "m.txt", "12345")
    shared.wait_entry("metrics-1", "m.txt")
    path: Path = shared.metrics_path  # type: ignore[attr-defined]

    def promoted() -> float:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        match = re.search(r'^promoter_files_total\{result="promoted"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0
    wait_until(lambda: promoted() >= 1, what="promoted count in the metrics file")
    text = path.read_text()
    for name in ('promoter_files_total{result="rejected"}', 'promoter_files_total{result="lost"}',
                 'promoter_files_total{result="failed"}', "promoter_promoted_bytes_total",
                 "promoter_promotion_latency_seconds_bucket", "promoter_queue_files",
                 "promoter_runs_watched", "promoter_watch_overflows_total",
                 "promoter_last_reconcile_timestamp_seconds",
                 "promoter_last_reconcile_duration_seconds", "promoter_runs_expired_total"):
        assert name in text, name
    assert not [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]


def test_every_log_line_is_json_and_stdout_is_empty(shared: Daemon) -> None:
    """Each stderr line is one JSON object with timestamp, level and event; nothing on stdout."""
    write(output(shared, "logs-1") / "a.txt", "a")
    shared.wait_entry("logs-1", "a.txt")
    lines = shared.logs()
    assert lines
    for line in lines:
        assert {"timestamp", "level", "event"} <= set(line), line
        assert RFC3339.match(line["timestamp"]), line["timestamp"]
    assert shared.stdout_path.read_bytes() == b""
