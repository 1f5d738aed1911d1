"""Findings of the probe of the last fixes (probe-fix G1, G2, G4, G5): a journal lock held
by another process, a big file retried alone, `.audit` replaced by a link, and the
unhealthy line repeated once a second."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from promoter import journalwrite
from promoter.audit import AUDIT_DIR, LocalJournal
from promoter.daemon import _kind
from promoter.settle import Batch, FileState
from promoter.stopping import one_by_one
from tests.store_helpers import make_store, write_session_file

LINE = (json.dumps({"event": "artifact.promoted"}) + "\n").encode()


def test_a_journal_lock_held_for_ever_costs_no_line_and_no_stuck_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """G1: another process holds the day file's lock and never lets go: the append waits at
    most LOCK_WAIT_S, then writes its lines anyway (was: the worker waited for ever)."""
    monkeypatch.setattr(journalwrite, "LOCK_WAIT_S", 0.2)
    journal = LocalJournal(tmp_path / AUDIT_DIR)
    journal.append("2026-11-30", LINE)
    holder = os.open(tmp_path / AUDIT_DIR / "2026-11-30.jsonl", os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: it conflicts like a process
        started = time.monotonic()
        journal.append("2026-11-30", LINE * 2)
        assert time.monotonic() - started < 5
    finally:
        os.close(holder)
    lines = (tmp_path / AUDIT_DIR / "2026-11-30.jsonl").read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)


def test_an_audit_folder_replaced_by_a_link_is_neither_written_nor_pruned(tmp_path: Path) -> None:
    """G4: `.audit` as a link to a folder elsewhere: no day file is written there, and the
    prune deletes nothing there (was: both followed the link)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2020-01-01.jsonl").write_bytes(LINE)
    (tmp_path / AUDIT_DIR).symlink_to(elsewhere)
    journal = LocalJournal(tmp_path / AUDIT_DIR)
    with pytest.raises(NotADirectoryError):
        journal.append("2026-11-30", LINE)
    assert journal.prune("2026-01-01") == []
    assert sorted(os.listdir(elsewhere)) == ["2020-01-01.jsonl"]


def test_a_file_retried_alone_is_allowed_the_time_its_size_needs(tmp_path: Path) -> None:
    """G2: after a batch raised, each file is tried alone; its step carries its size, so the
    health check gives a big file on a slow store its allowance (was: 1 s whatever its size)."""
    store = make_store(tmp_path)
    sizes = {"small.txt": 10, "big.bin": 3 << 20}
    for name, size in sizes.items():
        write_session_file(tmp_path, "r1", name, b"x" * size)
    steps: list[tuple[int, int]] = []

    def stat(run_id: str, name: str) -> FileState | None:
        st = (store.sessions_path / run_id / "output" / name).stat()
        return FileState(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    results, raised = one_by_one(store, Batch("r1", tuple(sizes)),
                                 lambda files, nbytes: steps.append((files, nbytes)), stat)
    assert steps == [(1, 10), (1, 3 << 20)] and not raised
    assert {r.filename for r in results} == set(sizes)


def test_one_problem_is_logged_once_while_its_seconds_count_up() -> None:
    """G5: "no chunk for 31 s" then "for 32 s" is one problem (was: a line every ping)."""
    assert _kind("promoter-worker-1 has finished no chunk for 31 s") == \
        _kind("promoter-worker-1 has finished no chunk for 32 s")
    assert _kind("promoter-settle is not running") != \
        _kind("promoter-worker-1 has finished no chunk for 31 s")
