"""systemd notifications (DESIGN §5), behind a small interface that is silent without systemd.

The sdnotify package only sends datagrams to `$NOTIFY_SOCKET`; reading
`$WATCHDOG_USEC` (and `$WATCHDOG_PID`, which says whose watchdog it is) is ours.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Mapping
from typing import Any, Protocol

from promoter import events
from promoter.logs import get_logger

__all__ = [
    "Notifier",
    "NullNotifier",
    "SystemdNotifier",
    "make_notifier",
    "monotonic_usec",
    "watchdog_interval",
]

log = get_logger()
STATE_WAIT_S = 0.5
STATE_CHANGES = ("READY=1", "RELOADING=1", "STOPPING=1")


class Notifier(Protocol):
    """Sends one sd_notify message (`READY=1`, `STATUS=...`, several lines allowed)."""

    def notify(self, message: str) -> None: ...


class NullNotifier:
    """No systemd: every notification is dropped."""

    def notify(self, message: str) -> None:
        return None


class SystemdNotifier:
    """Sends to `$NOTIFY_SOCKET` through sdnotify; a failing socket is reported once, then
    ignored: notifications are never worth stopping the daemon for."""

    def __init__(self) -> None:
        import sdnotify

        self._failed = False
        self._notifier: Any = None
        self.dropped = 0  # messages dropped because the reader's queue was full
        self._episode = 0  # of them, since the last message sent
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address.startswith("@") and not os.path.exists(address):
            # sdnotify would leak the socket it opened before failing to connect
            self._fail(f"NOTIFY_SOCKET {address!r} does not exist")
            return
        try:
            self._notifier = sdnotify.SystemdNotifier(debug=True)
        except OSError as exc:
            self._fail(str(exc))
            return
        # A reader that does not keep up must never stall the daemon: a blocking send on a
        # full datagram queue would hang the main loop, signals and all. Drop instead.
        self._notifier.socket.setblocking(False)

    def _fail(self, reason: str) -> None:
        if not self._failed:
            self._failed = True
            log.warning(events.NOTIFY_FAILED, reason=reason)

    def notify(self, message: str) -> None:
        if self._notifier is None:
            return
        try:
            self._send(message)
            self._episode = 0
        except BlockingIOError:
            self.dropped += 1
            self._episode += 1
            if self._episode == 1:  # once an episode: a reader that fell behind (r9 F4)
                log.warning(events.NOTIFY_FAILED, reason="systemd's queue is full: dropped",
                            message=message.split("\n", 1)[0])
        except OSError as exc:
            self._fail(str(exc))

    def _send(self, message: str) -> None:
        """A state change (READY=1, RELOADING=1, STOPPING=1) waits up to STATE_WAIT_S for
        room: a READY=1 dropped after a reload left systemd thinking the unit reloads for
        ever (probe r9-signals F4). Anything else is dropped at once when there is none."""
        deadline = time.monotonic() + STATE_WAIT_S
        while True:
            try:
                self._notifier.notify(message)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if not message.startswith(STATE_CHANGES) or left <= 0:
                    raise
                select.select([], [self._notifier.socket], [], left)

    def close(self) -> None:
        sock = getattr(self._notifier, "socket", None)
        if sock is not None:
            sock.close()
        self._notifier = None


def make_notifier() -> Notifier:
    """The notifier for this process: systemd's when `$NOTIFY_SOCKET` is set, else silence."""
    return SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else NullNotifier()


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` pings (half of `$WATCHDOG_USEC`), or None when systemd
    expects none: unset, malformed, zero, or `$WATCHDOG_PID` naming another process."""
    environ = os.environ if env is None else env
    text = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != (os.getpid() if pid is None else pid)):
        return None
    if not text.isdigit() or int(text) == 0:
        return None
    return int(text) / 2 / 1e6


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, for `MONOTONIC_USEC=` beside `RELOADING=1`."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
