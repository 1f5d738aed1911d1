"""The command line: every command, its --json form and its exit codes (DESIGN §3)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from promoter.cli import main
from promoter.clock import parse_time
from tests.store_helpers import write_session_file


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A store with one promoted run 'r1' holding a.txt and plots/p.png."""
    write_session_file(tmp_path, "r1", "a.txt", b"hello")
    write_session_file(tmp_path, "r1", "plots/p.png", b"png")
    (tmp_path / "sessions/r1/run.json").write_text('{"workflow_id": "wf", "user_directive": "go"}')
    (tmp_path / "artifacts").mkdir()  # only `run` creates the store (DESIGN §3)
    assert main(["reconcile", "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    return tmp_path


def test_reconcile_json_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """reconcile --json prints the outcome counts on stdout, logs on stderr."""
    write_session_file(tmp_path, "r1", "a.txt", b"x")
    (tmp_path / "artifacts").mkdir()
    code, out, err = run_cli(capsys, "reconcile", "--root", str(tmp_path), "--json")
    assert code == 0
    assert json.loads(out)["promoted"] == 1
    assert all(json.loads(line)["event"] for line in err.splitlines())


def test_reconcile_waits_for_a_file_still_being_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file modified just before reconcile is promoted after its settle time, not skipped."""
    write_session_file(tmp_path, "r1", "fresh.txt", b"x", age_s=0)
    (tmp_path / "artifacts").mkdir()
    code, out, _ = run_cli(capsys, "reconcile", "--root", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["promoted"] == 1


def test_ls_human_and_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ls shows id, age, files, size, agents and state; --json the metadata."""
    code, out, _ = run_cli(capsys, "ls", "--root", str(root))
    assert code == 0
    header, row, total = out.splitlines()
    assert total.startswith("store: ") and "(no ceiling)" in total
    assert header.split() == ["RUN", "AGE", "FILES", "SIZE", "AGENTS", "STATE", "WORKFLOW"]
    assert row.split()[0] == "r1" and "live" in row and "wf" in row
    code, out, _ = run_cli(capsys, "ls", "--root", str(root), "--json", "--filter", "recent")
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["r1"]
    code, out, _ = run_cli(capsys, "ls", "--root", str(root), "--json", "--filter", "expiring")
    assert json.loads(out)["runs"] == []


def test_show(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show prints a run's files; --json its metadata.json."""
    code, out, _ = run_cli(capsys, "show", "r1", "--root", str(root))
    assert code == 0 and "plots/p.png" in out and "go" in out
    code, out, _ = run_cli(capsys, "show", "r1", "--root", str(root), "--json")
    assert json.loads(out)["run_id"] == "r1"


def test_keep_and_unkeep(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keep pins a run, --off unpins it."""
    assert run_cli(capsys, "keep", "r1", "--root", str(root))[0] == 0
    assert json.loads((root / "artifacts/r1/metadata.json").read_text())["keep"] is True
    assert run_cli(capsys, "keep", "r1", "--off", "--root", str(root))[0] == 0
    assert json.loads((root / "artifacts/r1/metadata.json").read_text())["keep"] is False


def test_promote_to_library_and_conflict(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """promote copies into the library; a second time is exit 1 unless --overwrite."""
    assert run_cli(capsys, "promote", "r1", "plots/p.png", "--root", str(root))[0] == 0
    assert (root / "library/p.png").read_bytes() == b"png"
    code, _, err = run_cli(capsys, "promote", "r1", "plots/p.png", "--root", str(root))
    assert code == 1 and "exists" in err and len(err.splitlines()) == 1
    assert run_cli(capsys, "promote", "r1", "plots/p.png", "--overwrite",
                   "--root", str(root))[0] == 0
    assert run_cli(capsys, "promote", "r1", "a.txt", "--as", "b.txt", "--root", str(root))[0] == 0
    assert (root / "library/b.txt").read_bytes() == b"hello"


def test_rm_artifact_then_run(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rm RUN FILE removes one artifact; rm RUN the run; reconcile brings neither back."""
    assert run_cli(capsys, "rm", "r1", "a.txt", "--root", str(root))[0] == 0
    run_cli(capsys, "reconcile", "--root", str(root))
    meta = json.loads((root / "artifacts/r1/metadata.json").read_text())
    assert [a["filename"] for a in meta["artifacts"]] == ["plots/p.png"]
    assert run_cli(capsys, "rm", "r1", "--root", str(root))[0] == 0
    run_cli(capsys, "reconcile", "--root", str(root))
    assert not (root / "artifacts/r1").exists()


def test_sweep_json(root: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """sweep --dry-run --json lists expired runs without deleting them."""
    monkeypatch.setenv("PROMOTER_RETENTION__DAYS", "0.0000001")  # about 9 ms
    write_session_file(root, "r2", "a.txt", b"x")
    run_cli(capsys, "reconcile", "--root", str(root))
    expires = json.loads((root / "artifacts/r2/metadata.json").read_text())["expires_at"]
    deadline = time.monotonic() + 5
    while datetime.now(UTC) < parse_time(expires) and time.monotonic() < deadline:
        time.sleep(0.005)  # poll until r2's expiry time has passed
    code, out, _ = run_cli(capsys, "sweep", "--dry-run", "--json", "--root", str(root))
    assert code == 0 and json.loads(out) == {"expired": ["r2"], "dry_run": True}
    assert (root / "artifacts/r2").exists()
    code, out, _ = run_cli(capsys, "sweep", "--json", "--root", str(root))
    assert json.loads(out)["expired"] == ["r2"] and not (root / "artifacts/r2").exists()


@pytest.mark.parametrize("argv", [
    ["rm", ".."], ["rm", "r1", "../../etc/passwd"], ["promote", "r1", "../../etc/passwd"],
    ["promote", "r1", "a.txt", "--as", "../x"], ["show", "../r1"], ["keep", "/etc"],
    ["show", "missing"], ["rm", "missing"], ["promote", "r1", "nope.txt"],
])
def test_refusals_exit_1_and_touch_nothing(root: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str]) -> None:
    """Bad names and missing things are one line on stderr, exit 1, nothing changed."""
    before = sorted(str(p) for p in root.rglob("*"))
    code, _, err = run_cli(capsys, *argv, "--root", str(root))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(str(p) for p in root.rglob("*")) == before


@pytest.mark.parametrize("argv", [["bogus"], ["ls", "--filter", "weird"], [],
                                  ["ls", "--config", "/nonexistent.toml"]])
def test_usage_and_config_errors_exit_2(capsys: pytest.CaptureFixture[str],
                                        argv: list[str]) -> None:
    """Bad usage and a missing --config file are exit 2 with one line."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err


def test_bad_config_key_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown key in the file is exit 2, naming the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[watch]\nsettle = 3\n")
    code, _, err = run_cli(capsys, "config", "--config", str(cfg))
    assert code == 2 and "watch.settle" in err


def test_config_prints_effective_toml_and_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """config prints TOML that loads back to the same configuration, or JSON."""
    import tomllib

    from promoter.config import Config

    monkeypatch.setenv("PROMOTER_WATCH__SETTLE_MS", "123")
    code, out, _ = run_cli(capsys, "config", "--root", str(tmp_path))
    assert code == 0
    assert Config.model_validate(tomllib.loads(out)).watch.settle_ms == 123
    code, out, _ = run_cli(capsys, "config", "--json", "--root", str(tmp_path))
    assert json.loads(out)["storage"]["root"] == str(tmp_path)


def test_schema_validates_and_rejects(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """schema prints a JSON Schema that accepts real metadata and rejects a broken entry."""
    import jsonschema

    _, out, _ = run_cli(capsys, "schema")
    schema = json.loads(out)
    meta = json.loads((root / "artifacts/r1/metadata.json").read_text())
    jsonschema.validate(meta, schema)
    broken = json.loads(json.dumps(meta))
    del broken["artifacts"][0]["size_bytes"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = json.loads(json.dumps(meta))
    broken["artifacts"][0]["sha256"] = "not-a-digest"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    """python -m promoter works like the console script, data on stdout only."""
    (tmp_path / "artifacts").mkdir()
    proc = subprocess.run([sys.executable, "-m", "promoter", "ls", "--json", "--root",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"runs": []}
