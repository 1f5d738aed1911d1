"""The terminal's progress line is the log sink's status line: a terminal nobody reads
never holds up the work that reports (the daemon's catch-up sent no READY=1, a command
never ended), and on a terminal that is read every log line has a screen line of its own."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from promoter.logsink import LogSink
from tests.daemon_helpers import NotifySocket, wait_until, write
from tests.test_cli_mistakes import _KeepFresh
from tests.test_log_sink import _drain, _env, _nonblocking, _promoted

_TOKENS = re.compile(r"(\r|\n|\x1b\[K)")


def _screen(data: bytes) -> list[str]:
    """The lines a terminal shows for `data`: CR, LF and erase-to-end-of-line obeyed."""
    lines, col = [""], 0
    for token in _TOKENS.split(data.decode(errors="replace")):
        if token == "\r":
            col = 0
        elif token == "\n":
            lines.append("")
            col = 0
        elif token == "\x1b[K":
            lines[-1] = lines[-1][:col]
        elif token:
            lines[-1] = lines[-1][:col] + token + lines[-1][col + len(token):]
            col += len(token)
    return lines


def test_only_the_newest_status_is_drawn_and_it_is_cleared_around_log_lines() -> None:
    """Statuses set while the writer is held up by a full pipe: only the newest is
    drawn; log lines after it clear it first and redraw it after; None clears it."""
    r, w = os.pipe()
    _nonblocking(r)
    sink = LogSink(w)
    sink.put("x" * 100_000)  # more than the pipe: the writer waits for the reader
    for i in range(1000):
        sink.status(f"status {i}")
    got = bytearray()

    def written() -> bool:
        got.extend(_drain(r))
        return sink.flush(0)
    try:
        wait_until(written, 20, what="the line and the status")
        assert bytes(got).endswith(b"\rstatus 999\x1b[K")
        assert bytes(got).count(b"status ") <= 2  # the one taken with the line, if any
        drawn = bytes(got).count(b"status ")
        sink.put("a log line")
        wait_until(written, 20, what="a log line")
        sink.status(None)
        wait_until(written, 20, what="the status cleared")
    finally:
        sink.close()
        os.close(w)
        os.close(r)
    assert bytes(got).count(b"status ") == drawn + 1  # drawn again under the log line
    assert _screen(bytes(got)) == ["x" * 100_000, "a log line", ""]


def _old_files(root: Path, runs: int, per_run: int) -> set[tuple[str, str]]:
    """Files an hour old: settled at once."""
    names = {(f"r{r}", f"f{i}.txt") for r in range(runs) for i in range(per_run)}
    past = time.time() - 3600
    for run, name in names:
        path = write(root / "sessions" / run / "output" / name, f"{run}/{name}")
        os.utime(path, (past, past))
    return names


def _store(tmp_path: Path) -> tuple[Path, Path, set[tuple[str, str]], Path]:
    """A root with 600 settled files (~200 KB of log lines: more than a terminal holds)
    and one file kept fresh, so that the work waits 2 s with its progress line shown."""
    root = tmp_path / "root"
    (root / "artifacts").mkdir(parents=True)
    names = _old_files(root, 3, 200)
    fresh = write(root / "sessions" / "r9" / "output" / "fresh.txt", "fresh")
    cfg = tmp_path / "promoter.toml"
    cfg.write_text("[watch]\nsettle_ms = 2000\nrescan_interval_s = 0\n")
    return root, cfg, names, fresh


def _argv(command: str, root: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "promoter", command, "--root", str(root), "--config", str(cfg)]


def test_a_daemon_whose_terminal_nobody_reads_gets_ready_and_stops(tmp_path: Path) -> None:
    """`promoter run` with stderr a terminal never read and a start-up catch-up that
    shows progress: READY=1 is sent, and SIGTERM exits 0 in a few seconds."""
    root, cfg, names, fresh = _store(tmp_path)
    master, slave = os.openpty()
    notify = NotifySocket()
    env = {**_env(), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"}
    try:
        with _KeepFresh(fresh) as keep:
            proc = subprocess.Popen(_argv("run", root, cfg), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=slave, env=env)
            os.close(slave)
            wait_until(lambda: _promoted(root, names), 60, what="600 files promoted")
            keep.done.set()  # the catch-up now waits for fresh.txt, its progress shown
        notify.wait_for("READY=1", 40)
        notify.wait_for("WATCHDOG=1", 20)
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(20) == 0
        took = time.monotonic() - started
        assert took < 8, f"SIGTERM took {took:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
        notify.close()


def test_a_command_whose_terminal_nobody_reads_ends(tmp_path: Path) -> None:
    """`promoter reconcile` with stderr a terminal never read (stdout elsewhere), its
    progress line shown during a wait: it ends, 0, with its summary."""
    root, cfg, names, fresh = _store(tmp_path)
    master, slave = os.openpty()
    try:
        with _KeepFresh(fresh) as keep:
            proc = subprocess.Popen(_argv("reconcile", root, cfg), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=slave, env=_env())
            os.close(slave)
            wait_until(lambda: _promoted(root, names), 60, what="600 files promoted")
            keep.done.set()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    assert proc.returncode == 0
    assert out.startswith(b"601 promoted"), out


def test_on_a_terminal_that_is_read_every_log_line_has_its_own_line(tmp_path: Path) -> None:
    """`promoter reconcile` on a terminal that is read: the progress line shows during the
    wait, every screen line is one whole JSON object, and the progress line is gone at
    the end (it used to share a line with the log line written after it)."""
    root, cfg, names, fresh = _store(tmp_path)
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=read, name="terminal-reader")
    try:
        with _KeepFresh(fresh) as keep:
            proc = subprocess.Popen(_argv("reconcile", root, cfg), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=slave, env=_env())
            os.close(slave)
            reader.start()
            wait_until(lambda: _promoted(root, names), 60, what="600 files promoted")
            keep.done.set()
        assert proc.wait(60) == 0
        reader.join(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    data = b"".join(chunks)
    assert b"reconcile: files 600 of 601, " in data
    screen = _screen(data)
    assert screen[-1] == ""  # the progress line cleared
    promoted = [json.loads(line) for line in screen[:-1]]
    assert sum(line["event"] == "artifact.promoted" for line in promoted) == 601


_FIT = """
import sys
from promoter.logsink import stderr_sink
from promoter.progress import terminal_progress
progress = terminal_progress("reconcile:")
print(progress is None, flush=True)
if progress is not None:
    progress.show("x" * 100)
    sink = stderr_sink()
    assert sink is not None and sink.flush(5)
"""


@pytest.mark.parametrize("term", ["xterm", "dumb"])
def test_the_status_line_fits_the_terminal_and_a_dumb_one_gets_none(term: str) -> None:
    """A status wider than the terminal would wrap, and clearing erases only its last row:
    it is cut to the width. TERM=dumb knows no cursor control: no status line at all."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 20, 0, 0))  # 20 columns
    try:
        done = subprocess.run([sys.executable, "-c", _FIT], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=slave,
                              env={**_env(), "TERM": term}, timeout=30)
        os.close(slave)
        slave = -1
        got = bytearray()
        with contextlib.suppress(OSError):  # EIO once the child's end is closed
            while chunk := os.read(master, 65536):
                got.extend(chunk)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert done.returncode == 0
    if term == "dumb":
        assert done.stdout.strip() == b"True" and b"\x1b" not in got
        return
    assert done.stdout.strip() == b"False"
    drawn = [part for part in bytes(got).replace(b"\x1b[K", b"").split(b"\r") if b"x" in part]
    assert drawn and all(len(part) == 19 for part in drawn)
