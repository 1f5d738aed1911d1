"""Signals. The relay: a signal that lands while the main thread holds the lock its action
needs is acted on once that lock is free, instead of deadlocking the main thread."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from promoter.config import MAX_CONFIG_BYTES, load_config
from promoter.errors import ConfigError
from promoter.sigrelay import SignalRelay
from tests.daemon_helpers import logging_process, read_until

# The main thread takes the event's own lock (as `Event.wait` does between its acquire and
# its next bytecode), a SIGTERM lands, the handler runs while the lock is held; then the
# lock is let go and the action must follow. A handler that set the event itself would
# wait for ever on a lock its own thread holds.
SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading
    from promoter.sigrelay import SignalRelay
    {handler_setup}
    with stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes: the handler runs among them, the lock held
            pass
        print("handler returned", flush=True)
    print("acted" if stop.wait(10) else "not acted", flush=True)
""")
RELAYED = """stop = threading.Event()
relay = SignalRelay(lambda signum: stop.set())
signal.signal(signal.SIGTERM, relay.handler)"""


def _run(setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(handler_setup=setup)],
                          capture_output=True, text=True, timeout=30)


def test_a_signal_while_the_main_thread_holds_the_lock_is_acted_on_after() -> None:
    done = _run(RELAYED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["handler returned", "acted"]


def test_the_hazard_is_real_without_the_relay() -> None:
    """The same script with the handler setting the event itself never gets past it."""
    direct = """stop = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
signal.alarm(3)"""
    try:
        done = _run(direct)
    except subprocess.TimeoutExpired:  # pragma: no cover - the alarm ends it first
        raise AssertionError("the direct handler hung past the alarm") from None
    assert "handler returned" not in done.stdout  # it deadlocked; SIGALRM ended it
    assert done.returncode == -14


def test_signals_in_order_and_close_waits_for_them() -> None:
    seen: list[int] = []
    relay = SignalRelay(seen.append)
    for signum in (1, 15, 2):
        relay.handler(signum, None)
    relay.close()
    assert seen == [1, 15, 2]


# -- what an outside probe found around the daemon's and the server's signals (r9) -------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PROMOTER_", "NOTIFY_", "WATCHDOG_"))}


def test_sighups_during_the_stop_do_not_end_the_daemon_with_129(tmp_path: Path) -> None:
    """Probe r9-signals F1: after a clean stop, SIGHUP kept a handler that Python resets to
    its default action as it finalizes; a SIGHUP then ended the process with status 129.
    Here SIGHUPs are sent without pause from the SIGTERM to the end (20 in 20 before)."""
    (tmp_path / "sessions").mkdir()
    argv = [sys.executable, "-m", "promoter", "run", "--root", str(tmp_path)]
    with logging_process(argv, _env()) as run:
        read_until(run, b"daemon.ready")
        run.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while run.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                run.send_signal(signal.SIGHUP)
            time.sleep(0.0005)  # a stream of signals, not a wait for something
        assert run.wait(10) == 0


def test_a_sigterm_just_after_listening_stops_the_server(tmp_path: Path) -> None:
    """Probe r9-signals F2: a SIGTERM between `http.listening` and uvicorn's own handlers
    was taken quietly (9 in 110) and the server went on. Each try signals the moment the
    line is logged; every one must end the server, with status 0."""
    root = tmp_path / "root"
    (root / "artifacts").mkdir(parents=True)
    for _ in range(6):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv = [sys.executable, "-m", "promoter", "serve", "--root", str(root), "--listen",
                f"127.0.0.1:{port}"]
        with logging_process(argv, _env()) as serve:
            seen = read_until(serve, b"http.listening")
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(15) == 0, seen[-2000:]


@pytest.mark.parametrize("kind", ["zero", "fifo", "big"])
def test_a_configuration_that_is_no_regular_small_file_is_refused_at_once(
        tmp_path: Path, kind: str) -> None:
    """Probe r9-signals F3: a reload of a configuration linked to /dev/zero read for ever,
    a FIFO waited for a writer: the main thread never acted on a signal again."""
    path = tmp_path / "config.toml"
    if kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"regular file|larger than"):
        load_config(path, env={})


def test_ctrl_c_during_a_commands_imports_is_status_130_without_a_traceback() -> None:
    """Probe r9-signals F7: a Ctrl-C while `promoter ls` still imported its modules printed
    a KeyboardInterrupt traceback. It lands here at the import of the CLI, made to raise."""
    script = textwrap.dedent("""
        import builtins, sys
        from promoter import entry
        real = builtins.__import__
        def interrupted(name, *args, **kwargs):
            if name == "promoter.cli":
                raise KeyboardInterrupt
            return real(name, *args, **kwargs)
        builtins.__import__ = interrupted
        sys.argv = ["promoter", "ls"]
        raise SystemExit(entry.main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
