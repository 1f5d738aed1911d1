"""Journal lines a failed append could not write, held and written late (DESIGN §11).

Every change is one audit event. A batch the journal could not take (`.audit` made a file
or a link, a full disk, any OSError) is held as its encoded lines, with their own times,
and appended before any later batch of the process (and, in the daemon, every RETRY_S)
until it goes through: every change gets its one line, late, in its order, in the day file
of its time. Lines a failed append did write are never held again (no line twice; a torn
one is written again whole after it, the torn part is a bad line that reading skips).
Past MAX_HELD_BYTES a batch is dropped (told, and counted): `settle` says whether anything
is still missing, so a daemon that stops with lines missing leaves its life marked unclean
and the next start looks for them (auditgap.py). Nothing here runs while nothing is held.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from promoter import events
from promoter.logs import get_logger

__all__ = ["MAX_HELD_BYTES", "RETRY_S", "Held", "PartlyWritten", "unwritten"]

log = get_logger()
MAX_HELD_BYTES = 16 << 20  # about 50,000 events of ~300 bytes; past it a batch is dropped
RETRY_S = 5.0  # held lines are tried again this often, and before every later batch


class PartlyWritten(OSError):
    """An append failed after its first `sent` bytes reached the file (a full disk mid-write,
    a failed flush): those lines are in the journal, so a retry must not write them again."""

    sent: int = 0


def unwritten(exc: OSError, data: bytes) -> bytes:
    """The lines of `data` a failed append did not write whole."""
    sent = exc.sent if isinstance(exc, PartlyWritten) else 0
    return data[data.rfind(b"\n", 0, sent) + 1:] if sent else data


class _Sink(Protocol):
    def append(self, day: str, data: bytes) -> None: ...


class Held:
    """The held lines of one Auditor, in their order; thread-safe."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self._lines: deque[tuple[str, bytes]] = deque()  # (day, whole lines)
        self._bytes = 0
        self.dropped = 0  # events given up past MAX_HELD_BYTES
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.retry_s: float | None = None  # the timer's period; None: no timer (a CLI)

    def keep_retrying(self) -> None:
        """Held lines are tried every RETRY_S too, not only before a later batch (a daemon)."""
        self.retry_s = RETRY_S

    def __bool__(self) -> bool:
        return bool(self._lines)

    def events(self) -> int:
        """Events done but not yet journaled."""
        return sum(data.count(b"\n") for _, data in self._lines)

    def keep(self, day: str, data: bytes, count: int) -> None:
        """Hold `data` (a batch's unwritten lines, `count` events) for a later try."""
        with self._lock:
            self._keep(day, data, count)

    def write(self, day: str, data: bytes, count: int) -> OSError | None:
        """The held lines, then this batch's; the failure that stopped them (the batch's
        unwritten lines then held after the others), or None."""
        with self._lock:
            failed = self._flush()
            if failed is None:
                try:
                    self.sink.append(day, data)
                    return None
                except OSError as exc:
                    failed, data = exc, unwritten(exc, data)
            self._keep(day, data, count)
            return failed

    def settle(self) -> bool:
        """One last try (at a stop; the timer ends); False when an event is still not
        journaled."""
        with self._lock:
            self.retry_s = None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()  # outside the lock: a tick may be waiting for it
        with self._lock:
            self._flush()
            if self._lines:
                log.error(events.AUDIT_FAILED, events=self.events(),
                          reason="journal still not writable at the stop: left to the next "
                          "start's look for promotions not journaled")
            return not self._lines and not self.dropped

    def _keep(self, day: str, data: bytes, count: int) -> None:
        if not data:
            return
        if self._bytes + len(data) > MAX_HELD_BYTES:
            self.dropped += count
            log.error(events.AUDIT_FAILED, events=count, dropped=self.dropped,
                      reason="too many lines held while the journal fails: dropped")
            return
        self._lines.append((day, data))
        self._bytes += len(data)
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._lines and self.retry_s is not None:
            self._timer = threading.Timer(self.retry_s, self._tick)
            self._timer.daemon = True
            self._timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._timer = None
            self._flush()
            self._arm()

    def _flush(self) -> OSError | None:
        """Append the held lines in their order; the first failure stops them."""
        late = 0
        try:
            while self._lines:
                day, data = self._lines[0]
                try:
                    self.sink.append(day, data)
                except OSError as exc:
                    rest = unwritten(exc, data)
                    late += data.count(b"\n") - rest.count(b"\n")
                    self._bytes -= len(data) - len(rest)
                    if rest:
                        self._lines[0] = (day, rest)
                        return exc
                    self._lines.popleft()
                    continue
                self._lines.popleft()
                self._bytes -= len(data)
                late += data.count(b"\n")
            return None
        finally:
            if late:
                log.warning(events.AUDIT_RETRIED, events=late, held=self.events(),
                            reason="journaled late, with their own times")
