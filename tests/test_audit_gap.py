"""A daemon killed between a batch's metadata commit and its journal append left entries
whose `artifact.promoted` was in no journal (DESIGN §11). The next start, seeing that the
last life did not stop cleanly, journals them with `"recovered": true`, once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from promoter import auditgap
from promoter.audit import read_journal
from promoter.store import Store
from tests.daemon_helpers import Daemon, base_config, start_daemon, wait_until
from tests.store_helpers import make_store, write_session_file

# `promoter run` as it is, but killed (SIGKILL, as kill -9) in the batch that promotes
# `victim.txt`, after its metadata commit and before its journal append
KILLED = """
import os, signal, sys
import promoter.store as store
from promoter.entry import main
journal = store.Store._journal_promoted
def killed(self, results):
    if any(r.filename == "victim.txt" for r in results):
        os.kill(os.getpid(), signal.SIGKILL)
    journal(self, results)
store.Store._journal_promoted = killed
sys.exit(main())
"""


def journal(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((root / "artifacts" / ".audit").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line]


def promotions(root: Path, filename: str) -> list[dict[str, Any]]:
    return [e for e in journal(root) if e["event"] == "artifact.promoted"
            and e["filename"] == filename]


def _start_killed_in_window(root: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """`promoter run` through KILLED: it kills itself after the victim's commit."""
    popen = subprocess.Popen

    def killing(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return popen([sys.executable, "-c", KILLED, *args[3:]], **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", killing)
        return start_daemon(root, base_config())


def test_a_kill_between_commit_and_journal_is_journaled_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in the window: victim.txt is listed, not journaled. The next start journals
    it (recovered, the daemon's actor, its digest), nothing else; the start after a clean
    stop journals nothing more."""
    root = tmp_path / "root"
    d = _start_killed_in_window(root, monkeypatch)
    out = d.sessions / "r1" / "output"
    try:
        d.wait_ready()
        out.mkdir(parents=True)
        (out / "first.txt").write_text("journaled")
        wait_until(lambda: promotions(root, "first.txt"), what="first.txt journaled")
        (out / "victim.txt").write_text("killed before its journal line")
        assert d.proc.wait(30) == -9
    finally:
        d.close()
    entry = d.entry("r1", "victim.txt")
    assert entry is not None and not promotions(root, "victim.txt")
    again = run_clean(root)
    [line] = promotions(root, "victim.txt")
    assert line["recovered"] is True and line["actor"] == "daemon"
    assert (line["sha256"], line["size_bytes"]) == (entry["sha256"], entry["size_bytes"])
    assert len(promotions(root, "first.txt")) == 1
    assert again.events("audit.recovered")[0]["events"] == 1
    third = run_clean(root)
    assert len(promotions(root, "victim.txt")) == 1 and not third.events("audit.recovered")


def test_a_file_written_while_down_then_killed_in_the_window_is_journaled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe F2: victim.txt written while no daemon ran (its ctime before the next life's
    start), promoted by that life's catch-up, killed before its journal line: the next
    start journals it once, recovered."""
    root = tmp_path / "root"
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    (out / "first.txt").write_text("journaled in a clean life")
    run_clean(root)
    (out / "victim.txt").write_text("written while down, killed before its journal line")
    d = _start_killed_in_window(root, monkeypatch)
    try:
        assert d.proc.wait(60) == -9
    finally:
        d.close()
    assert d.entry("r1", "victim.txt") is not None and not promotions(root, "victim.txt")
    again = run_clean(root)
    [line] = promotions(root, "victim.txt")
    assert line["recovered"] is True and len(promotions(root, "first.txt")) == 1
    assert again.events("audit.recovered")[0]["events"] == 1


def run_clean(root: Path) -> Daemon:
    d = start_daemon(root, base_config())
    try:
        d.wait_ready()
    finally:
        assert d.stop() == 0
    return d


def test_a_kill_after_every_line_was_written_journals_nothing(tmp_path: Path) -> None:
    """No false events: a file promoted in an earlier life, read again (a chmod: same
    bytes, its entry's recorded ctime moved) by a daemon then killed (everything journaled
    meanwhile): the next start finds every entry's promotion and journals nothing."""
    root = tmp_path / "root"
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    (out / "a.txt").write_text("promoted in the first life")
    first = run_clean(root)
    assert first.entry("r1", "a.txt") is not None and len(promotions(root, "a.txt")) == 1
    out.joinpath("a.txt").chmod(0o600)
    d = start_daemon(root, base_config())
    try:
        d.wait_ready()
        (out / "b.txt").write_text("promoted in the killed life")
        wait_until(lambda: promotions(root, "b.txt"), what="b.txt journaled")
        d.proc.kill()
        assert d.proc.wait(30) == -9
    finally:
        d.close()
    again = run_clean(root)
    assert not again.events("audit.recovered")
    assert len(promotions(root, "a.txt")) == 1 and len(promotions(root, "b.txt")) == 1
    assert not [e for e in journal(root) if e.get("recovered")]


@pytest.mark.parametrize("text", ['{"clean": false, "started_at": "2026-01-01T00:00:00"}',
                                  '{"clean": false, "started_at": 5}', "not json", "[]"])
def test_a_bad_marker_never_fails_a_start_and_is_replaced(tmp_path: Path, text: str) -> None:
    """A marker planted or torn (a naive time, a number, not JSON): the start goes on, the
    marker is this life's again, and a drained stop marks it clean."""
    store = make_store(tmp_path)
    folder = tmp_path / "artifacts" / ".audit"
    folder.mkdir(exist_ok=True)
    marker = folder / f".daemon-{store.host}.json"
    marker.write_text(text)
    assert auditgap.began(store) == 0
    assert json.loads(marker.read_text())["clean"] is False
    auditgap.stopped(store, drained=True)
    assert json.loads(marker.read_text())["clean"] is True


def test_a_kill_in_the_repair_after_a_clean_stop_is_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker says unclean from before the repair: a commit then (the repair's
    relisting) whose journal line a kill cut, after a clean stop, is journaled next start."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"clean life")
    auditgap.began(store)
    store.promote_files("r1", ["a.txt"])
    auditgap.stopped(store, drained=True)
    auditgap._mine.clear()  # a new process, killed in its repair's window
    auditgap.opening(store)
    write_session_file(tmp_path, "r1", "b.txt", b"committed by the repair, then a kill")
    with monkeypatch.context() as patch:
        patch.setattr(Store, "_journal_promoted", lambda self, results: None)
        store.promote_files("r1", ["b.txt"])
    auditgap._mine.clear()  # the next process
    auditgap.opening(store)
    assert auditgap.began(store) == 1
    lines = read_journal(tmp_path / "artifacts" / ".audit")
    assert sorted((e["filename"], e.get("recovered")) for e in lines
                  if e["event"] == "artifact.promoted") == [("a.txt", None), ("b.txt", True)]


def test_the_journal_is_trusted_whole_only_since_the_first_marker_and_the_oldest_kept_day(
        ) -> None:
    """Coverage: the markers' first life when no day since was pruned; else the oldest kept
    day's midnight; nothing without a day file or a first life."""
    first = datetime(2026, 3, 5, 10, 30, tzinfo=UTC)
    covered = auditgap._covered_from
    assert covered([date(2026, 3, 5), date(2026, 3, 6)], first) == first
    assert covered([date(2026, 3, 1)], first) == first
    assert covered([date(2026, 3, 8)], first) == datetime(2026, 3, 8, tzinfo=UTC)
    assert covered([], first) is None and covered([date(2026, 3, 5)], None) is None
