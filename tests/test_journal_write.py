"""The journal's appends shared by concurrent threads (journalwrite.py, DESIGN §11): fewer
flushes, every batch flushed before it returns, lines whole beside other processes' appends."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from promoter.audit import AUDIT_DIR, LocalJournal
from promoter.journalhold import PartlyWritten
from tests.daemon_helpers import wait_until

DAY = "2026-11-30"


def lines_of(batch: int, count: int, pad: int = 200) -> bytes:
    return b"".join((json.dumps({"event": "artifact.promoted", "batch": batch, "n": n,
                                 "pad": "p" * pad}) + "\n").encode() for n in range(count))


def read_events(folder: Path) -> list[dict[str, Any]]:
    raw = (folder / f"{DAY}.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]  # a torn line fails here


def queued(journal: LocalJournal) -> int:
    with journal.writer._cond:
        return len(journal.writer._queue)


def test_batches_appended_at_once_share_one_write_and_one_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six threads append while the first one's flush is under way: the five others wait, then
    go in one write and one fdatasync (was: six of each), and none returns before its flush."""
    journal = LocalJournal(tmp_path / AUDIT_DIR)
    real_write, real_flush = os.write, os.fdatasync
    writes: list[int] = []
    flushed: list[int] = []  # bytes in the file at each flush
    returned: dict[int, int] = {}  # batch -> flushes done when its append returned
    entered = threading.Semaphore(0)

    def write(fd: int, data: Any) -> int:
        if f"/{AUDIT_DIR}/" in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(len(data))
        return real_write(fd, data)

    def fdatasync(fd: int) -> None:
        if not flushed:  # the first flush lasts until the five others are queued behind it
            wait_until(lambda: queued(journal) == 5, timeout=10, what="five batches queued")
        real_flush(fd)
        flushed.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", fdatasync)

    def one(batch: int) -> None:
        if batch:
            entered.acquire()  # the others start once the first is writing
        journal.append(DAY, lines_of(batch, 3))
        returned[batch] = len(flushed)

    threads = [threading.Thread(target=one, args=(b,), name=f"w{b}") for b in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: writes, timeout=10, what="the first write")
    for _ in range(5):
        entered.release()
    for thread in threads:
        thread.join(20)
    assert not any(t.is_alive() for t in threads)
    assert len(writes) == 2 and len(flushed) == 2 and journal.writer.flushes == 2
    assert returned[0] >= 1 and all(returned[b] == 2 for b in range(1, 6))
    events = read_events(tmp_path / AUDIT_DIR)
    day_file = tmp_path / AUDIT_DIR / f"{DAY}.jsonl"
    assert len(events) == 18 and flushed[-1] == day_file.stat().st_size
    for start in range(0, 18, 3):  # each batch's lines together, in their order
        assert [e["n"] for e in events[start:start + 3]] == [0, 1, 2]
        assert len({e["batch"] for e in events[start:start + 3]}) == 1


def test_a_failed_group_write_tells_each_batch_what_of_it_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk in the middle of a group's write: the batch wholly written is not written
    again, the torn one is told its written part, the one not reached is held whole."""
    from promoter.journalwrite import _Waiting

    journal = LocalJournal(tmp_path / AUDIT_DIR)
    journal.append(DAY, lines_of(0, 1))
    first, second, third = lines_of(1, 2), lines_of(2, 2), lines_of(3, 2)
    real_write = os.write
    cut = len(first) + len(second) // 2

    calls: list[int] = []

    def full(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:cut]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    batches = [_Waiting(DAY, first), _Waiting(DAY, second), _Waiting(DAY, third)]
    journal.writer._commit(batches)
    monkeypatch.undo()
    rest = len(second) - len(second) // 2 + len(third)
    assert calls == [len(first) + len(second) + len(third), rest]
    assert all(b.done for b in batches)
    one, two, three = (b.error for b in batches)
    assert isinstance(one, PartlyWritten) and one.sent == len(first)
    assert isinstance(two, PartlyWritten) and two.sent == len(second) // 2
    assert three is not None and not isinstance(three, PartlyWritten)
    assert three.errno == errno.ENOSPC


def test_a_failing_append_raises_in_every_waiting_thread(tmp_path: Path) -> None:
    """`.audit` made a file: every batch of the group raises its own error (none returns as
    if written, none waits for ever)."""
    (tmp_path / AUDIT_DIR).write_bytes(b"")
    journal = LocalJournal(tmp_path / AUDIT_DIR)
    errors: list[BaseException] = []

    def one(batch: int) -> None:
        try:
            journal.append(DAY, lines_of(batch, 2))
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(b,)) for b in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(errors) == 4 and all(e.errno == errno.ENOTDIR for e in errors)  # type: ignore[attr-defined]


CLI_APPENDS = """
import sys
from pathlib import Path
from promoter.audit import LocalJournal
from tests.test_journal_write import lines_of
journal = LocalJournal(Path(sys.argv[1]))
for n in range(int(sys.argv[2])):
    journal.append(sys.argv[3], lines_of(1000 + n, 1, pad=3000))
