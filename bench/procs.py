"""Child processes (one process group each, always cleaned up) and /proc readings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")

_LIVE: set[Proc] = set()


class ToolFailed(RuntimeError):
    """A tool did not start, died, or did not do what was asked in time."""


class Proc:
    """A child in a session (and process group) of its own, stdout+stderr to a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self._stopped = False
        self._rc: int | None = None
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        except BaseException:
            self._log.close()
            raise
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the main process to exit; None on timeout."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the group, wait up to timeout_s, then SIGKILL whatever is left of it.

        Idempotent: a second call returns the first one's exit code and signals nothing
        (the group id could have been reused by then).
        """
        if self._stopped:
            return self._rc
        rc: int | None = self.popen.poll()
        if rc is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            rc = self.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if rc is None:
            rc = self.wait(5.0)
        self._log.close()
        _LIVE.discard(self)
        self._stopped = True
        self._rc = rc
        return rc

    def log_tail(self, max_bytes: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")


def stop_all() -> None:
    """Last-resort cleanup of every child still running (called from run.py's finally)."""
    for proc in list(_LIVE):
        proc.stop(timeout_s=5.0)


def run_timed(
    argv: Sequence[str],
    log_path: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> tuple[int, float]:
    """Run argv to completion in its own process group; (exit code, wall seconds)."""
    t0 = time.perf_counter()
    proc = Proc(argv, log_path, env=env)
    try:
        rc = proc.wait(timeout_s)
        elapsed = time.perf_counter() - t0
        if rc is None:
            raise ToolFailed(f"{argv[0]} did not finish within {timeout_s:.0f} s")
        return rc, elapsed
    finally:
        proc.stop(timeout_s=5.0)


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.005,
    what: str = "condition",
    alive: Callable[[], bool] | None = None,
) -> float:
    """Poll predicate until true; seconds waited. Raises ToolFailed on timeout or death."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    max_iter = int(timeout_s / interval_s) + 2
    for _ in range(max_iter):
        if predicate():
            return time.monotonic() - t0
        if alive is not None and not alive():
            if predicate():
                return time.monotonic() - t0
            raise ToolFailed(f"process died while waiting for {what}")
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    raise ToolFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


class LogWatcher:
    """Reads a growing log file incrementally and looks for a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", "replace") for line in lines]

    def found(self, match: Callable[[str], bool]) -> bool:
        return any(match(line) for line in self.new_lines())


def json_event(name: str) -> Callable[[str], bool]:
    """A line matcher for a JSON log line whose "event" is name."""

    def match(line: str) -> bool:
        line = line.strip()
        if not line.startswith("{"):
            return False
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        return isinstance(obj, dict) and obj.get("event") == name

    return match


# ---------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # fields after "pid (comm)": index 0 is field 3 (state)
    return raw[raw.rfind(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def group_cpu_ticks(pgid: int) -> int:
    """utime+stime+cutime+cstime summed over the live members of a process group.

    Reaped children (rsync, cp) are counted through their parent's cutime/cstime.
    """
    total = 0
    for pid in group_members(pgid):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total


def group_cpu_split(pgid: int) -> tuple[int, int]:
    """(user, system) ticks of a process group, as group_cpu_ticks counts them."""
    user = system = 0
    for pid in group_members(pgid):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user, system


@dataclass
class Mem:
    rss_kib: int
    hwm_kib: int


def proc_mem(pid: int) -> Mem:
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return Mem(rss, hwm)


def group_mem(pgid: int) -> Mem:
    """VmRSS and VmHWM summed over the members of a process group."""
    rss = hwm = 0
    for pid in group_members(pgid):
        m = proc_mem(pid)
        rss += m.rss_kib
        hwm += m.hwm_kib
    return Mem(rss, hwm)
