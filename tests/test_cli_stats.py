"""`promoter stats [--since DURATION] [--json]`: the figures of GET /runtime/stats on a terminal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from promoter.cli import main
from tests.page_helpers import SeedFile, SeedRun, write_run
from tests.web_helpers import client_for, make_store

DAY_MIN = 24 * 60


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A kept run, a run expiring in 23 h, and one created 40 days ago, dated from now."""
    now = datetime.now(UTC)
    make_store(tmp_path)
    for seed in [
        SeedRun("kept-run", "report", "", 2 * DAY_MIN, 7, "completed", True, (
            SeedFile("a.png", "viz", b"P" * 2048, 2 * DAY_MIN),)),
        SeedRun("soon-run", "", "", 60, 1, "completed", False, (
            SeedFile("x.csv", "etl", b"1" * 10, 60), SeedFile("y.md", "writer", b"2" * 30, 60))),
        SeedRun("old-run", "etl", "", 40 * DAY_MIN, 60, "completed", False, (
            SeedFile("old.txt", "etl", b"4" * 5000, 40 * DAY_MIN),)),
    ]:
        write_run(tmp_path / "artifacts", seed, now)
    return tmp_path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_the_api_answer(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints exactly the figures GET /runtime/stats answers for the same store."""
    code, out, err = run_cli(capsys, "stats", "--root", str(root), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["totals"] == {"runs": 2, "artifacts": 3, "bytes": 2088, "kept_runs": 1,
                              "kept_bytes": 2048, "expiring_24h_bytes": 40,
                              "expiring_7d_bytes": 40}
    api = client_for(make_store(root)).get("/runtime/stats").json()
    assert data == api


def test_tables_on_a_terminal(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: a summary, then agent, type, workflow, day and largest-run tables."""
    code, out, _ = run_cli(capsys, "stats", "--root", str(root))
    assert code == 0
    assert out.startswith("runs created in the last 30d: 2 run(s), 3 file(s), 2 KiB\n")
    assert "kept: 1 run(s), 2 KiB; expiring within 24 h: 40 B, within 7 days: 40 B" in out
    for header in ("AGENT", "TYPE", "WORKFLOW", "DAY (UTC)", "LARGEST RUN"):
        assert f"\n{header} " in out
    assert "\nviz     1      2 KiB\n" in out
    assert "\n(none)    2      40 B\n" in out  # a run without a workflow
    assert "REFUSED" not in out  # nothing refused, no empty table


def test_since_takes_in_older_runs(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--since 60d counts the run created 40 days ago; --since 2h only the newest."""
    _, out, _ = run_cli(capsys, "stats", "--root", str(root), "--since", "60d", "--json")
    assert json.loads(out)["totals"]["runs"] == 3
    _, out, _ = run_cli(capsys, "stats", "--root", str(root), "--since", "2h", "--json")
    assert [r["run_id"] for r in json.loads(out)["largest_runs"]] == ["soon-run"]


@pytest.mark.parametrize("since", ["0d", "abc", "1.5d", "-3d", "12"])
def test_bad_since_is_a_usage_error(root: Path, capsys: pytest.CaptureFixture[str],
                                    since: str) -> None:
    """A malformed --since exits 2 with one line, no traceback."""
    code, out, err = run_cli(capsys, "stats", "--root", str(root), f"--since={since}")
    assert code == 2 and out == ""
    assert err.startswith("promoter: bad duration") and err.count("\n") == 1


def test_empty_store_and_missing_store(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An empty store prints zeros; a root without artifacts/ is exit 1 (as `ls`), untouched."""
    make_store(tmp_path / "empty")
    code, out, _ = run_cli(capsys, "stats", "--root", str(tmp_path / "empty"))
    assert code == 0 and out.startswith("runs created in the last 30d: 0 run(s)")
    ls_code, _, _ = run_cli(capsys, "ls", "--root", str(tmp_path / "nowhere"))
    code, _, _ = run_cli(capsys, "stats", "--root", str(tmp_path / "nowhere"))
    assert code == ls_code == 1  # DESIGN §3: only `run` creates the store
    assert not (tmp_path / "nowhere").exists()
