"""Suite-wide guards: no test may leak a thread (STYLE §12), nor its objects out of the
collector's sight (the start-up repair freezes what it parsed: `startup.prepare`)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

# AnyIO's worker threads and the log writer on fd 2 (started only when sys.stderr is not
# captured: `pytest -s`) live as long as the interpreter, by design.
LONG_LIVED = ("AnyIO worker thread", "promoter-log-writer")


def _foreign(threads: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threads if t.is_alive() and not t.name.startswith(LONG_LIVED)]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    leaked = _foreign(set(threading.enumerate()) - before)
    while leaked and time.monotonic() < deadline:
        leaked[0].join(timeout=0.1)
        leaked = _foreign(set(threading.enumerate()) - before)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def collector_unfrozen() -> Iterator[None]:
    """What a test's start-up repair froze (gc.freeze) is collectable again after it."""
    yield
    gc.unfreeze()
