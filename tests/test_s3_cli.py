"""Every command on the bucket prints what it prints on folders; bad S3 configuration is one
line and exit 2, an unreachable endpoint exit 1 naming it (DESIGN §3, §10)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from s3_helpers import aws_env
from s3_server import S3Server, free_port_pairs
from s3_store_helpers import s3_toml
from store_helpers import write_session_file

from promoter.cli import main

pytest_plugins = ("s3_fixtures",)
TIMES = {"created_at", "updated_at", "expires_at", "removed_at", "timestamp", "modified_at",
         "latency_ms", "rejected_at", "generated_at", "source_changed_at"}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _timeless(value: Any) -> Any:
    """The value without the fields that hold the moment a command ran."""
    if isinstance(value, dict):
        kept = {k: _timeless(v) for k, v in value.items() if k not in TIMES}
        if isinstance(kept.get("runs"), list):
            # newest first is by created_at, and the catch-up creates runs in parallel
            kept["runs"].sort(key=lambda run: str(run.get("run_id")))
        return kept
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _session(root: Path) -> None:
    write_session_file(root, "r1", "a.txt", b"hello")
    write_session_file(root, "r1", "plots/p.png", b"png")
    write_session_file(root, "r2", "b.md", b"# b")
    (root / "sessions/r1/run.json").write_text('{"workflow_id": "wf", "user_directive": "go"}')


def _script(capsys: pytest.CaptureFixture[str], cfg: Path, out: Path) -> list[Any]:
    """The same commands, in order; each answer's JSON (audit: its events' names)."""
    c = ["--config", str(cfg)]
    answers: list[Any] = []
    for argv in (["reconcile", "--json"], ["ls", "--json"], ["show", "r1", "--json"],
                 ["keep", "r1", "--json"], ["rm", "r1", "a.txt", "--json"],
                 ["rm", "r1", "plots/p.png", "--dry-run", "--json"],
                 ["promote", "r1", "plots/p.png", "--as", "p.png", "--json"],
                 ["library", "--json"], ["stats", "--json"], ["rm", "r2", "--json"],
                 ["sweep", "--json"], ["ls", "--json"], ["check", "--json"]):
        code, text, err = run_cli(capsys, *argv, *c)
        assert code == 0, (argv, err)
        answers.append(json.loads(text))
    code, text, _ = run_cli(capsys, "audit", "--json", *c)
    # as a multiset: the catch-up promotes runs in parallel, so their order may differ
    answers.append(sorted((e["event"], e.get("run_id") or "", e["host"]) for e in map(
        json.loads, text.splitlines())))
    assert run_cli(capsys, "export", "r1", "-o", str(out), *c)[0] == 0
    with zipfile.ZipFile(out) as zf:
        answers.append({n: zf.read(n) for n in zf.namelist()})
    assert run_cli(capsys, "show", "r2", *c)[0] == 1  # deleted: gone
    return answers


def test_every_command_answers_the_same_on_the_bucket_as_on_folders(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """reconcile, ls, show, keep, rm (file, dry run, run), promote, library, stats, sweep,
    check, audit and export print the same JSON (times aside) on either backend."""
    local_root, s3_root = tmp_path / "local", tmp_path / "s3"
    for root in (local_root, s3_root):
        _session(root)
    (local_root / "artifacts").mkdir()
    local_cfg, s3_cfg = tmp_path / "local.toml", tmp_path / "s3.toml"
    local_cfg.write_text(f'[storage]\nroot = "{local_root}"\nhost_id = "h1"\n')
    s3_cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(s3_root),
                              host_id="h1"))
    local = _script(capsys, local_cfg, tmp_path / "local.zip")
    bucket = _script(capsys, s3_cfg, tmp_path / "s3.zip")
    assert _timeless(local) == _timeless(bucket)
    assert bucket[1]["runs"][0]["host"] == "h1"  # metadata names its host (DESIGN §10)
    code, text, _ = run_cli(capsys, "config", "--json", "--config", str(s3_cfg))
    shown = json.loads(text)["storage"]
    assert code == 0 and shown["backend"] == "s3" and shown["s3"]["prefix"] == s3_prefix


def _one_line_failure(capsys: pytest.CaptureFixture[str], cfg: Path, code: int,
                      *needles: str) -> str:
    got, out, err = run_cli(capsys, "ls", "--config", str(cfg))
    assert got == code and out == "", err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_s3_configuration_is_one_line_and_exit_2(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing bucket, plain http without allow_http, and refused credentials each stop a
    command with one line naming the problem, exit 2, and never the secret."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(s3_toml(s3_server, "no-such-bucket-here", s3_prefix, root=str(tmp_path)))
    _one_line_failure(capsys, cfg, 2, "no-such-bucket-here")
    cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(tmp_path))
                   .replace("allow_http = true", "allow_http = false"))
    _one_line_failure(capsys, cfg, 2, "allow_http")
    cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(tmp_path)))
    aws_env(monkeypatch, s3_server, secret="wrong-secret-must-not-show")
    err = _one_line_failure(capsys, cfg, 2, "credentials")
    assert "wrong-secret" not in err and s3_server.access_key not in err


def test_unreachable_endpoint_is_exit_1_naming_it(
        tmp_path: Path, s3_bucket: str, s3_prefix: str, s3_server: S3Server,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens at the endpoint: an outage, not a configuration error (exit 1)."""
    [port] = free_port_pairs(1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(tmp_path))
                   .replace(s3_server.endpoint, f"http://127.0.0.1:{port}"))
    _one_line_failure(capsys, cfg, 1, f"http://127.0.0.1:{port}")


def test_the_daemon_refuses_a_missing_bucket_with_one_json_line(
        tmp_path: Path, s3_server: S3Server, s3_prefix: str, s3_bucket: str) -> None:
    """`promoter run` on a bucket that does not exist exits 2 with one JSON log line."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(s3_toml(s3_server, "no-such-bucket-here", s3_prefix, root=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "promoter", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line JSON
    [event] = [e for e in lines if e["level"] == "error"]
    assert event["event"] == "daemon.failed" and "no-such-bucket-here" in event["reason"]
