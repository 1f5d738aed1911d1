"""The signal relay: a signal that lands while the main thread holds the lock its action
needs is acted on once that lock is free, instead of deadlocking the main thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from promoter.sigrelay import SignalRelay

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
