"""A SIGHUP that comes while `promoter run` starts, after its configuration was read and
before the daemon handles the signal itself (its imports, ~0.4 s), is a reload the daemon
makes once it can (r7 probe F7: it was dropped, and the changed file never applied)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import base_config, start_daemon, wait_until

# `promoter run` as it is, held at the daemon's own handlers' install until `go` is opened
# for writing: the test's SIGHUP then falls in the gap, whatever the host's speed
HELD = """
import os, sys
import promoter.daemon as daemon
from promoter.entry import main
marker, go = sys.argv.pop(1), sys.argv.pop(1)
setup = daemon.Daemon._setup_process
def held(self):
    open(marker, "w").close()
    open(go).close()  # a FIFO: blocks until the test opens it (a SIGHUP meanwhile: handled)
    return setup(self)
daemon.Daemon._setup_process = held
sys.exit(main())
"""


def opened(fifo: Path) -> int | None:
    """`fifo` opened for writing once its reader has it open (never a hang without one)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None


def test_a_sighup_between_the_configuration_s_read_and_the_handlers_is_a_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configuration changed and SIGHUP sent once it was read, before the daemon's
    handlers: the daemon reloads once ready and applies the change."""
    marker, go = tmp_path / "held", tmp_path / "go"
    os.mkfifo(go)
    popen = subprocess.Popen

    def held(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        assert args[1:3] == ["-m", "promoter"]
        return popen([sys.executable, "-c", HELD, str(marker), str(go), *args[3:]], **kwargs)
    monkeypatch.setattr(subprocess, "Popen", held)
    d = start_daemon(tmp_path / "root", base_config())
    try:
        wait_until(marker.exists, timeout=30, what="the daemon at its handlers")
        d.write_config(base_config(watch={"settle_ms": 80}))
        d.send(signal.SIGHUP)
        os.close(wait_until(lambda: opened(go), timeout=30, what="the daemon held"))
        d.wait_ready()
        line = d.wait_log("daemon.reloaded", timeout=15)
        assert line["changed"] == ["watch.settle_ms"] == line["applied"]
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    assert len(d.events("daemon.reloaded")) == 1
