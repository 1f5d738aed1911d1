"""A start that goes wrong says so in one clear line: out of file descriptors (no traceback,
and the catch-up is made again once it can be), no thread to start, a SIGTERM during the
imports (a log line and a clean exit, as systemd expects of a stop), and many during the
stop."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from promoter.entry import command_of
from tests.daemon_helpers import Daemon, start_daemon, wait_until


def _first(d: Daemon, events: tuple[str, ...]) -> dict[str, Any] | None:
    return next((e for e in d.logs() if e["event"] in events), None)


def test_out_of_descriptors_at_start_is_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a few descriptors the start-up catch-up fails: one line naming the limit and
    what comes next, no traceback, and the daemon goes on (ready, then a clean stop). The
    limit: the first from 8 up at which the daemon starts at all (what it opens before the
    catch-up may change); below it, the start fails with a line of its own."""
    root = tmp_path / "root"
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    (out / "waiting.txt").write_bytes(b"written while the daemon was down")
    limit = [0]

    def few() -> None:  # hard as well: the daemon raises its soft limit toward the hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit[0], limit[0]))
    monkeypatch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen,
                                                               preexec_fn=few))
    ends = ("daemon.failed", "reconcile.failed", "reconcile.finished")
    for limit[0] in range(8, 16):
        d = start_daemon(root)
        try:
            line = wait_until(functools.partial(_first, d, ends), timeout=20,
                              what="the start's outcome")
            assert "exception" not in line
            if line["event"] == "daemon.failed":
                assert d.proc.wait(20) == 1
                continue
            assert line["event"] == "reconcile.failed", f"{limit[0]} descriptors were enough"
            assert line["reason"] == ("out of file descriptors (Too many open files): raise "
                                      "the daemon's limit (LimitNOFILE=)")
            assert line["action"] == "tried again in 5 s"
            d.wait_ready()
            assert not [e for e in d.logs() if "exception" in e]
            assert d.stop() == 0
            return
        finally:
            d.close()
    raise AssertionError("the daemon never started")


def _catches_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM (/proc: the SigCgt mask)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            mask = next(line for line in fh if line.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def test_a_sigterm_during_the_imports_is_a_clean_stop(tmp_path: Path) -> None:
    """`promoter run` catches SIGTERM before its heavy imports: a stop then logs
    daemon.stopping and exits 0 (systemd sees a clean stop), not -15 and silence; a
    reload (SIGHUP) before it is ignored, not a death."""
    d = start_daemon(tmp_path / "root")
    try:
        wait_until(lambda: _catches_sigterm(d.proc.pid), timeout=20, interval=0.001,
                   what="a SIGTERM handler")
        d.send(signal.SIGHUP)
        d.send(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        [line] = d.logs()
        assert (line["event"], line["signal"], line["phase"]) == (
            "daemon.stopping", "SIGTERM", "starting")
    finally:
        d.close()


def test_the_command_is_found_past_the_options() -> None:
    """Only `run` gets the early handler, wherever its options stand."""
    assert command_of(["--config", "x.toml", "run"]) == "run"
    assert command_of(["--root", "run", "ls"]) == "ls"
    assert command_of(["--version"]) is None


def test_no_thread_to_start_is_a_limit_to_raise_not_an_internal_error(tmp_path: Path) -> None:
    """A thread the host will not start (LimitAS=, TasksMax=: r7 probe F10) ends `run` with
    one line naming the limits to raise, not "internal error" (kept for bugs)."""
    (tmp_path / "sessions").mkdir()
    code = ("import sys, promoter.cli as cli\n"
            "def run(args, config):\n"
            "    raise RuntimeError(\"can't start new thread\")\n"
            "cli.COMMANDS['run'] = run\n"
            f"sys.exit(cli.main(['--root', {str(tmp_path)!r}, 'run']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PROMOTER_LOG__FORMAT": "json"})
    assert done.returncode == 1
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert line["event"] == "daemon.failed"
    assert line["reason"] == ("cannot start a thread (can't start new thread): raise the "
                              "daemon's limits (LimitAS=, TasksMax=, LimitNPROC=)")


def test_a_stream_of_sigterms_during_the_stop_still_ends_it_cleanly(tmp_path: Path) -> None:
    """SIGTERM after SIGTERM while the daemon stops, up to its very end (the interpreter's
    exit: r7 probe F11): exit 0 and nothing on stderr but log lines, files arriving."""
    d = start_daemon(tmp_path / "root")
    try:
        d.wait_ready()
        out = d.sessions / "r1" / "output"
        out.mkdir(parents=True)
        for i in range(100):
            (out / f"f{i:03d}.txt").write_text("x" * 100)
        sent = 0
        while d.proc.poll() is None and sent < 2000:
            d.send(signal.SIGTERM)
            sent += 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(0.005)
        assert d.proc.wait(20) == 0, f"after {sent} SIGTERMs"
        assert d.events("daemon.stopped")
        assert all("exception" not in e for e in d.logs())  # each line JSON (logs() parses)
    finally:
        d.close()