"""


def test_threads_and_another_process_appending_keep_every_line_whole(tmp_path: Path) -> None:
    """Three threads of this process and a CLI process append to one day at once: every
    line whole, every batch's lines together, none lost."""
    folder = tmp_path / AUDIT_DIR
    journal = LocalJournal(folder)
    journal.append(DAY, lines_of(0, 1))
    cli = subprocess.Popen([sys.executable, "-c", CLI_APPENDS, str(folder), "60", DAY],
                           cwd=Path(__file__).parent.parent)

    def worker(base: int) -> None:
        for n in range(60):
            journal.append(DAY, lines_of(base + n, 1 + n % 5, pad=50 + 37 * n))

    threads = [threading.Thread(target=worker, args=(b,)) for b in (100, 300, 500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert cli.wait(60) == 0
    events = read_events(folder)
    assert len(events) == 1 + 60 + 3 * sum(1 + n % 5 for n in range(60))
    by_batch: dict[int, list[int]] = {}
    order: list[int] = []
    for event in events:
        if not order or order[-1] != event["batch"]:
            order.append(event["batch"])
        by_batch.setdefault(event["batch"], []).append(event["n"])
    assert len(order) == len(by_batch) == 1 + 60 + 180  # no batch split by another's lines
    assert all(ns == list(range(len(ns))) for ns in by_batch.values())
    assert journal.writer.flushes <= 1 + 180


def test_a_day_file_or_folder_replaced_between_appends_is_followed_or_refused(
        tmp_path: Path) -> None:
    """No descriptor outlives an append: a day file renamed away (rotated) gets nothing more,
    the next append makes a new one; `.audit` then replaced by a link is refused."""
    folder = tmp_path / AUDIT_DIR
    journal = LocalJournal(folder)
    journal.append(DAY, lines_of(0, 2))
    (folder / f"{DAY}.jsonl").rename(tmp_path / "rotated.jsonl")
    journal.append(DAY, lines_of(1, 1))
    assert (tmp_path / "rotated.jsonl").read_bytes() == lines_of(0, 2)
    assert read_events(folder) == [json.loads(lines_of(1, 1))]
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere)
    with pytest.raises(NotADirectoryError):
        journal.append(DAY, lines_of(2, 1))
    assert (elsewhere / f"{DAY}.jsonl").read_bytes() == lines_of(1, 1)


def test_a_lock_held_by_another_process_is_waited_for_once_not_once_a_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe r9-journal F1: with the day file's lock held for ever elsewhere, each group
    waited LOCK_WAIT_S in turn (twice main's stop time); after a wait in vain the next
    appends try once, and wait again only after the lock was had once more."""
    from promoter import journalwrite
    monkeypatch.setattr(journalwrite, "LOCK_WAIT_S", 0.4)
    journal = LocalJournal(tmp_path / AUDIT_DIR)
    journal.append(DAY, lines_of(0, 1))
    holder = os.open(tmp_path / AUDIT_DIR / f"{DAY}.jsonl", os.O_RDONLY)
    try:
        import fcntl
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = journalwrite.time.monotonic()
        for batch in (1, 2, 3, 4):
            journal.append(DAY, lines_of(batch, 2))
        assert journalwrite.time.monotonic() - started < 0.4 * 2  # one wait, not four
    finally:
        os.close(holder)
    journal.append(DAY, lines_of(5, 1))  # the lock had again: a later holder is waited for
    assert [e["batch"] for e in read_events(tmp_path / AUDIT_DIR)] == [0, 1, 1, 2, 2, 3, 3,
                                                                       4, 4, 5]


def test_a_non_os_error_after_the_write_is_no_second_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe r9-journal F2: an exception other than OSError once the lines were written
    (here after the real flush) reports them as sent, so they are never written again."""
    real = os.fdatasync

    def flush_then_fail(fd: int) -> None:
        real(fd)
        raise RuntimeError("injected")

    journal = LocalJournal(tmp_path / AUDIT_DIR)
    monkeypatch.setattr(os, "fdatasync", flush_then_fail)
    data = lines_of(7, 3)
    with pytest.raises(PartlyWritten) as raised:
        journal.append(DAY, data)
    assert raised.value.sent == len(data)
    assert [e["n"] for e in read_events(tmp_path / AUDIT_DIR)] == [0, 1, 2]
