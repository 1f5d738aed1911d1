"""A run's folder in artifacts/ made a file while the daemon runs (batch probe, r9): each
retry of each file logged a `worker.error` with a traceback (~100 a second). A refused
store path is no bug: one plain line a minute a run, the files retried until it is back."""

from __future__ import annotations

from pathlib import Path

from tests.daemon_helpers import base_config, start_daemon, wait_until, write


def test_a_run_folder_made_a_file_is_one_plain_line_then_retried(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "root", base_config(log={"level": "debug"}))
    try:
        d.wait_ready()
        out = d.root / "sessions" / "r1" / "output"
        write(out / "first.txt", b"1")
        wait_until(lambda: d.meta("r1"), 10, what="the first file")
        run_folder = d.root / "artifacts" / "r1"
        moved = d.root / "r1.aside"
        run_folder.rename(moved)
        run_folder.write_bytes(b"not a folder")
        for i in range(20):
            write(out / f"f{i:02}.txt", str(i).encode())
        errors = wait_until(lambda: d.events("worker.error"), 10, what="the refusal")
        wait_until(lambda: len(d.events("worker.error", level="debug")) >= 3, 15,
                   what="the retries, told quietly")
        told = [e for e in d.events("worker.error") if e["level"] == "error"]
        assert len(told) == 1 and "exception" not in told[0], errors[:2]
        assert not any("exception" in e for e in d.events("worker.error"))
        run_folder.unlink()
        moved.rename(run_folder)
        wait_until(lambda: len((d.meta("r1") or {}).get("artifacts", [])) == 21, 60,
                   what="every file once the folder is back")
        assert d.stop() == 0
    finally:
        d.close()
