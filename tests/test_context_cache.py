"""run.json kept between batches and attribution.jsonl looked at by a stat (issue 15, r8):
every change is still seen, nothing unsafe is read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from promoter import context
from promoter.context import AttributionReader, RunJsonReader
from promoter.safeio import folder

OLD = 1_000_000_000  # a run.json written long ago (mtime); its ctime is set by the writes


def _settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files changed just now count as settled (no 2 s wait in a test)."""
    monkeypatch.setattr(context, "SETTLED_NS", -10 * 10**9)


def _write_run_json(path: Path, fields: dict[str, str]) -> None:
    path.write_text(json.dumps(fields))
    os.utime(path, (OLD, OLD))


def test_a_settled_run_json_is_parsed_once_until_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same file is not parsed again; a rewrite of the same size with its mtime set back
    is read again (its ctime moved)."""
    _settle(monkeypatch)
    run = tmp_path / "r1"
    run.mkdir()
    _write_run_json(run / "run.json", {"workflow_id": "w1", "status": "running"})
    parsed: list[str] = []
    real = context._run_json
    monkeypatch.setattr(context, "_run_json",
                        lambda fd, run_id: (parsed.append(run_id), real(fd, run_id))[1])
    reader = RunJsonReader()
    with folder(tmp_path) as fd:
        assert reader.read(fd, "r1") == {"workflow_id": "w1", "status": "running"}
        assert reader.read(fd, "r1") == {"workflow_id": "w1", "status": "running"}
        assert parsed == ["r1"]
        time.sleep(0.01)  # a later ctime, even on a coarse clock
        before = os.stat(run / "run.json")
        _write_run_json(run / "run.json", {"workflow_id": "w2", "status": "running"})
        after = os.stat(run / "run.json")  # the same file, size and mtime: only ctime moved
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
            (before.st_ino, before.st_size, before.st_mtime_ns)
        assert reader.read(fd, "r1") == {"workflow_id": "w2", "status": "running"}
        assert parsed == ["r1", "r1"]
        (run / "run.json").unlink()
        assert reader.read(fd, "r1") == {}


def test_a_fresh_or_invalid_run_json_is_read_every_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file changed within SETTLED_NS is not kept (a rewrite in the same time tick would
    keep its key); an invalid one is read (and logged) every time."""
    run = tmp_path / "r1"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"workflow_id": "w1"}))
    parsed: list[str] = []
    real = context._run_json
    monkeypatch.setattr(context, "_run_json",
                        lambda fd, run_id: (parsed.append(run_id), real(fd, run_id))[1])
    monkeypatch.setattr(context, "SETTLED_NS", 3600 * 10**9)  # however slow this machine is
    reader = RunJsonReader()
    with folder(tmp_path) as fd:
        for _ in range(3):
            assert reader.read(fd, "r1") == {"workflow_id": "w1"}
        assert len(parsed) == 3  # written just now: never kept
        _settle(monkeypatch)
        (run / "run.json").write_text('{"status": 7}')
        for _ in range(2):
            assert reader.read(fd, "r1") == {}
        assert len(parsed) == 5


def test_a_link_in_place_of_run_json_is_refused_after_a_kept_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept file replaced by a link to another file is not followed: the safe read says
    nothing, as before the cache."""
    _settle(monkeypatch)
    run = tmp_path / "r1"
    run.mkdir()
    _write_run_json(run / "run.json", {"workflow_id": "w1"})
    secret = tmp_path / "secret.json"
    _write_run_json(secret, {"workflow_id": "stolen"})
    reader = RunJsonReader()
    with folder(tmp_path) as fd:
        assert reader.read(fd, "r1") == {"workflow_id": "w1"}
        (run / "run.json").unlink()
        (run / "run.json").symlink_to(secret)
        assert reader.read(fd, "r1") == {}


def test_attribution_lines_appended_or_rewritten_are_read(tmp_path: Path) -> None:
    """The stat that skips an unchanged attribution.jsonl still sees an append and a
    replacement (a new inode)."""
    run = tmp_path / "r1"
    (run / "output").mkdir(parents=True)
    lines = run / "attribution.jsonl"
    lines.write_text(json.dumps({"filename": "a.txt", "agent_id": "ag1"}) + "\n")
    reader = AttributionReader()
    with folder(tmp_path) as fd:
        assert reader.agents(fd, "r1") == {"a.txt": "ag1"}
        assert reader.agents(fd, "r1") == {"a.txt": "ag1"}
        with lines.open("a") as fh:
            fh.write(json.dumps({"filename": "b.txt", "agent_id": "ag2"}) + "\n")
        assert reader.agents(fd, "r1") == {"a.txt": "ag1", "b.txt": "ag2"}
        other = run / "new.jsonl"
        other.write_text(json.dumps({"filename": "c.txt", "agent_id": "ag3"}) + "\n")
        other.replace(lines)
        assert reader.agents(fd, "r1") == {"c.txt": "ag3"}


def test_the_kept_run_json_parses_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most KEPT_RUNS runs are kept (the last parsed), and never a long file's."""
    _settle(monkeypatch)
    monkeypatch.setattr(context, "KEPT_RUNS", 3)
    for i in range(5):
        (tmp_path / f"r{i}").mkdir()
        _write_run_json(tmp_path / f"r{i}" / "run.json", {"workflow_id": f"w{i}"})
    (tmp_path / "big").mkdir()
    _write_run_json(tmp_path / "big" / "run.json", {"user_directive": "x" * 20_000})
    reader = RunJsonReader()
    with folder(tmp_path) as fd:
        for i in range(5):
            assert reader.read(fd, f"r{i}") == {"workflow_id": f"w{i}"}
        assert reader.read(fd, "big") == {"user_directive": "x" * 20_000}
    assert list(reader._runs) == ["r2", "r3", "r4"]
