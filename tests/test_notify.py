"""systemd notifications: silent without NOTIFY_SOCKET, never blocking, watchdog settings read
from the environment."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import structlog

from promoter.notify import (
    NullNotifier,
    SystemdNotifier,
    make_notifier,
    monotonic_usec,
    watchdog_interval,
)
from tests.daemon_helpers import NotifySocket


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    sock = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", sock.path)
    yield sock
    sock.close()


def test_without_notify_socket_everything_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: the notifier is the null one and sending does nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = make_notifier()
    assert isinstance(notifier, NullNotifier)
    notifier.notify("READY=1")


def test_messages_reach_the_socket_whole(listener: NotifySocket) -> None:
    """A multi-line message is one datagram, as sd_notify expects."""
    notifier = make_notifier()
    assert isinstance(notifier, SystemdNotifier)
    notifier.notify("RELOADING=1\nMONOTONIC_USEC=42")
    i = listener.wait_for("RELOADING=1")
    assert listener.messages[i] == "RELOADING=1\nMONOTONIC_USEC=42"
    notifier.close()


def test_abstract_socket_addresses_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """An address starting with @ names an abstract socket (as systemd may pass)."""
    name = f"promoter-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = SystemdNotifier()
        notifier.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
        notifier.close()


def test_a_missing_socket_is_reported_once_and_ignored(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: os.PathLike[str]) -> None:
    """A NOTIFY_SOCKET that does not exist is one warning; sending never raises."""
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(tmp_path, "nope"))
    with structlog.testing.capture_logs() as logs:
        notifier = SystemdNotifier()
        notifier.notify("READY=1")
        notifier.notify("WATCHDOG=1")
    assert [e["event"] for e in logs] == ["notify.failed"]


def test_a_reader_that_does_not_keep_up_never_blocks_the_sender(listener: NotifySocket) -> None:
    """When the socket's queue is full, messages are dropped instead of blocking the daemon."""
    notifier = SystemdNotifier()
    started = time.monotonic()
    for _ in range(5000):
        notifier.notify("WATCHDOG=1")
    assert time.monotonic() - started < 5
    assert notifier.dropped > 0
    notifier.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "200000"}, 0.1),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4242"}, 0.1),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str],
                                                    expected: float | None) -> None:
    """Pings go every half WATCHDOG_USEC, and only when WATCHDOG_PID (if set) is this process."""
    assert watchdog_interval(env, pid=4242) == expected


def test_monotonic_usec_is_clock_monotonic() -> None:
    """MONOTONIC_USEC= is CLOCK_MONOTONIC in microseconds, the clock systemd compares with."""
    before = time.monotonic_ns() // 1000
    value = monotonic_usec()
    assert before <= value <= time.monotonic_ns() // 1000


def test_a_state_change_waits_for_room_and_a_full_queue_is_said_once(
        listener: NotifySocket) -> None:
    """Probe r9-signals F4: with systemd's queue full, the READY=1 that ends a reload was
    dropped without a word (systemd then thinks the unit reloads for ever). It now waits a
    moment for room; what is dropped is said once an episode."""
    notifier = SystemdNotifier()
    with structlog.testing.capture_logs() as logs:
        while notifier.dropped == 0:
            notifier.notify("WATCHDOG=1")
        for _ in range(10):
            notifier.notify("WATCHDOG=1")
        reader = threading.Timer(0.1, listener._drain)  # the reader catches up meanwhile
        reader.start()
        notifier.notify("READY=1\nSTATUS=reloaded")
        reader.join()
    listener._drain()
    assert any(m.startswith("READY=1") for m in listener.messages)
    assert [e["event"] for e in logs] == ["notify.failed"]
    notifier.close()
