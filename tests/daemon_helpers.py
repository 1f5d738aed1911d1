"""Helpers for the daemon tests: the real `promoter run` in a subprocess, a notify socket,
JSON log lines, and waiting with a deadline (never a fixed sleep)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from watchdog.events import FileSystemEventHandler

from promoter.observers import ObserverLike, Report
from promoter.tomlout import dumps

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
               what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause.wait(interval)


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]
    try:
        wait_until(lambda: not leaked(), timeout=5, what="threads to end")
    except AssertionError:
        raise AssertionError(f"threads leaked: {[t.name for t in leaked()]}") from None


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pn-", dir="/tmp")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0)
        self.messages: list[str] = []

    def _drain(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (BlockingIOError, TimeoutError):
                return

    def wait_for(self, text: str, timeout: float = 10.0, after: int = 0) -> int:
        """Index of the first message from `after` on that contains `text` on a line."""
        def find() -> int | None:
            self._drain()
            for i, message in enumerate(self.messages[after:], start=after):
                if text in message.splitlines() or any(line.startswith(text)
                                                       for line in message.splitlines()):
                    return i + 1  # 1-based so that the first message is truthy
            return None
        return wait_until(find, timeout, what=f"notify {text!r}") - 1

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


class Daemon:
    """One `promoter run` subprocess on its own storage root."""

    def __init__(self, root: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 notify: NotifySocket | None = None, before: str = "") -> None:
        """`before`: Python run in the daemon's process before promoter's own entry point
        (to set a module's constant the way no configuration does)."""
        self.root = root
        self.sessions = root / "sessions"
        self.artifacts = root / "artifacts"
        self.cfgfile = root.parent / f"{root.name}.toml"
        self.write_config(config)
        self.notify = notify or NotifySocket()
        self.stderr_path = root.parent / f"{root.name}.stderr"
        self.stdout_path = root.parent / f"{root.name}.stdout"
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PROMOTER_", "WATCHDOG_", "NOTIFY_"))}
        environ["NOTIFY_SOCKET"] = self.notify.path
        environ.update(env or {})
        self._err = self.stderr_path.open("wb")
        self._log_offset = 0  # logs(): what has been parsed so far
        self._log_lines: list[dict[str, Any]] = []
        self._out = self.stdout_path.open("wb")
        entry = ["-m", "promoter"] if not before else [
            "-c", f"{before}\nimport runpy\nrunpy.run_module('promoter', run_name='__main__', "
            "alter_sys=True)"]
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "run", "--root", str(root), "--config", str(self.cfgfile)],
            stdout=self._out, stderr=self._err, env=environ, stdin=subprocess.DEVNULL)

    def write_config(self, config: dict[str, Any]) -> None:
        self.cfgfile.write_text(dumps(config))

    # -- logs ----------------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """Every complete stderr line, parsed: each must be one JSON object. Only the lines
        added since the last call are read and parsed: tests poll this every few ms, and
        re-parsing a long log each time cost more CPU than the daemon under test had."""
        with self.stderr_path.open("rb") as fh:
            fh.seek(self._log_offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # the last piece may be a line being written
        if end:
            self._log_offset += end
            self._log_lines.extend(json.loads(line) for line in data[:end - 1].split(b"\n"))
        return list(self._log_lines)

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("event") == event
                and all(e.get(k) == v for k, v in fields.items())]

    def wait_log(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return wait_until(lambda: (self.events(event, **fields) or [None])[0], timeout,
                          what=f"log {event} {fields}")

    def wait_ready(self, timeout: float = 20.0) -> None:
        self.notify.wait_for("READY=1", timeout)
        self.wait_log("daemon.ready", timeout)

    # -- the store -----------------------------------------------------------------------

    def meta(self, run_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.artifacts / run_id / "metadata.json")
                                              .read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    def entry(self, run_id: str, filename: str) -> dict[str, Any] | None:
        meta = self.meta(run_id) or {"artifacts": []}
        found = [a for a in meta["artifacts"] if a["filename"] == filename]
        return found[-1] if found else None

    def wait_entry(self, run_id: str, filename: str, timeout: float = 10.0,
                   check: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            e = self.entry(run_id, filename)
            return e if e is not None and check(e) else None
        return wait_until(find, timeout, what=f"{run_id}/{filename} in the store")

    # -- the process ---------------------------------------------------------------------

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.stderr_path.read_text().splitlines()[-15:]
            raise AssertionError("daemon did not stop:\n" + "\n".join(tail)) from None
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for fh in (self._err, self._out):
            if not fh.closed:
                fh.close()
        if self.notify.sock.fileno() != -1:
            self.notify.close()


def base_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """Fast settings for tests: settle 50 ms, no rescan, no sweep within a test's life."""
    config: dict[str, Any] = {
        "watch": {"settle_ms": 50, "rescan_interval_s": 0},
        "retention": {"sweep_interval_s": 3600},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def start_daemon(root: Path, config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> Daemon:
    (root / "sessions").mkdir(parents=True, exist_ok=True)
    return Daemon(root, config if config is not None else base_config(), env)


def copy_under_way(pid: int, folder: Path) -> bool:
    """The daemon `pid` is copying into `folder` (or a folder below it): a `.promoter-`
    temporary there, or an unnamed copy (O_TMPFILE) it holds open, which /proc shows as
    `folder/#inode (deleted)`."""
    if folder.exists() and any(folder.rglob(".promoter-*")):
        return True
    links = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return any(link.startswith(f"{folder}/") and "/#" in link for link in links)


def write(path: Path, data: bytes | str = b"data") -> Path:
    """Write a session file in one go (open, write, close), making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


class FakeObserver:
    """Scripted: healthy until told otherwise; records its life."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.trouble: str | None = None
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def join(self, timeout: float | None = None) -> None:
        return None

    def health(self) -> str | None:
        return self.trouble

    def idle(self) -> bool:
        return True


class FakeFactory:
    """Hands out FakeObservers; kinds listed in `broken` raise as an unusable inotify does."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.made: list[FakeObserver] = []
        self.broken = broken or set()

    def __call__(self, kind: str, root: str, handler: FileSystemEventHandler,
                 report: Report) -> ObserverLike:
        if kind in self.broken:
            raise OSError(24, "inotify instance limit reached")
        observer = FakeObserver(kind)
        self.made.append(observer)
        return observer


def child_pids(pid: int) -> list[int]:
    """The pids of `pid`'s children (its main thread's, as /proc lists them); [] once gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(one) for one in text.split()]


@contextlib.contextmanager
def logging_process(argv: list[str],
                    env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` started with its stderr (the JSON log) on a pipe; killed at the end if it
    still runs, its pipe closed."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """`proc`'s stderr up to the first line holding `marker` (the process must say it)."""
    assert proc.stderr is not None
    seen = b""
    while marker not in seen:
        line = proc.stderr.readline()
        assert line, seen[-2000:]
        seen += line
    return seen
